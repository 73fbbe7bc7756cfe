"""``python -m llama_rewire.server``: see ``--help``."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main(own_process=True))

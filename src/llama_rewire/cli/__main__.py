"""``python -m llama_rewire.cli``."""

import sys

from . import main

sys.exit(main())

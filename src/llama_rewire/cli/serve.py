"""``llama-rewire serve``: an OpenAI-compatible HTTP server (see ``python -m llama_rewire.server``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from ..server.main import main as server_main
    except ImportError as e:
        print(f"llama-rewire serve: {e}: the server needs fastapi, uvicorn and pydantic", file=sys.stderr)
        return 1
    # started as `llama-rewire serve ...` (not called from other code): the process is the server's own
    own = argv is not None and sys.argv[1:] == ["serve", *argv]
    return server_main(argv, prog="llama-rewire serve", own_process=own)

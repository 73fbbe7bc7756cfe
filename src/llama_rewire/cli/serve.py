"""``llama-rewire serve``: an OpenAI-compatible HTTP server (see ``python -m llama_rewire.server``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from ..server.main import main as server_main
    except ImportError as e:
        print(f"llama-rewire serve: {e}: the server needs fastapi, uvicorn and pydantic", file=sys.stderr)
        return 1
    return server_main(argv, prog="llama-rewire serve")

"""Running the server: ``python -m llama_rewire.server`` and ``llama-rewire serve``."""

from __future__ import annotations

import sys

from .settings import Settings, parse_settings


def serve(settings: Settings) -> int:
    """Load the models and serve until interrupted; a model that fails to load is a one-line error."""
    import uvicorn

    from .app import create_app
    from .middleware import keep_large_blocks_mapped

    keep_large_blocks_mapped()
    try:
        app = create_app(settings)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"llama-rewire serve: error: {e}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=settings.host, port=settings.port, ssl_keyfile=settings.ssl_keyfile,
                ssl_certfile=settings.ssl_certfile)
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m llama_rewire.server") -> int:
    return serve(parse_settings(argv, prog=prog))

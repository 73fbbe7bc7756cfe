"""Running the server: ``python -m llama_rewire.server`` and ``llama-rewire serve``."""

from __future__ import annotations

import os
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


def on_the_c_allocator(args: list[str]) -> None:
    """Re-execute this process (the same pid) as ``python -m llama_rewire.server ARGS`` with
    ``PYTHONMALLOC=malloc``, where glibc's allocator is there and ``PYTHONMALLOC`` is not set already (set
    it, e.g. to ``pymalloc``, to keep another allocator).

    Python's small-object allocator frees a 1 MiB arena only once every object in it is gone. A burst of
    small objects (a 300,000-entry ``logit_bias``, thousands of messages or schema properties) spreads over
    new arenas, a few long-lived objects made meanwhile keep them, and a soak with hostile requests grew
    from 26 to 50 arenas while the objects in use stayed level. glibc's allocator hands such pages back
    (``malloc_trim`` after big bodies): 64 clients x 40 requests at 5% hostile grew the RSS 5.6% under
    pymalloc, 2.0% under malloc, at the same request rate."""
    from .middleware import HANDS_MEMORY_BACK

    if "PYTHONMALLOC" in os.environ or not HANDS_MEMORY_BACK or sys.flags.ignore_environment or \
            not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "llama_rewire.server", *args],
              {**os.environ, "PYTHONMALLOC": "malloc"})


def main(argv: list[str] | None = None, prog: str = "python -m llama_rewire.server", *,
         own_process: bool = False) -> int:
    """The server's command line; ``own_process``: this process was started to run it (then it may
    re-execute itself on the C allocator, :func:`on_the_c_allocator`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if own_process:
        on_the_c_allocator(args)
    return serve(parse_settings(args, prog=prog))

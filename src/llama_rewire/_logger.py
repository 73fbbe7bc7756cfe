"""llama-cpp-python's ``llama_cpp._logger``: the logger llama.cpp's messages go to, and its verbosity.

Here the logger is ``llama_rewire``'s (see :mod:`llama_rewire._logging`); ``set_verbose(False)`` lets
nothing of llama.cpp's log through, ``set_verbose(True)`` its info messages and above.
"""

from __future__ import annotations

import logging

from ._logging import logger
from ._logging import set_verbose as _set_native_level

# ggml_log_level -> logging level (GGML_LOG_LEVEL_CONT continues the previous line)
GGML_LOG_LEVEL_TO_LOGGING_LEVEL = {
    0: logging.CRITICAL,
    1: logging.INFO,
    2: logging.WARNING,
    3: logging.ERROR,
    4: logging.DEBUG,
    5: logging.DEBUG,
}


def llama_log_callback(level: int, text: bytes, user_data: object = None) -> None:
    """Log one piece of a llama.cpp message (``ggml_log_callback``'s arguments) to :data:`logger`."""
    message = text.decode("utf-8", errors="replace").rstrip("\n")
    if message:
        logger.log(GGML_LOG_LEVEL_TO_LOGGING_LEVEL.get(int(level), logging.INFO), "%s", message)


def set_verbose(verbose: bool) -> None:
    """Whether llama.cpp's messages (info and above) reach :data:`logger`."""
    _set_native_level(bool(verbose))


__all__ = ["GGML_LOG_LEVEL_TO_LOGGING_LEVEL", "llama_log_callback", "logger", "set_verbose"]

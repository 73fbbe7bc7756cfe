"""llama.cpp's log messages go to the ``llama_rewire`` logger of Python's logging module.

The level is filtered natively first (``verbose=False`` lets nothing through), so a quiet model costs
no Python calls. llama.cpp may send a line in several pieces: pieces are joined
until a newline.
"""

from __future__ import annotations

import logging
import threading

from . import _core

logger = logging.getLogger("llama_rewire")

_LEVELS = {
    _core.LOG_LEVEL_DEBUG: logging.DEBUG,
    _core.LOG_LEVEL_INFO: logging.INFO,
    _core.LOG_LEVEL_WARN: logging.WARNING,
    _core.LOG_LEVEL_ERROR: logging.ERROR,
}

_pending: list[str] = []  # the pieces of the current line
_pending_level = [logging.INFO]  # the level of its first piece
_lock = threading.Lock()


def _sink(level: int, text: str) -> None:
    with _lock:
        if not _pending:
            _pending_level[0] = _LEVELS.get(level, logging.INFO)
        _pending.append(text)
        if not text.endswith("\n"):
            return
        line = "".join(_pending).rstrip("\n")
        _pending.clear()
        level_now = _pending_level[0]
    if line:
        logger.log(level_now, "%s", line)


def set_verbose(verbose: bool) -> None:
    """verbose: llama.cpp's info messages and above reach the logger; else nothing does."""
    _core.set_log_level(_core.LOG_LEVEL_INFO if verbose else _core.LOG_LEVEL_SILENT)


def install() -> None:
    """Route llama.cpp's log through ``logger``; give it a stderr handler if nobody configured one."""
    _core.set_log_sink(_sink)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False

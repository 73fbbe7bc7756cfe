"""Helpers of llama-cpp-python's ``llama_cpp._utils`` that libraries import: silencing native output.

:class:`suppress_stdout_stderr` points file descriptors 1 and 2 at the null device for the duration of a
``with`` block (``disable=True`` makes it do nothing), which also silences what native code prints.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

STDOUT_FILENO = 1
STDERR_FILENO = 2

# opened once: a redirect may happen late in interpreter shutdown, when open() can fail
outnull_file = open(os.devnull, "w")  # noqa: SIM115
errnull_file = open(os.devnull, "w")  # noqa: SIM115
atexit.register(outnull_file.close)  # closed at exit, not left to the collector (a ResourceWarning)
atexit.register(errnull_file.close)


class suppress_stdout_stderr:
    """``with suppress_stdout_stderr(disable=False):`` nothing reaches stdout or stderr inside."""

    def __init__(self, disable: bool = True) -> None:
        self.disable = disable
        self._saved: tuple[int, int] | None = None
        self._streams: tuple[Any, Any] | None = None

    def __enter__(self) -> suppress_stdout_stderr:
        if self.disable:
            return self
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        self._saved = (os.dup(STDOUT_FILENO), os.dup(STDERR_FILENO))
        self._streams = (sys.stdout, sys.stderr)
        os.dup2(outnull_file.fileno(), STDOUT_FILENO)
        os.dup2(errnull_file.fileno(), STDERR_FILENO)
        sys.stdout, sys.stderr = outnull_file, errnull_file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None or self._streams is None:
            return
        sys.stdout, sys.stderr = self._streams
        out, err = self._saved
        os.dup2(out, STDOUT_FILENO)
        os.dup2(err, STDERR_FILENO)
        os.close(out)
        os.close(err)
        self._saved = self._streams = None


class MetaSingleton(type):
    """A metaclass whose classes have one instance (made by the first call)."""

    _instances: dict[type, Any] = {}  # noqa: RUF012

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls not in MetaSingleton._instances:
            MetaSingleton._instances[cls] = super().__call__(*args, **kwargs)
        return MetaSingleton._instances[cls]


class Singleton(metaclass=MetaSingleton):
    """A class with one instance."""


__all__ = ["STDERR_FILENO", "STDOUT_FILENO", "MetaSingleton", "Singleton", "errnull_file", "outnull_file",
           "suppress_stdout_stderr"]

"""A progress bar with an ETA on stderr (tqdm), or nothing."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> None: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool) -> Bar:
    """A tqdm bar counting ``total`` evaluations, or a no-op when disabled or tqdm is missing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _NoBar()
    bar: Bar = tqdm(total=total, desc=desc, unit="eval", file=sys.stderr, dynamic_ncols=True, leave=False)
    return bar


def want_progress(quiet: bool) -> bool:
    """The CLI's default: a bar when stderr is a terminal and the output is not machine-read."""
    return not quiet and sys.stderr.isatty()

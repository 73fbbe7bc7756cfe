"""Evaluation texts: the sample shipped with the package, or a file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SAMPLE_NAME = "sample.txt"


def sample_text() -> str:
    """The packaged sample text (original English prose, a few thousand tokens; MIT, like the package)."""
    return resources.files("llama_rewire.data").joinpath(SAMPLE_NAME).read_text(encoding="utf-8")


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file, with one trailing newline dropped as ``llama-perplexity -f`` does.

    Raises ``ValueError`` when the file is missing, unreadable, not UTF-8 or empty.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"text file not found: {p}")
    if p.is_dir():
        raise ValueError(f"text file is a directory: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file is not UTF-8: {p} ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"cannot read text file {p}: {e.strerror}") from None
    if not text.strip():
        raise ValueError(f"text file is empty: {p}")
    return text[:-1] if text.endswith("\n") else text


def load_text(path: str | os.PathLike[str] | None) -> str:
    """``read_text(path)``, or the sample text when ``path`` is None."""
    if path is None:
        text = sample_text()
        return text[:-1] if text.endswith("\n") else text
    return read_text(path)

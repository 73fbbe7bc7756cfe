"""Moved to :mod:`llama_rewire.wiring.stats`; this module re-exports it for old imports."""

from __future__ import annotations

from .wiring.stats import KINDS, FfnStats

__all__ = ["KINDS", "FfnStats"]

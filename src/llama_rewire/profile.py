"""Moved to :mod:`llama_rewire.wiring.profile`; this module re-exports it for old imports."""

from __future__ import annotations

from .wiring.profile import (
    FORMAT,
    SUFFIXES,
    VERSIONS,
    is_profile_path,
    load_profile,
    profile_spec,
    save_profile,
    save_wiring_profile,
)

__all__ = [
    "FORMAT",
    "SUFFIXES",
    "VERSIONS",
    "is_profile_path",
    "load_profile",
    "profile_spec",
    "save_profile",
    "save_wiring_profile",
]

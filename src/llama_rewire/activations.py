"""Moved to :mod:`llama_rewire.wiring.activations`; this module re-exports it for old imports."""

from __future__ import annotations

from .errors import ActivationSpecError
from .wiring.activations import (
    ACT_EXPR,
    DEFAULT,
    EXPR,
    NAMES,
    PARAM_ALIASES,
    PARAMS,
    Activation,
    NativeAct,
    Spec,
    expression_activation,
    format_table,
    parse_activation,
)
from .wiring.profile import is_profile_path, profile_spec
from .wiring.spec import parse

__all__ = [
    "ACT_EXPR",
    "DEFAULT",
    "EXPR",
    "NAMES",
    "PARAMS",
    "PARAM_ALIASES",
    "Activation",
    "ActivationSpecError",
    "NativeAct",
    "Spec",
    "expression_activation",
    "format_table",
    "is_profile_path",
    "parse",
    "parse_activation",
    "profile_spec",
]

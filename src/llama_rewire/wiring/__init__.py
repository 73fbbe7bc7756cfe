"""Rewiring a model's runtime per layer: FFN activations (named or expressions of x), skipped and
scaled sublayers, attention heads, MoE routing.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``activations``    one activation: names, parameters, thresholds, expressions; activation specs
``expr``           expressions of x: parser, folding, canonical text
``program``        expressions compiled for the native stack machine; budget; numpy evaluator
``recognize``      expressions that spell out a built-in activation
``knobs``          the knobs of a layer (act, skip, scales, heads_off, experts_used, experts_off)
``layout``         what each layer of a model offers (LayerInfo)
``spec``           the wiring spec language (string, dict, profile) -> Wiring, the value it
                   parses to (per layer; canonical string, dict form, native form)
``table``          LayerWiring: one layer's knobs, canonical text, dict and native forms
``profile``        profile files (JSON / TOML)
``stats``          per-layer FFN statistics
=================  ===========================================================================
"""

from __future__ import annotations

from ..errors import ActivationSpecError, ExpressionError, WiringSpecError
from .activations import (
    ACT_EXPR,
    DEFAULT,
    EXPR,
    Activation,
    Spec,
    expression_activation,
    format_table,
    parse_activation,
)
from .knobs import KNOBS, SCOPES, SKIPS
from .layout import LayerInfo, Layout, describe_layout
from .profile import load_profile, profile_spec, save_profile, save_wiring_profile
from .program import EXPR_OPS, compile_expression, run_program
from .spec import Wiring, WiringSpec, parse, parse_activations, parse_wiring
from .table import LayerWiring, NativeLayer

__all__ = [
    "ACT_EXPR",
    "DEFAULT",
    "EXPR",
    "EXPR_OPS",
    "KNOBS",
    "SCOPES",
    "SKIPS",
    "Activation",
    "ActivationSpecError",
    "ExpressionError",
    "LayerInfo",
    "LayerWiring",
    "Layout",
    "NativeLayer",
    "Spec",
    "Wiring",
    "WiringSpec",
    "WiringSpecError",
    "compile_expression",
    "describe_layout",
    "expression_activation",
    "format_table",
    "load_profile",
    "parse",
    "parse_activation",
    "parse_activations",
    "parse_wiring",
    "profile_spec",
    "run_program",
    "save_profile",
    "save_wiring_profile",
]

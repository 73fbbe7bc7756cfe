"""Exception types. Each subclasses what llama-cpp-python raises for the same failure, so that existing
``except ValueError`` / ``except RuntimeError`` clauses keep working; the server maps them to HTTP
errors by type."""

from __future__ import annotations

from ._core import (
    ChatFormatError,
    ClosedError,
    DecodeError,
    GrammarError,
    ModelLoadError,
    NonFiniteLogitsError,
    RPCServerLostError,
)


class ContextOverflowError(ValueError):
    """The prompt (plus what must be generated) does not fit in the context window."""

    def __init__(self, n_tokens: int, n_ctx: int) -> None:
        super().__init__(f"Requested tokens ({n_tokens}) exceed context window of {n_ctx}")
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx


class ActivationSpecError(ValueError):
    """An activation spec, profile or threshold is invalid; the message names the bad part."""


class ExpressionError(ActivationSpecError):
    """An expression activation (``x*sigmoid(1.5*x)``) cannot be parsed or compiled."""


class WiringSpecError(ActivationSpecError):
    """A wiring spec (skips, scales, heads, experts, per-scope activations) is invalid for the model;
    the message names the bad part."""


__all__ = [
    "ActivationSpecError",
    "ChatFormatError",
    "ClosedError",
    "ContextOverflowError",
    "DecodeError",
    "ExpressionError",
    "GrammarError",
    "ModelLoadError",
    "NonFiniteLogitsError",
    "RPCServerLostError",
    "WiringSpecError",
]

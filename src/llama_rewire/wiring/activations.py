"""Activation specs: which FFN activation each layer runs.

A spec is a dict or a string.

Dict keys: a layer index (negative counts from the last layer), a ``range``, ``"*"`` (every layer), or
``"a-b"`` (layers a to b inclusive; ``"a..b"`` works too). Values: a name (``"gelu"``), a name with its
parameter (``"leaky_relu(0.05)"``), or a dict (``{"name": "swish", "beta": 1.5}``).

String form: ``"0-11:relu, 20:leaky_relu(0.05), *:gelu"``.

Thresholded (sparse) activations: ``"silu@0.05"`` (or ``{"name": "silu", "threshold": 0.05}``) keeps
act(x) where |act(x)| > 0.05 and sets it to 0 elsewhere (CATS-style); the threshold is finite, >= 0, and
needs an explicit activation (not ``default``).

Expressions of x are activations too: ``x*sigmoid(1.5*x)``, ``0.5*x*(1+tanh(0.8*x))``, ``max(x,0)^2``,
``clamp(x,-3,3)``, with a threshold as ``x*tanh(x)@0.1`` (see :mod:`.expr`). One that spells out a
built-in becomes that built-in (``x*sigmoid(x)`` is silu, see :mod:`.recognize`); any other is an
``Activation`` named ``expr`` that prints its canonical text.

A path to a profile file (.json / .toml, see :mod:`llama_rewire.wiring.profile`) holds a spec too.

A spec may also hold the other knobs of a wiring (:mod:`llama_rewire.wiring.spec`); :func:`parse` takes
the activations alone and refuses the rest.

``"*"`` sets every layer first, wherever it stands; then the explicit layers and ranges apply in order,
later entries overriding earlier ones. ``"default"`` restores a layer's own activation.

Activations (p is the parameter, with its default):

==============  ==========================================================
silu            x * sigmoid(x)
gelu            0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
gelu_erf        0.5 x (1 + erf(x / sqrt(2)))
gelu_quick      x * sigmoid(1.702 x)
relu            max(x, 0)
relu2           max(x, 0)^2
leaky_relu(p)   x > 0 ? x : p x               slope p = 0.01, finite
elu(p)          x > 0 ? x : p (exp(x) - 1)    alpha p = 1.0, finite, >= 0
tanh            tanh(x)
sigmoid         1 / (1 + exp(-x))
softplus(p)     log(1 + exp(p x)) / p         beta p = 1.0, > 0
mish            x * tanh(softplus(x))
hardswish       x * min(1, max(0, (x + 3) / 6))
hardsigmoid     min(1, max(0, (x + 3) / 6))
swish(p)        x * sigmoid(p x)              beta p = 1.0, finite
identity        x
default         the architecture's own activation
==============  ==========================================================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from .. import _core
from ..errors import ActivationSpecError, ExpressionError
from .expr import (
    canonical_expression,
    format_expression,
    format_number,
    looks_like_expression,
    mentions_x,
    parse_expression,
)
from .profile import check_nesting
from .program import Op, check_budget, compile_expression, compile_tree
from .recognize import recognize

# name -> (parameter name, default value)
PARAMS: dict[str, tuple[str, float]] = {
    "leaky_relu": ("slope", 0.01),
    "elu": ("alpha", 1.0),
    "softplus": ("beta", 1.0),
    "swish": ("beta", 1.0),
}
PARAM_ALIASES: dict[str, tuple[str, ...]] = {"leaky_relu": ("negative_slope",)}

NAMES: tuple[str, ...] = tuple(_core.ACT_NAMES)
_TYPE_OF: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
EXPR = "expr"  # the name of an expression activation
ACT_EXPR: int = int(getattr(_core, "ACT_EXPR", 17))  # its native type (LLAMA_REWIRE_ACT_EXPR)

# one activation of the native wiring: (type, param, threshold, program)
NativeAct = tuple[int, float, float, list[Op]]


@dataclass(frozen=True)
class Activation:
    """One table entry: an activation name and its parameter (None for those without one), or an
    expression (name ``"expr"``, ``expr`` its canonical text)."""

    name: str
    param: float | None = None
    threshold: float = 0.0
    expr: str = ""

    def __post_init__(self) -> None:
        if (self.name == EXPR) != bool(self.expr):
            raise ActivationSpecError(f"an Activation named {EXPR!r} needs its expression, and only it has "
                                      "one")
        if self.expr:
            object.__setattr__(self, "expr", canonical_expression(self.expr))

    @property
    def is_expression(self) -> bool:
        return self.name == EXPR

    @property
    def type_id(self) -> int:
        return ACT_EXPR if self.is_expression else _TYPE_OF[self.name]

    @property
    def program(self) -> tuple[Op, ...]:
        """The compiled program of an expression (empty for a named activation)."""
        return compile_expression(self.expr) if self.is_expression else ()

    def native(self) -> tuple[int, float, float]:
        """The (type, param, threshold) entry of the activation-only native table (``rewire_set``)."""
        if self.is_expression:
            raise ActivationSpecError(f"the expression activation {self} needs the wiring form "
                                      "(native_act, rewire_wiring_set), not the activation table")
        return (self.type_id, 0.0 if self.param is None else self.param, self.threshold)

    def native_act(self) -> NativeAct:
        """The (type, param, threshold, program) entry of the native wiring (``rewire_wiring_set``)."""
        param = 0.0 if self.param is None else self.param
        return (self.type_id, param, self.threshold, list(self.program))

    def __str__(self) -> str:
        if self.is_expression:
            base = self.expr
        else:
            base = self.name if self.param is None else f"{self.name}({format_number(self.param)})"
        return f"{base}@{format_number(self.threshold)}" if self.threshold else base


DEFAULT = Activation("default")

Spec = Union[None, str, Mapping[Any, Any], "os.PathLike[str]"]

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")
_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-|\.\.)\s*(-?\d+)\s*$")


def _check_param(name: str, value: float, where: str) -> float:
    if not math.isfinite(value):
        raise ActivationSpecError(f"{where}: the parameter of {name} must be finite, got {value}")
    rc = _core.act_check(_TYPE_OF[name], value)
    if rc != 0:
        rule = {"elu": "alpha must be >= 0", "softplus": "beta must be > 0"}.get(name, "out of range")
        raise ActivationSpecError(f"{where}: bad parameter {value:g} for {name} ({rule})")
    return value


def _check_threshold(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActivationSpecError(f"{where}: a threshold must be a number, got {value!r}")
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ActivationSpecError(f"{where}: a threshold must be finite and >= 0, got {value!r}")
    if t > 3.4028234663852886e38:  # the largest float32: the native table holds float32
        raise ActivationSpecError(f"{where}: the threshold {value!r} does not fit in float32")
    if name == "default" and t > 0:
        raise ActivationSpecError(f"{where}: a threshold needs an explicit activation, not 'default'")
    return t


def _unknown(name: str, where: str) -> ActivationSpecError:
    known = ", ".join(NAMES)
    return ActivationSpecError(f"{where}: unknown activation {name!r} (known: {known}, or an expression "
                               "of x such as x*sigmoid(1.5*x))")


def expression_activation(text: str, threshold: float = 0.0, where: str = "activation") -> Activation:
    """The activation an expression of x computes: a built-in when it spells one out, else an ``expr``."""
    try:
        node = parse_expression(text)
        program = compile_tree(node)
        builtin = recognize(node, program)
        if builtin is None:
            check_budget(program)
    except ExpressionError as e:
        raise ExpressionError(f"{where}: expression {_shorten(text.strip())!r}: {e}") from None
    if builtin is not None:
        name, param = builtin
        if param is not None:
            _check_param(name, param, where)
        return Activation(name, param, _check_threshold(name, threshold, where))
    return Activation(EXPR, None, _check_threshold(EXPR, threshold, where), format_expression(node))


def _is_builtin_call(m: re.Match[str] | None) -> bool:
    """A name (with its parameter) rather than an expression: ``leaky_relu(0.05)``, not ``tanh(x)``."""
    if m is None:
        return False
    arg = m.group(2)
    return m.group(1).lower() in _TYPE_OF and (arg is None or not mentions_x(arg))


def parse_activation(value: Any, where: str = "activation") -> Activation:
    """Parse one value: ``"gelu"``, ``"leaky_relu(0.05)"``, ``{"name": "swish", "beta": 1.5}``."""
    if isinstance(value, Activation):
        return value
    if isinstance(value, Mapping):
        check_nesting(value, where)
        return _parse_activation_dict(value, where)
    if not isinstance(value, str):
        raise ActivationSpecError(f"{where}: an activation is a name or a dict, got {type(value).__name__}")
    body, at, tail = value.rpartition("@")
    if at:
        if "@" in body:
            raise ActivationSpecError(f"{where}: an activation has one threshold (name@t), got "
                                      f"{value.count('@')} in {_shorten(value)!r}")
        try:
            t = float(tail)
        except ValueError:
            raise ActivationSpecError(
                f"{where}: a threshold must be a number, got {tail.strip()!r}"
            ) from None
        base = parse_activation(body, where)
        return Activation(base.name, base.param, _check_threshold(base.name, t, where), base.expr)
    m = _CALL.match(value)
    if not _is_builtin_call(m) and looks_like_expression(value):
        return expression_activation(value, 0.0, where)
    if not m:
        hint = " (a wiring knob: this takes activations only)" if "=" in value else ""
        raise ActivationSpecError(f"{where}: cannot parse activation {value!r}{hint}")
    name, arg = m.group(1).lower(), m.group(2)
    if name not in _TYPE_OF:
        raise _unknown(name, where)
    if arg is None:
        return Activation(name, PARAMS[name][1] if name in PARAMS else None)
    if name not in PARAMS:
        raise ActivationSpecError(f"{where}: {name} takes no parameter, got {value!r}")
    try:
        p = float(arg)
    except ValueError:
        raise ActivationSpecError(f"{where}: the parameter of {name} must be a number, got {arg!r}") from None
    return Activation(name, _check_param(name, p, where))


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_activation_dict(value: Mapping[Any, Any], where: str) -> Activation:
    if "expr" in value and value.get("name", EXPR) == EXPR:
        extra = sorted(str(k) for k in value if k not in ("name", "expr", "threshold"))
        if extra or not isinstance(value["expr"], str):
            raise ActivationSpecError(f"{where}: an expression dict is {{'expr': text, 'threshold': t}}, "
                                      f"got {dict(value)!r}")
        threshold = _check_threshold(EXPR, value.get("threshold", 0.0), where)
        return expression_activation(value["expr"], threshold, where)
    if "name" not in value or not isinstance(value["name"], str):
        raise ActivationSpecError(f"{where}: an activation dict needs a 'name' string, got {dict(value)!r}")
    name = value["name"].lower()
    if name not in _TYPE_OF:
        raise _unknown(name, where)
    threshold = _check_threshold(name, value.get("threshold", 0.0), where)
    rest = {k: v for k, v in value.items() if k not in ("name", "threshold")}
    if name not in PARAMS:
        if rest:
            raise ActivationSpecError(f"{where}: {name} takes no parameter, got {sorted(rest)}")
        return Activation(name, None, threshold)
    pname, default = PARAMS[name]
    accepted = (pname, "param", *PARAM_ALIASES.get(name, ()))
    extra = [k for k in rest if k not in accepted]
    if extra:
        raise ActivationSpecError(f"{where}: unknown parameter(s) {extra} for {name} (expected {pname!r})")
    given = [rest[k] for k in accepted if k in rest]
    if len(given) > 1:
        raise ActivationSpecError(f"{where}: the parameter of {name} is given twice")
    p = given[0] if given else default
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ActivationSpecError(f"{where}: the parameter {pname!r} of {name} must be a number, got {p!r}")
    return Activation(name, _check_param(name, float(p), where), threshold)


def format_table(table: list[Activation]) -> str:
    """The shortest string spec that gives this table back (runs of equal layers as ranges)."""
    parts: list[str] = []
    i = 0
    while i < len(table):
        j = i
        while j + 1 < len(table) and table[j + 1] == table[i]:
            j += 1
        if table[i] != DEFAULT:
            parts.append(f"{i}:{table[i]}" if i == j else f"{i}-{j}:{table[i]}")
        i = j + 1
    return ", ".join(parts)

"""Activation specs: which FFN activation each layer runs.

A spec is a dict or a string.

Dict keys: a layer index (negative counts from the last layer), a ``range``, ``"*"`` (every layer), or
``"a-b"`` (layers a to b inclusive; ``"a..b"`` works too). Values: a name (``"gelu"``), a name with its
parameter (``"leaky_relu(0.05)"``), or a dict (``{"name": "swish", "beta": 1.5}``).

String form: ``"0-11:relu, 20:leaky_relu(0.05), *:gelu"``.

Thresholded (sparse) activations: ``"silu@0.05"`` (or ``{"name": "silu", "threshold": 0.05}``) keeps
act(x) where |act(x)| > 0.05 and sets it to 0 elsewhere (CATS-style); the threshold is finite, >= 0, and
needs an explicit activation (not ``default``).

A path to a profile file (.json / .toml, see :mod:`llama_rewire.profile`) holds a spec too.

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

from . import _core
from .errors import ActivationSpecError
from .profile import is_profile_path, profile_spec

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


@dataclass(frozen=True)
class Activation:
    """One table entry: an activation name and its parameter (None for those without one)."""

    name: str
    param: float | None = None
    threshold: float = 0.0

    @property
    def type_id(self) -> int:
        return _TYPE_OF[self.name]

    def native(self) -> tuple[int, float, float]:
        """The (type, param, threshold) entry of the native table."""
        return (self.type_id, 0.0 if self.param is None else self.param, self.threshold)

    def __str__(self) -> str:
        base = self.name if self.param is None else f"{self.name}({self.param:g})"
        return f"{base}@{self.threshold:g}" if self.threshold else base


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
    if name == "default" and t > 0:
        raise ActivationSpecError(f"{where}: a threshold needs an explicit activation, not 'default'")
    return t


def _unknown(name: str, where: str) -> ValueError:
    known = ", ".join(NAMES)
    return ValueError(f"{where}: unknown activation {name!r} (known: {known})")


def parse_activation(value: Any, where: str = "activation") -> Activation:
    """Parse one value: ``"gelu"``, ``"leaky_relu(0.05)"``, ``{"name": "swish", "beta": 1.5}``."""
    if isinstance(value, Activation):
        return value
    if isinstance(value, Mapping):
        return _parse_activation_dict(value, where)
    if not isinstance(value, str):
        raise ActivationSpecError(f"{where}: an activation is a name or a dict, got {type(value).__name__}")
    body, at, tail = value.rpartition("@")
    if at:
        try:
            t = float(tail)
        except ValueError:
            raise ActivationSpecError(
                f"{where}: a threshold must be a number, got {tail.strip()!r}"
            ) from None
        base = parse_activation(body, where)
        return Activation(base.name, base.param, _check_threshold(base.name, t, where))
    m = _CALL.match(value)
    if not m:
        raise ActivationSpecError(f"{where}: cannot parse activation {value!r}")
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


def _parse_activation_dict(value: Mapping[Any, Any], where: str) -> Activation:
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


def _layer(index: int, n_layer: int, where: str) -> int:
    il = index + n_layer if index < 0 else index
    if not 0 <= il < n_layer:
        raise ActivationSpecError(f"{where}: layer {index} is out of range (the model has {n_layer} layers)")
    return il


def _layers_of_key(key: Any, n_layer: int) -> list[int] | None:
    """The layers a key names; None for '*'."""
    where = f"layer key {key!r}"
    if isinstance(key, bool):
        raise ActivationSpecError(f"{where}: not a layer")
    if isinstance(key, int):
        return [_layer(key, n_layer, where)]
    if isinstance(key, range):
        if len(key) == 0:
            raise ActivationSpecError(f"{where}: empty range")
        return [_layer(i, n_layer, where) for i in key]
    if isinstance(key, str):
        k = key.strip()
        if k == "*":
            return None
        if re.fullmatch(r"-?\d+", k):
            return [_layer(int(k), n_layer, where)]
        m = _RANGE.match(k)
        if m:
            a = _layer(int(m.group(1)), n_layer, where)
            b = _layer(int(m.group(2)), n_layer, where)
            if a > b:
                raise ActivationSpecError(f"{where}: range goes backwards ({a} > {b})")
            return list(range(a, b + 1))
    raise ActivationSpecError(f"{where}: a layer key is an int, a range, '*', or 'a-b'")


def _split_top(text: str) -> list[str]:
    """Split on commas (and semicolons) that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch in ",;" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _string_entries(spec: str) -> list[tuple[Any, Any]]:
    entries = []
    for part in _split_top(spec):
        key, sep, value = part.rpartition(":")
        if not sep:
            # a bare activation applies to every layer
            entries.append(("*", part))
            continue
        if not key.strip():
            raise ActivationSpecError(f"spec entry {part!r}: missing layer before ':'")
        entries.append((key.strip(), value.strip()))
    return entries


def parse(spec: Spec, n_layer: int) -> list[Activation]:
    """Resolve a spec into one Activation per layer (``default`` where the spec says nothing)."""
    if n_layer <= 0:
        raise ActivationSpecError("the model has no layers")
    table = [DEFAULT] * n_layer
    if spec is None:
        return table
    if is_profile_path(spec):
        spec = profile_spec(spec)  # type: ignore[arg-type]
    if isinstance(spec, str):
        entries = _string_entries(spec)
    elif isinstance(spec, Mapping):
        entries = list(spec.items())
    else:
        raise ActivationSpecError(f"an activation spec is a dict or a string, got {type(spec).__name__}")

    resolved = []
    for key, value in entries:
        layers = _layers_of_key(key, n_layer)
        act = parse_activation(value, where=f"layer {key!r}")
        resolved.append((layers, act))
    for layers, act in resolved:
        if layers is None:
            table = [act] * n_layer
    for layers, act in resolved:
        for il in layers or ():
            table[il] = act
    return table


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

"""The wiring spec language: per layer, an activation and the other knobs (:mod:`.knobs`).

String form: comma-separated entries ``LAYERS:VALUE``; VALUE is an activation (as in
:mod:`.activations`) or ``knob=value``, and ``act=relu`` is ``relu``. Commas inside () and [] do not
split; an entry without ``LAYERS:`` applies to every layer. LAYERS: an int (negative counts from the
last layer), ``a-b`` or ``a..b`` (inclusive), ``*``::

    "*:gelu, 0-3:ffn_scale=0.5, 20:skip=ffn, 21:skip=layer, 5:heads_off=[0,3], *:experts_used=1,
     2:act.experts=relu, 7:x*sigmoid(1.5*x)"

Dict form: keys are layer keys (ints, ranges, strings as above); a value is an activation (a string, or
a dict with "name") or a dict of knobs: ``{"*": "gelu", "0-3": {"ffn_scale": 0.5}, "5": {"heads_off":
[0, 3], "act": "relu"}}``. In a dict of knobs ``"act"`` may also be a dict of scopes (``{"experts":
"relu"}``, as TOML writes ``act.experts = "relu"``). A profile path (:mod:`.profile`) holds either form.

Resolution, per knob: every ``*`` entry first (in order), then the explicit ones in order, later
overriding earlier. ``act`` sets the three scopes (dense, shared, experts); a later ``act.experts``
overrides that one.

Against a model's layout (:mod:`.layout`) every value is checked: an explicit entry for a part the
layer lacks (heads_off without attention, experts_used without routed experts...) is an error, while a
``*`` entry skips those layers (and is an error only where no layer has the part). With a layout, a
layer's absent FFN scopes follow its present ones and ``experts_used`` equal to the model's own k is
the default, so that equal wirings compare and print equal. With a layer count alone only the syntax is
checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from ..errors import ActivationSpecError, WiringSpecError
from .activations import DEFAULT, Activation, Spec, parse_activation
from .knobs import (
    ACT_KNOBS,
    IDENTITY,
    KNOBS,
    SCOPES,
    Value,
    check_layer,
    check_value,
    is_knob_like,
    label,
    lacks,
    missing_part,
    parse_value,
    star_nowhere,
    unknown_knob,
)
from .layout import LayerInfo, Layout, resolve_layout
from .profile import check_nesting, is_profile_path, profile_spec
from .table import LayerWiring, Wiring

WiringSpec = Union[Spec, Wiring]

_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-|\.\.)\s*(-?\d+)\s*$")
_KNOB_ENTRY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)", re.DOTALL)


@dataclass(frozen=True)
class Entry:
    """One knob set on some layers (None: ``*``); ``where`` names it in messages."""

    layers: tuple[int, ...] | None
    knob: str
    value: Value
    where: str


# ---------------------------------------------------------------- layer keys

def _layer(index: int, n_layer: int, where: str) -> int:
    il = index + n_layer if index < 0 else index
    if not 0 <= il < n_layer:
        raise ActivationSpecError(f"{where}: layer {index} is out of range (the model has {n_layer} layers)")
    return il


def layers_of_key(key: Any, n_layer: int) -> tuple[int, ...] | None:
    """The layers a key names (an int, a range, "a-b", "a..b"); None for '*'."""
    where = f"layer key {key!r}"
    if isinstance(key, bool):
        raise ActivationSpecError(f"{where}: not a layer")
    if isinstance(key, int):
        return (_layer(key, n_layer, where),)
    if isinstance(key, range):
        if len(key) == 0:
            raise ActivationSpecError(f"{where}: empty range")
        return tuple(_layer(i, n_layer, where) for i in key)
    if isinstance(key, str):
        k = key.strip()
        if k == "*":
            return None
        if re.fullmatch(r"-?\d+", k):
            return (_layer(int(k), n_layer, where),)
        m = _RANGE.match(k)
        if m:
            a = _layer(int(m.group(1)), n_layer, where)
            b = _layer(int(m.group(2)), n_layer, where)
            if a > b:
                raise ActivationSpecError(f"{where}: range goes backwards ({a} > {b})")
            return tuple(range(a, b + 1))
    raise ActivationSpecError(f"{where}: a layer key is an int, a range, '*', or 'a-b'")


# ---------------------------------------------------------------- entries

def split_entries(text: str) -> list[str]:
    """Split on commas (and semicolons) that are not inside parentheses or brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch in ",;" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _string_entries(spec: str, n_layer: int) -> list[Entry]:
    entries = []
    for part in split_entries(spec):
        key, sep, value = part.rpartition(":")
        if not sep:
            key = "*"  # a bare value applies to every layer
        elif not key.strip():
            raise ActivationSpecError(f"spec entry {part!r}: missing layer before ':'")
        key = key.strip()
        layers = layers_of_key(key, n_layer)
        m = _KNOB_ENTRY.fullmatch(value)
        if m is None:
            entries.append(Entry(layers, "act", parse_activation(value.strip(), f"layer {key!r}"), part))
            continue
        knob, where = m.group(1).lower(), f"entry {part!r}"
        if knob not in KNOBS:
            raise unknown_knob(knob, where)
        entries.append(Entry(layers, knob, parse_value(knob, m.group(2).strip(), where), where))
    return entries


def _is_activation_dict(value: Mapping[Any, Any]) -> bool:
    """A dict value is an activation ({"name": ...}) unless its keys are (or look like) knobs."""
    if "name" in value or "expr" in value:
        return True
    return bool(value) and not any(is_knob_like(k) for k in value)


def _knob_dict(value: Mapping[Any, Any], where: str) -> list[tuple[str, Value]]:
    out: list[tuple[str, Value]] = []
    for knob, raw in value.items():
        if knob == "act" and isinstance(raw, Mapping) and "name" not in raw and "expr" not in raw:
            for scope, act in raw.items():  # {"act": {"experts": "relu"}}: TOML's act.experts = "relu"
                if scope not in SCOPES:
                    raise WiringSpecError(f"{where}: act: unknown scope {scope!r} ({', '.join(SCOPES)})")
                out.append((f"act.{scope}", parse_value("act", act, f"{where}: act.{scope}")))
            continue
        if knob not in KNOBS:
            raise unknown_knob(str(knob), where)
        # activation messages do not name the knob, the others do
        out.append((knob, parse_value(knob, raw, f"{where}: {knob}" if knob.startswith("act") else where)))
    return out


def _dict_entries(spec: Mapping[Any, Any], n_layer: int) -> list[Entry]:
    entries = []
    for key, value in spec.items():
        layers = layers_of_key(key, n_layer)
        where = f"layer {key!r}"
        if isinstance(value, Mapping) and not _is_activation_dict(value):
            entries += [Entry(layers, k, v, f"{where}: {k}") for k, v in _knob_dict(value, where)]
        else:
            entries.append(Entry(layers, "act", parse_activation(value, where), where))
    return entries


# ---------------------------------------------------------------- resolution

def _store(values: dict[str, Value], knob: str, value: Value) -> None:
    for k in ACT_KNOBS if knob == "act" else (knob,):
        values[k] = value


def _resolve(entries: Sequence[Entry], n_layer: int,
             infos: tuple[LayerInfo, ...] | None) -> list[dict[str, Value]]:
    state = [dict(IDENTITY) for _ in range(n_layer)]
    ordered = [e for e in entries if e.layers is None] + [e for e in entries if e.layers is not None]
    for e in ordered:
        lacking: str | None = None
        hit = False
        for il in range(n_layer) if e.layers is None else e.layers:
            if infos is not None:
                part = missing_part(e.knob, e.value, infos[il])
                if part is not None:
                    if e.layers is None:  # '*' skips the layers without the part
                        lacking = part
                        continue
                    raise WiringSpecError(f"layer {il}: {label(e.knob, e.value)}: the layer "
                                          f"{lacks(infos[il], part)}")
                check_value(e.knob, e.value, infos[il], il)
            _store(state[il], e.knob, e.value)
            hit = True
        if not hit and lacking is not None:
            raise star_nowhere(e.where, lacking)
    return state


def _finish(values: dict[str, Value], info: LayerInfo | None, il: int) -> LayerWiring:
    if info is not None:
        check_layer(values, info, il)
        if values["experts_used"] == info.n_expert_used:
            values["experts_used"] = None
        present = [f"act.{s}" for s in SCOPES if info.has_scope(s)]
        acts = {values[k] for k in present}
        # absent scopes follow the present ones where those agree (the layer reads as one act)
        fill = acts.pop() if len(acts) == 1 else DEFAULT
        for k in ACT_KNOBS:
            if k not in present:
                values[k] = fill
    return LayerWiring.from_values(values)


def parse_wiring(spec: WiringSpec, layout: Layout, *, what: str = "a wiring spec") -> Wiring:
    """Resolve a spec (a string, a dict, a profile path, a Wiring, or None) into a Wiring.

    ``layout`` is the model's (one LayerInfo per layer, see :func:`.layout.describe_layout`) or just
    its layer count (then only the syntax is checked). Raises ``WiringSpecError`` /
    ``ActivationSpecError`` (ValueErrors) naming the bad part.
    """
    n_layer, infos = resolve_layout(layout)
    if n_layer <= 0:
        raise ActivationSpecError("the model has no layers")
    if isinstance(spec, Wiring):
        if spec.n_layer != n_layer:
            raise WiringSpecError(f"the wiring has {spec.n_layer} layers, the model {n_layer}")
        if infos is None or infos == spec.layout:
            return Wiring(spec.layers, spec.layout if infos is None else infos)
        spec = spec.to_dict()
    if spec is None:
        return Wiring.identity(infos if infos is not None else n_layer)
    if is_profile_path(spec):
        spec = profile_spec(spec)  # type: ignore[arg-type]
    if isinstance(spec, str):
        entries = _string_entries(spec, n_layer)
    elif isinstance(spec, Mapping):
        check_nesting(spec, what, WiringSpecError)
        entries = _dict_entries(spec, n_layer)
    else:
        kinds = "a dict or a string" if what == "an activation spec" else "a dict, a string or a Wiring"
        raise ActivationSpecError(f"{what} is {kinds}, got {type(spec).__name__}")
    state = _resolve(entries, n_layer, infos)
    layers = tuple(_finish(values, None if infos is None else infos[il], il)
                   for il, values in enumerate(state))
    return Wiring(layers, infos)


def parse_activations(spec: Spec, n_layer: int) -> list[Activation]:
    """One Activation per layer from a spec that sets activations only (``activations.parse``)."""
    wiring = parse_wiring(spec, n_layer, what="an activation spec")
    others = sorted({k for layer in wiring for k in layer.knobs() if not k.startswith("act")})
    if others:
        raise ActivationSpecError(f"the spec sets {', '.join(others)}: an activation spec holds activations "
                                  "only (a wiring takes the other knobs: parse_wiring, Wiring)")
    return wiring.activations

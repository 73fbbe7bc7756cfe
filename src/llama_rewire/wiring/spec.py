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

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
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
    format_value,
    is_knob_like,
    json_value,
    label,
    lacks,
    missing_part,
    parse_value,
    star_nowhere,
    unknown_knob,
)
from .layout import LayerInfo, Layout, resolve_layout
from .profile import check_nesting, is_profile_path, profile_spec, save_wiring_profile
from .table import _IDENTITY_LAYER, LayerWiring, NativeLayer


def _key(i: int, j: int) -> str:
    return str(i) if i == j else f"{i}-{j}"


@dataclass(frozen=True)
class Wiring:
    """One LayerWiring per layer. ``layout`` (not compared) is the model's, when it was parsed
    against one."""

    layers: tuple[LayerWiring, ...]
    layout: tuple[LayerInfo, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout is not None and len(self.layout) != len(self.layers):
            raise WiringSpecError(f"the wiring has {len(self.layers)} layers, its layout {len(self.layout)}")

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def identity(cls, layout: Layout) -> Wiring:
        n_layer, infos = resolve_layout(layout)
        return cls((_IDENTITY_LAYER,) * n_layer, infos)

    @classmethod
    def parse(cls, spec: WiringSpec, layout: Layout) -> Wiring:
        return parse_wiring(spec, layout)

    def bind(self, layout: Layout) -> Wiring:
        """The same wiring checked against (and normalised for) a model's layout."""
        return parse_wiring(self.to_dict(), layout)

    # -- reading -----------------------------------------------------------------------------------

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerWiring]:
        return iter(self.layers)

    def __getitem__(self, il: int) -> LayerWiring:
        return self.layers[il]

    def is_identity(self) -> bool:
        return all(layer.is_identity() for layer in self.layers)

    @property
    def activations(self) -> list[Activation]:
        """The per-layer activation table (as ``activations.parse`` gives it); a ValueError where a
        layer's scopes run different activations (read those with :meth:`scope_activations`)."""
        table = []
        for il, layer in enumerate(self.layers):
            act = layer.act
            if act is None:
                shown = ", ".join(f"{s} {a}" for s, a in zip(SCOPES, layer.acts))
                raise WiringSpecError(f"layer {il}: its FFN scopes run different activations ({shown}); "
                                      "read them with scope_activations()")
            table.append(act)
        return table

    def act_texts(self) -> list[str]:
        """Per layer, its activation as text: ``relu``, or where the scopes differ the scopes that are
        not default (``act.shared=gelu act.experts=relu``). Never raises, unlike :attr:`activations`."""
        out = []
        for layer in self.layers:
            act = layer.act
            if act is not None:
                out.append(str(act))
            else:
                out.append(" ".join(f"{k}={a}" for k, a in zip(ACT_KNOBS, layer.acts) if a != DEFAULT))
        return out

    def scope_activations(self, scope: str) -> list[Activation]:
        """The activation of one scope (dense, shared, experts) in every layer."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} ({', '.join(SCOPES)})")
        return [getattr(layer, f"act_{scope}") for layer in self.layers]

    def with_activations(self, table: Sequence[Activation | str]) -> Wiring:
        """The same wiring with every layer's activation (all its scopes) replaced by table[il]."""
        if len(table) != self.n_layer:
            raise WiringSpecError(f"the table has {len(table)} activations for {self.n_layer} layers")
        acts = [parse_activation(a, where=f"layer {il}") for il, a in enumerate(table)]
        for il, act in enumerate(acts):
            if self.layout is not None and act != DEFAULT and not self.layout[il].ffn:
                raise WiringSpecError(f"layer {il}: act: the layer has no FFN")
        layers = tuple(replace(layer, act_dense=a, act_shared=a, act_experts=a)
                       for layer, a in zip(self.layers, acts))
        return Wiring(layers, self.layout)

    # -- writing -----------------------------------------------------------------------------------

    def _runs(self) -> list[tuple[int, int, str, Value]]:
        """Per knob (in KNOBS order), runs of consecutive layers with one value: (first, last, knob, v)."""
        per_layer = [layer.knobs() for layer in self.layers]
        runs: list[tuple[int, int, str, Value]] = []
        for knob in KNOBS:
            i = 0
            while i < self.n_layer:
                v = per_layer[i].get(knob)
                j = i
                while v is not None and j + 1 < self.n_layer and per_layer[j + 1].get(knob) == v:
                    j += 1
                if v is not None:
                    runs.append((i, j, knob, v))
                i = j + 1
        return runs

    def __str__(self) -> str:
        """The canonical string: per knob, runs of equal layers as ranges; identity knobs left out (the
        identity wiring is ""). An activation-only wiring prints as ``format_table`` does."""
        parts = []
        for i, j, knob, v in self._runs():
            text = str(v) if knob == "act" else f"{knob}={format_value(knob, v)}"
            parts.append(f"{_key(i, j)}:{text}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The dict form: one table of knobs per layer group (``{"0-3": {"act": "relu"}, ...}``), in
        layer order; it parses back to this wiring."""
        groups: dict[tuple[int, int], dict[str, Any]] = {}
        for i, j, knob, v in self._runs():
            groups.setdefault((i, j), {})[knob] = json_value(knob, v)
        return {_key(i, j): groups[(i, j)] for i, j in sorted(groups)}

    def save(self, path: str | os.PathLike[str], **meta: Any) -> Path:
        """Write a profile (format version 2; JSON, or TOML for a .toml path); ``meta`` keys are stored
        alongside."""
        return save_wiring_profile(path, self.to_dict(), **meta)

    def native(self) -> list[NativeLayer]:
        """What ``_core.rewire_wiring_set`` takes: [] for the identity wiring, else one entry per layer."""
        if self.is_identity():
            return []
        own: list[int | None] = [None] * self.n_layer
        if self.layout is not None:
            own = [info.n_expert_used for info in self.layout]
        return [layer.native(k) for layer, k in zip(self.layers, own)]


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


def parse(spec: Spec, n_layer: int) -> list[Activation]:
    """Resolve an activation spec into one Activation per layer (``default`` where the spec says nothing).

    The spec may use the wiring syntax (``act=``, ``act.dense=``) but must set activations only, the
    same one for every FFN scope of a layer: see :func:`parse_wiring` for the rest.
    """
    return parse_activations(spec, n_layer)

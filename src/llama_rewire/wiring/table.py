"""A resolved wiring: one :class:`LayerWiring` per layer, its canonical string, dict and native forms.

Parse one with :func:`llama_rewire.wiring.spec.parse_wiring` (or ``Wiring.parse``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WiringSpecError
from .activations import DEFAULT, Activation, NativeAct, parse_activation
from .knobs import ACT_KNOBS, IDENTITY, KNOBS, SCOPES, Value, format_value, json_value
from .layout import LayerInfo, Layout, resolve_layout

if TYPE_CHECKING:
    from .spec import WiringSpec

# one layer of the native wiring (rewire_wiring_set): (acts per scope (dense, shared, experts),
# skip_attn, skip_ffn, attn_scale, ffn_scale, heads_off, experts_used (0: the model's own), experts_off)
NativeLayer = tuple[
    tuple[NativeAct, NativeAct, NativeAct], bool, bool, float, float, list[int], int, list[int]
]

_SKIP_OF = {(False, False): "none", (True, False): "attn", (False, True): "ffn", (True, True): "layer"}


def _act(v: Value) -> Activation:
    assert isinstance(v, Activation)
    return v


def _float(v: Value) -> float:
    assert isinstance(v, (int, float))
    return float(v)


def _ints(v: Value) -> tuple[int, ...]:
    assert isinstance(v, tuple)
    return v


def _opt_int(v: Value) -> int | None:
    assert v is None or isinstance(v, int)
    return v


@dataclass(frozen=True)
class LayerWiring:
    """The knobs of one layer; the defaults change nothing."""

    act_dense: Activation = DEFAULT
    act_shared: Activation = DEFAULT
    act_experts: Activation = DEFAULT
    skip_attn: bool = False
    skip_ffn: bool = False
    attn_scale: float = 1.0
    ffn_scale: float = 1.0
    heads_off: tuple[int, ...] = ()
    experts_used: int | None = None  # None: the model's own k
    experts_off: tuple[int, ...] = ()

    @classmethod
    def from_values(cls, values: Mapping[str, Value]) -> LayerWiring:
        """From stored knob values (``act.dense``, ..., ``skip``: a word, ...); missing ones are identity."""
        v = {**IDENTITY, **values}
        skip = v["skip"]
        dense, shared, experts = (_act(v[k]) for k in ACT_KNOBS)
        return cls(dense, shared, experts, skip_attn=skip in ("attn", "layer"),
                   skip_ffn=skip in ("ffn", "layer"), attn_scale=_float(v["attn_scale"]),
                   ffn_scale=_float(v["ffn_scale"]), heads_off=_ints(v["heads_off"]),
                   experts_used=_opt_int(v["experts_used"]), experts_off=_ints(v["experts_off"]))

    @property
    def acts(self) -> tuple[Activation, Activation, Activation]:
        """The activations of the scopes (dense, shared, experts)."""
        return (self.act_dense, self.act_shared, self.act_experts)

    @property
    def act(self) -> Activation | None:
        """The activation of every scope, or None where the scopes differ."""
        return self.act_dense if self.act_dense == self.act_shared == self.act_experts else None

    @property
    def skip(self) -> str:
        """none, attn, ffn or layer."""
        return _SKIP_OF[(self.skip_attn, self.skip_ffn)]

    def values(self) -> dict[str, Value]:
        """Every stored knob (``act.dense``, ..., ``skip``, ...) with its value."""
        return {**dict(zip(ACT_KNOBS, self.acts)), "skip": self.skip, "attn_scale": self.attn_scale,
                "ffn_scale": self.ffn_scale, "heads_off": self.heads_off, "experts_used": self.experts_used,
                "experts_off": self.experts_off}

    def knobs(self) -> dict[str, Value]:
        """The knobs that change something, as written: ``act`` where every scope agrees, else the
        scopes (``act.experts``, ...) that are not default."""
        out: dict[str, Value] = {}
        act = self.act
        if act is not None:
            if act != DEFAULT:
                out["act"] = act
        else:
            out.update({k: a for k, a in zip(ACT_KNOBS, self.acts) if a != DEFAULT})
        out.update({k: v for k, v in self.values().items() if k not in ACT_KNOBS and v != IDENTITY[k]})
        return out

    def is_identity(self) -> bool:
        return self == _IDENTITY_LAYER

    def native(self, own_k: int | None = None) -> NativeLayer:
        """The native entry; ``experts_used`` equal to ``own_k`` (the model's k) is sent as 0."""
        k = self.experts_used
        acts = (self.act_dense.native_act(), self.act_shared.native_act(), self.act_experts.native_act())
        return (acts, self.skip_attn, self.skip_ffn, float(self.attn_scale), float(self.ffn_scale),
                list(self.heads_off), 0 if k is None or k == own_k else k, list(self.experts_off))


_IDENTITY_LAYER = LayerWiring()


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
        from .spec import parse_wiring

        return parse_wiring(spec, layout)

    def bind(self, layout: Layout) -> Wiring:
        """The same wiring checked against (and normalised for) a model's layout."""
        from .spec import parse_wiring

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
        from .profile import save_wiring_profile

        return save_wiring_profile(path, self.to_dict(), **meta)

    def native(self) -> list[NativeLayer]:
        """What ``_core.rewire_wiring_set`` takes: [] for the identity wiring, else one entry per layer."""
        if self.is_identity():
            return []
        own: list[int | None] = [None] * self.n_layer
        if self.layout is not None:
            own = [info.n_expert_used for info in self.layout]
        return [layer.native(k) for layer, k in zip(self.layers, own)]

"""One layer of a resolved wiring (:class:`LayerWiring`): its knobs, canonical text, dict and native
forms. The whole wiring, one per layer, is :class:`llama_rewire.wiring.spec.Wiring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .activations import DEFAULT, Activation, NativeAct
from .knobs import ACT_KNOBS, IDENTITY, Value

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

"""What each layer of a model offers to the wiring: its sublayers, heads and experts.

A layout is one :class:`LayerInfo` per layer, read from a context with :func:`describe_layout` (the
native ``rewire_layer_describe``), or made by hand for tests and for callers without a model. Where
only a layer count is known, parsing checks the syntax alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Union

from .. import _core


@dataclass(frozen=True)
class LayerInfo:
    """One layer as the graph builder of a context sees it (llama_rewire_layer_info)."""

    attn: bool = True             # attention that the hook reaches (False: recurrent, or none)
    n_head: int = 1               # query heads (the heads_off range)
    n_head_kv: int = 1
    recurrent: bool = False       # a recurrent (SSM / RWKV) layer
    kv_reused: bool = False       # later layers read this layer's KV cache: its attention can't be skipped
    dense: bool = True            # FFN scopes present: a dense FFN,
    shared: bool = False          # the shared expert(s) of an MoE layer,
    experts: bool = False         # routed experts
    n_expert: int = 0             # routed experts (0 in a dense layer)
    n_expert_used: int = 0        # the model's own top-k
    max_experts_used: int = 0     # the largest top-k the router can take
    attn_post_norm: bool = False  # a post-norm follows the attention (a scale applies after it)
    ffn_post_norm: bool = False

    @property
    def ffn(self) -> bool:
        """The layer has at least one FFN scope."""
        return self.dense or self.shared or self.experts

    def has_scope(self, scope: str) -> bool:
        return bool(getattr(self, scope))

    @classmethod
    def from_native(cls, raw: Mapping[str, Any]) -> LayerInfo:
        """From the dict of ``_core.rewire_layer_describe``."""
        missing = [f.name for f in fields(cls) if f.name not in raw]
        if missing:
            raise ValueError(f"a layer description lacks {missing}")
        values: dict[str, Any] = {f.name: (bool if f.type in ("bool", bool) else int)(raw[f.name])
                                  for f in fields(cls)}
        return cls(**values)

    @classmethod
    def moe(cls, n_expert: int, n_expert_used: int, *, n_head: int = 1, shared: bool = False,
            max_experts_used: int | None = None, **kw: Any) -> LayerInfo:
        """An attention + routed-experts layer (hand-made layouts)."""
        return cls(n_head=n_head, n_head_kv=kw.pop("n_head_kv", n_head), dense=False, shared=shared,
                   experts=True, n_expert=n_expert, n_expert_used=n_expert_used,
                   max_experts_used=n_expert if max_experts_used is None else max_experts_used, **kw)


Layout = Union[int, Sequence[LayerInfo]]  # a layer count, or one LayerInfo per layer


def resolve_layout(layout: Layout) -> tuple[int, tuple[LayerInfo, ...] | None]:
    """(layer count, infos or None)."""
    if isinstance(layout, bool):
        raise TypeError("a layout is a layer count or a sequence of LayerInfo, got a bool")
    if isinstance(layout, int):
        return layout, None
    infos = tuple(layout)
    bad = [type(i).__name__ for i in infos if not isinstance(i, LayerInfo)]
    if bad:
        raise TypeError(f"a layout is a sequence of LayerInfo, got {bad[0]}")
    return len(infos), infos


def describe_layout(ctx: Any) -> tuple[LayerInfo, ...]:
    """The layout of a context (a ``_core.Context``), from the native layer descriptions."""
    describe = getattr(_core, "rewire_layer_describe", None)
    if describe is None:
        raise RuntimeError("this build of llama_rewire._core has no rewire_layer_describe: rebuild it")
    return tuple(LayerInfo.from_native(describe(ctx, il)) for il in range(_core.rewire_n_layer(ctx)))

"""The wiring of one context, as the ``Llama`` holds it: the value in force, what each layer offers, and
the native calls that set and describe it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

from .. import _core
from .._params import integer
from ..errors import WiringSpecError
from .activations import Spec
from .layout import LayerInfo, describe_layout
from .spec import Wiring, WiringSpec, parse_activations, parse_wiring
from .stats import KINDS, FfnStats


class WiringController:
    """The wiring of ``ctx``. ``on_change`` is called whenever it changes: what was computed under the
    old wiring is then stale (the sequence's tokens, the prompt cache). ``n_ubatch`` bounds
    :meth:`graph_nodes`."""

    def __init__(self, ctx: Any, *, n_ubatch: int, on_change: Callable[[], None]) -> None:
        self._ctx = ctx
        self._n_ubatch = n_ubatch
        self._on_change = on_change
        self.layout: tuple[LayerInfo, ...] = describe_layout(ctx)
        self.wiring = Wiring.identity(self.layout)

    # -- the wiring -------------------------------------------------------------------------------

    def set_wiring(self, spec: WiringSpec | Wiring) -> None:
        """Replace the whole wiring (see ``Llama.set_wiring``)."""
        if isinstance(spec, Wiring):
            wiring = spec.bind(self.layout)
        else:
            wiring = parse_wiring(spec if spec else None, self.layout)
        self.apply(wiring)

    def apply(self, wiring: Wiring) -> None:
        """Put ``wiring`` (bound to this layout) in force: one native call, then ``on_change``."""
        try:
            _core.rewire_wiring_set(self._ctx, wiring.native())
        except ValueError as e:  # the native checks, behind the Python ones: still a spec error
            raise WiringSpecError(str(e)) from None
        self.wiring = wiring
        self._on_change()

    @contextlib.contextmanager
    def rewired(self, spec: WiringSpec | Wiring) -> Iterator[Wiring]:
        """The wiring ``spec`` for the ``with`` block, the wiring before it put back at its end (also when
        the block raises)."""
        before = self.wiring
        self.set_wiring(spec)
        try:
            yield self.wiring
        finally:
            self.apply(before)

    def set_activations(self, spec: Spec) -> None:
        """Replace the activation of every layer (see ``Llama.set_activations``)."""
        table = parse_activations(spec if spec else None, len(self.layout))
        self.apply(self.wiring.with_activations(table).bind(self.layout))

    @property
    def activations(self) -> list[str]:
        return self.wiring.act_texts()

    # -- what can be rewired ----------------------------------------------------------------------

    def describe_ffn(self) -> list[dict[str, Any]]:
        return [{"layer": il, **_core.rewire_describe(self._ctx, il)} for il in range(len(self.layout))]

    def describe_layers(self) -> list[dict[str, Any]]:
        out = []
        for il, (info, ffn) in enumerate(zip(self.layout, self.describe_ffn())):
            scopes = [s for s in ("dense", "shared", "experts") if info.has_scope(s)]
            out.append({
                "layer": il,
                "attn": info.attn, "n_head": info.n_head, "n_head_kv": info.n_head_kv,
                "attn_skippable": info.attn and not info.kv_reused, "recurrent": info.recurrent,
                "act": ffn["act"], "gated": ffn["gated"], "fused": ffn["fused"], "clamped": ffn["clamped"],
                "scopes": scopes,
                "n_expert": info.n_expert, "n_expert_used": info.n_expert_used,
                "max_experts_used": info.max_experts_used,
                "attn_post_norm": info.attn_post_norm, "ffn_post_norm": info.ffn_post_norm,
            })
        return out

    def graph_nodes(self, n_tokens: int = 1) -> dict[str, Any]:
        n = integer("n_tokens", n_tokens, 0, self._n_ubatch)
        nodes, n_splits = _core.rewire_graph_nodes(self._ctx, n)
        return {"n_splits": int(n_splits), "nodes": list(nodes)}

    # -- FFN statistics ---------------------------------------------------------------------------

    def ffn_stats(self, kind: str = "down_in") -> FfnStats:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        return FfnStats.from_native(kind, self._ctx.ffn_stats(KINDS[kind]))

    def reset_ffn_stats(self) -> None:
        self._ctx.ffn_stats_reset()

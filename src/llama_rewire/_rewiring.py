"""The rewiring methods of :class:`~llama_rewire.Llama`: its wiring, activations and FFN statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _core
from ._params import integer
from .errors import WiringSpecError
from .wiring.activations import Spec
from .wiring.layout import LayerInfo, describe_layout
from .wiring.spec import WiringSpec, parse_activations, parse_wiring
from .wiring.stats import KINDS, FfnStats
from .wiring.table import Wiring

if TYPE_CHECKING:
    from .engine import Sequence
    from .llama_cache import BaseLlamaCache


class RewiringMixin:
    """Everything a Llama exposes about its wiring. The host class provides ``ctx``, ``n_layer()``,
    ``_seq`` and ``cache``."""

    ctx: Any
    _seq: Sequence
    cache: BaseLlamaCache | None
    _wiring: Wiring
    _layout: tuple[LayerInfo, ...]

    def n_layer(self) -> int:  # provided by Llama
        raise NotImplementedError

    def _init_wiring(self, wiring: WiringSpec, activations: Spec) -> None:
        """The wiring at load time: ``wiring``, then ``activations`` for the act knobs."""
        self._layout = describe_layout(self.ctx)
        self._wiring = Wiring.identity(self._layout)
        if wiring is not None:
            self.set_wiring(wiring)
        if activations is not None:
            self.set_activations(activations)

    # -- the wiring -------------------------------------------------------------------------------

    def set_wiring(self, spec: WiringSpec | Wiring) -> None:
        """Replace the whole wiring (``None`` or ``""`` restores the model).

        ``spec`` is a wiring spec (see :mod:`llama_rewire.wiring`: a string such as
        ``"*:gelu, 0-3:ffn_scale=0.5, 20:skip=ffn"``, a dict, a profile path) or a :class:`Wiring`.
        Takes effect on the next evaluation; state computed under the old wiring is dropped (the KV
        cache, prompt-prefix reuse and the prompt cache). Raises ``WiringSpecError`` (a ValueError)
        naming the bad part of an invalid spec; nothing changes then.
        """
        if isinstance(spec, Wiring):
            wiring = spec.bind(self._layout)
        else:
            wiring = parse_wiring(spec if spec else None, self._layout)
        self._apply_wiring(wiring)

    def _apply_wiring(self, wiring: Wiring) -> None:
        try:
            _core.rewire_wiring_set(self.ctx, wiring.native())
        except ValueError as e:  # the native checks, behind the Python ones: still a spec error
            raise WiringSpecError(str(e)) from None
        self._wiring = wiring
        self._seq.invalidate()
        if self.cache is not None:
            self.cache.clear()

    @property
    def layout(self) -> tuple[LayerInfo, ...]:
        """What each layer offers to the wiring (see :class:`~llama_rewire.wiring.LayerInfo`)."""
        return self._layout

    @property
    def wiring(self) -> Wiring:
        """The effective wiring: ``str(llm.wiring)`` is its canonical spec, ``llm.wiring.save(path)``
        writes it as a profile."""
        return self._wiring

    def set_activations(self, spec: Spec) -> None:
        """Replace the activation of every layer (``None`` or ``{}`` restores the model's own); the
        other knobs of the wiring stay. Same rules as :meth:`set_wiring`; raises
        ``ActivationSpecError`` (a ValueError) for an invalid spec."""
        table = parse_activations(spec if spec else None, self.n_layer())
        self._apply_wiring(self._wiring.with_activations(table).bind(self._layout))

    @property
    def activations(self) -> list[str]:
        """The effective table: one activation per layer ('default' = the model's own; a layer whose FFN
        scopes run different activations reads e.g. 'act.shared=gelu act.experts=relu')."""
        return self._wiring.act_texts()

    # -- what can be rewired ----------------------------------------------------------------------

    def describe_ffn(self) -> list[dict[str, Any]]:
        """Each layer's own FFN activation as the graph builder sees it.

        Keys: layer, act (e.g. 'silu'; None where no FFN is reachable), gated, fused, clamped,
        dense, moe.
        """
        return [{"layer": il, **_core.rewire_describe(self.ctx, il)} for il in range(self.n_layer())]

    def describe_layers(self) -> list[dict[str, Any]]:
        """Per layer, what the wiring can change: the attention (``attn``, ``n_head``, ``n_head_kv``,
        whether it can be skipped), the FFN (its own ``act``, ``gated``, ``fused``, the ``scopes``
        present: dense / shared / experts), the experts (``n_expert``, ``n_expert_used``,
        ``max_experts_used``), and whether post-norms follow the sublayers."""
        out = []
        for il, (info, ffn) in enumerate(zip(self._layout, self.describe_ffn())):
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
        """The graph a decode of ``n_tokens`` tokens would run under the current wiring and edits (0: the
        largest batch the context takes, over all its sequences), built and split between the backends
        but not computed: ``{"n_splits": int, "nodes": [...]}``, each node a dict of ``name``, ``op``
        (ggml's op name: ``"MUL_MAT"``, ``"UNARY"``...), ``sub`` (the unary or GLU op, else None),
        ``type``, ``ne``, ``nb`` (strides in bytes), ``contiguous``, ``contiguous_rows``, ``src`` (the same
        for each source) and ``backend`` (where it would run, e.g. ``"CPU"``, ``"CUDA0"``). With a GPU, a
        rewired model whose ops the GPU takes keeps the split count of the original. The next decode
        builds its own graph. More tokens than ``n_ubatch`` is a ``ValueError``: a decode of more runs
        them ``n_ubatch`` at a time."""
        n = integer("n_tokens", n_tokens, 0, self.context_params.n_ubatch)
        nodes, n_splits = _core.rewire_graph_nodes(self.ctx, n)
        return {"n_splits": int(n_splits), "nodes": list(nodes)}

    # -- FFN statistics ---------------------------------------------------------------------------

    def ffn_stats(self, kind: str = "down_in") -> FfnStats:
        """Per-layer activation statistics since the last reset (needs ``observe_ffn=True``).

        kind: ``"down_in"`` (the input of ffn_down), ``"act"`` (an overridden activation itself) or
        ``"act_raw"`` (a thresholded activation before thresholding).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        return FfnStats.from_native(kind, self.ctx.ffn_stats(KINDS[kind]))

    def reset_ffn_stats(self) -> None:
        self.ctx.ffn_stats_reset()

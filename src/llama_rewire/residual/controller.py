"""The residual stream of a ``Llama``'s context: capture, logit lens, and the edits in force (steering,
directional ablation, activation patching), as the ``Llama`` holds and delegates to them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from .. import _core
from .cvec import as_directions, check_alpha
from .edits import POINTS, Ablate, Edit, EditChecker, Patch, Steer, Tokens, key, native, point_index
from .lens import LogitLens

if TYPE_CHECKING:
    from ..engine import Sequence as EngineSequence
    from ..wiring.controller import WiringController

TokensOrText = Union[str, Sequence[int]]


class _LastLayerRows(RuntimeError):
    """The last layer's tap holds only the rows with outputs (the architecture picks them inside it)."""

    def __init__(self, name: str, il: int, rows: int, want: int) -> None:
        super().__init__(f"capture: {name} of layer {il} has {rows} rows, not {want}")


class ResidualController:
    """The residual stream of ``ctx``'s sequence ``seq``: the edits in force and the runs that read it.

    ``wire`` is the context's wiring (its layout; the logit lens leaves layers out for a run);
    ``tokenize`` / ``detokenize`` are the Llama's (a str prompt is tokenized with BOS and special
    tokens); ``on_change`` is called when the edits in force change what the evaluated tokens would be;
    ``streaming`` says whether a stream of the Llama is open (the edits may then change only with
    ``keep_cache``)."""

    def __init__(self, ctx: Any, seq: EngineSequence, wire: WiringController, *, n_vocab: int, n_batch: int,
                 n_ubatch: int, tokenize: Callable[..., list[int]], detokenize: Callable[..., bytes],
                 on_change: Callable[[], None], streaming: Callable[[], bool]) -> None:
        self._ctx = ctx
        self._seq = seq
        self._wire = wire
        self._n_layer = len(wire.layout)
        self._n_ctx = seq.n_ctx
        self._n_vocab = n_vocab
        self._n_batch = n_batch
        self._n_ubatch = n_ubatch
        self._tokenize = tokenize
        self._detokenize = detokenize
        self._on_change = on_change
        self._streaming = streaming
        self._edits: tuple[Edit, ...] = ()
        self._edits_native_key: tuple[Any, ...] = ()  # what the native edits are now
        self._edits_kv_key: tuple[Any, ...] = ()  # what the evaluated tokens were computed under
        self._edits_n_prompt = 0  # the prompt length "prompt" / "generated" are resolved for

    @property
    def any(self) -> bool:
        """Whether edits are in force, here or natively (a failed restore may leave native ones)."""
        return bool(self._edits or self._edits_native_key)

    # -- helpers ----------------------------------------------------------------------------------

    def checker(self) -> EditChecker:
        """Checks edits and layer lists against this model."""
        return EditChecker(self._ctx, self._n_layer, self._n_ctx)

    def _resid_tokens(self, tokens: object, what: str) -> list[int]:
        if isinstance(tokens, str):
            toks = self._tokenize(tokens.encode("utf-8"), add_bos=True, special=True)
        elif isinstance(tokens, (bytes, bytearray)) or not isinstance(tokens, (Sequence, np.ndarray)):
            raise TypeError(
                f"{what}: tokens must be a str or a sequence of token ids, got {type(tokens).__name__}"
            )
        else:
            toks = []
            for t in tokens:
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                    raise TypeError(f"{what}: token {t!r} is not an integer")
                if not 0 <= t < self._n_vocab:
                    raise ValueError(f"{what}: token {t} is outside the vocabulary (0..{self._n_vocab - 1})")
                toks.append(int(t))
        if not toks:
            raise ValueError(f"{what}: no tokens")
        if len(toks) > self._n_ctx:
            raise ValueError(f"{what}: {len(toks)} tokens do not fit the context ({self._n_ctx})")
        return toks

    def _forward(
        self, toks: list[int], on_chunk: Any, *, logits: bool = False, every_output: bool = True
    ) -> None:
        """Evaluate toks from position 0, one ubatch per decode (a tap holds the last ubatch only), every
        token an output (or the last of each decode); on_chunk(start, n, logits or None) runs after each."""
        ctx = self._ctx
        self._seq.restart()
        step = max(1, min(self._n_batch, self._n_ubatch))
        for start in range(0, len(toks), step):
            chunk = toks[start : start + step]
            self._seq.cached(start + len(chunk))  # also if the decode fails half-way
            rows = ctx.decode(chunk, start, every_output, logits)
            on_chunk(start, len(chunk), rows)
        self._edits_kv_key = self._edits_native_key

    def _push_edits(
        self, n_prompt: int, *, keep_cache: bool = False, edits: tuple[Edit, ...] | None = None
    ) -> None:
        """Send the edits (``edits``, else those in force), resolved for a prompt of n_prompt tokens, to
        the context when they differ from what it has, and only then make them the edits in force: a
        refused set leaves the previous edits in force, here and natively. Tokens evaluated under other
        edits are dropped unless keep_cache."""
        if edits is None:
            edits = self._edits
        nat = native(edits, n_prompt)
        k = key(nat)
        if k != self._edits_native_key:
            _core.rewire_edits_set(self._ctx, nat)
            self._edits_native_key = k
        self._edits = edits
        if keep_cache:
            self._edits_kv_key = k
        elif k != self._edits_kv_key:
            self._on_change()
            self._edits_kv_key = k

    def before_prompt(self, n_prompt: int) -> None:
        """Called by generation before the prompt is evaluated: "prompt" and "generated" edits are
        resolved for this prompt's length."""
        self._edits_n_prompt = n_prompt
        if self._edits or self._edits_native_key:
            self._push_edits(n_prompt)

    # -- reading ----------------------------------------------------------------------------------

    def capture(
        self,
        tokens_or_text: TokensOrText,
        taps: str | Sequence[str] = ("resid_post",),
        layers: int | Sequence[int] | None = None,
    ) -> dict[str, np.ndarray]:
        """See :meth:`Llama.capture`."""
        names = (
            [taps] if isinstance(taps, str) else list(taps) if isinstance(taps, (Sequence, tuple)) else None
        )
        if names is None:
            raise TypeError(
                f"capture: taps must be a tap name or a sequence of them, got {type(taps).__name__}"
            )
        if not names:
            raise ValueError("capture: no taps")
        if len(set(names)) != len(names):
            raise ValueError(f"capture: taps {names} name a tap twice")
        for n in names:
            point_index(n)
        chk = self.checker()
        wanted = chk.layers(layers, "capture")
        toks = self._resid_tokens(tokens_or_text, "capture")
        widths = {n: [chk.width(n, il, "capture") for il in wanted] for n in names}
        for n, ws in widths.items():
            if len(set(ws)) > 1:
                raise ValueError(
                    f"capture: {n} has different widths in these layers ({sorted(set(ws))}); "
                    "capture the layers of each width apart"
                )

        def skipped(name: str, il: int) -> bool:
            # a skipped sublayer adds nothing and has no point in the graph: its contribution is zeros
            layer = self._wire.wiring.layers[il]
            return (
                layer.skip_attn if name == "attn_out" else layer.skip_ffn if name != "resid_post" else False
            )

        masks = [0] * self._n_layer
        for n in names:
            for il in wanted:
                if not skipped(n, il):
                    masks[il] |= 1 << point_index(n)
        out = {n: np.zeros((len(wanted), len(toks), widths[n][0]), dtype=np.float32) for n in names}

        def read(start: int, n_rows: int, _: Any) -> None:
            for name in names:
                p = point_index(name)
                for j, il in enumerate(wanted):
                    if skipped(name, il):
                        continue
                    values, _ = _core.rewire_tap_read(self._ctx, p, il)
                    if values.shape[0] != n_rows:
                        raise _LastLayerRows(name, il, values.shape[0], n_rows)
                    out[name][j, start : start + n_rows] = values

        self.before_prompt(len(toks))
        _core.rewire_taps_set(self._ctx, masks)
        try:
            try:
                # a tapped last layer keeps every row where the architecture allows it: then no logits but
                # the last token's are computed
                self._forward(toks, read, every_output=False)
            except _LastLayerRows:
                self._forward(toks, read, every_output=True)
        finally:
            _core.rewire_taps_set(self._ctx, [])
            self._seq.reset()
        return out

    def logit_lens(
        self,
        tokens_or_text: TokensOrText,
        layers: int | Sequence[int] | None = None,
        top_k: int = 5,
    ) -> LogitLens:
        """See :meth:`Llama.logit_lens`."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"logit_lens: top_k must be an integer, got {type(top_k).__name__}")
        if not 1 <= top_k <= self._n_vocab:
            raise ValueError(f"logit_lens: top_k must be in 1..{self._n_vocab}, got {top_k}")
        chk = self.checker()
        wanted = chk.layers(layers, "logit_lens")
        toks = self._resid_tokens(tokens_or_text, "logit_lens")
        n_layer = self._n_layer
        for il in range(min(wanted) + 1, n_layer):
            info = self._wire.layout[il]
            if info.recurrent or info.kv_reused:
                raise ValueError(
                    f"logit_lens: layer {il} can't be left out ("
                    f"{'recurrent' if info.recurrent else 'later layers reuse its KV cache'}), "
                    "so the layers before it have no lens"
                )
        user_wiring, user_edits = self._wire.wiring, self._edits
        ids = np.empty((len(wanted), len(toks), top_k), dtype=np.int32)
        logprobs = np.empty((len(wanted), len(toks), top_k), dtype=np.float32)
        try:
            for j, il in enumerate(wanted):
                layers_l = list(user_wiring.layers)
                for m in range(il + 1, n_layer):
                    info = self._wire.layout[m]
                    layers_l[m] = dataclasses.replace(layers_l[m], skip_attn=info.attn, skip_ffn=info.ffn)
                lens_wiring = type(user_wiring)(tuple(layers_l), self._wire.layout)
                _core.rewire_wiring_set(self._ctx, lens_wiring.native())
                self._push_edits(len(toks), edits=tuple(e for e in user_edits if e.layer <= il))
                logits = np.empty((len(toks), self._n_vocab), dtype=np.float64)

                def keep(start: int, n: int, out: Any, logits: np.ndarray = logits) -> None:
                    logits[start : start + n] = np.asarray(out, dtype=np.float64).reshape(n, -1)

                self._forward(toks, keep, logits=True)
                z = logits - logits.max(axis=1, keepdims=True)
                lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                top = np.argsort(-lp, axis=1, kind="stable")[:, :top_k]
                ids[j] = top
                logprobs[j] = np.take_along_axis(lp, top, axis=1)
        finally:
            _core.rewire_wiring_set(self._ctx, user_wiring.native())
            try:
                self._push_edits(0, edits=user_edits)
            finally:
                self._edits = user_edits  # a failed push is retried by the next evaluation
            self._seq.reset()
        pieces = [
            self._detokenize([int(t)], special=True).decode("utf-8", errors="replace") for t in np.unique(ids)
        ]
        vocab = dict(zip((int(t) for t in np.unique(ids)), pieces))
        prompt = [self._detokenize([t], special=True).decode("utf-8", errors="replace") for t in toks]
        return LogitLens(
            tokens=toks, token_text=prompt, layers=wanted, ids=ids, logprobs=logprobs, vocab=vocab
        )

    # -- writing ----------------------------------------------------------------------------------

    @property
    def edits(self) -> tuple[Edit, ...]:
        """See :meth:`Llama.edits`."""
        return self._edits

    def set_edits(self, edits: Sequence[Edit] | None, *, keep_cache: bool = False) -> None:
        """See :meth:`Llama.set_edits`."""
        if not keep_cache and self._streaming():
            raise RuntimeError(
                "set_edits: a stream of this Llama is open: changing the edits would drop the tokens it "
                "has computed; pass keep_cache=True to change them between its tokens"
            )
        if edits is None:
            edits = []
        if isinstance(edits, (Steer, Ablate, Patch)) or not isinstance(edits, (Sequence, tuple)):
            raise TypeError(f"set_edits takes a list of Steer / Ablate / Patch, got {type(edits).__name__}")
        chk = self.checker()
        checked = tuple(chk.check(e) for e in edits)
        native(checked, 0)  # conflicts (two patches at one place...) raise here, before anything changes
        self._push_edits(self._edits_n_prompt, keep_cache=keep_cache, edits=checked)

    def _replace_kind(self, kind: type, new: list[Edit], keep_cache: bool) -> None:
        self.set_edits([e for e in self._edits if not isinstance(e, kind)] + new, keep_cache=keep_cache)

    def steering(self, vector: Any, alpha: float = 1.0, layers: int | Sequence[int] | None = None,
                 tokens: Tokens = "all", point: str = "resid_post", what: str = "set_steering") -> list[Edit]:
        """The edits in force with their steering replaced by ``alpha * vector`` (``None``: removed), as
        :meth:`set_steering` sets them; checked where the steering is built (``what`` names the call)."""
        new: list[Edit] = []
        if vector is not None:
            a = check_alpha(alpha)
            wanted = None if layers is None else self.checker().layers(layers, what)
            new = [Steer(il, v, a, point, tokens) for il, v in as_directions(vector, wanted, what).items()]
        return [e for e in self._edits if not isinstance(e, Steer)] + new

    def set_steering(
        self,
        vector: Any,
        alpha: float = 1.0,
        layers: int | Sequence[int] | None = None,
        tokens: Tokens = "all",
        point: str = "resid_post",
        *,
        keep_cache: bool = False,
    ) -> None:
        """See :meth:`Llama.set_steering`."""
        self.set_edits(self.steering(vector, alpha, layers, tokens, point), keep_cache=keep_cache)

    def set_ablation(
        self,
        directions: Any,
        layers: int | Sequence[int] | None = None,
        tokens: Tokens = "all",
        point: str = "resid_post",
        *,
        keep_cache: bool = False,
    ) -> None:
        """See :meth:`Llama.set_ablation`."""
        if directions is None:
            self._replace_kind(Ablate, [], keep_cache)
            return
        chk = self.checker()
        is_one = (
            not isinstance(directions, dict)
            and not hasattr(directions, "directions")
            and not isinstance(directions, (str, bytes))
            and not hasattr(directions, "__fspath__")
        )
        wanted = chk.layers(layers, "set_ablation") if (layers is not None or is_one) else None
        rows = as_directions(directions, wanted, "set_ablation")
        self._replace_kind(Ablate, [Ablate(il, r, point, tokens) for il, r in rows.items()], keep_cache)

    def set_patch(
        self,
        values: dict[int, Any] | None,
        positions: Sequence[int] | None = None,
        point: str = "resid_post",
        *,
        keep_cache: bool = False,
    ) -> None:
        """See :meth:`Llama.set_patch`."""
        if values is None:
            self._replace_kind(Patch, [], keep_cache)
            return
        if not isinstance(values, dict):
            raise TypeError(f"set_patch: values must be a {{layer: rows}} dict, got {type(values).__name__}")
        new: list[Edit] = []
        for il, rows in values.items():
            a = np.asarray(rows)
            pos = list(range(a.shape[0] if a.ndim == 2 else 1)) if positions is None else positions
            new.append(Patch(il, pos, a, point))  # type: ignore[arg-type]
        self._replace_kind(Patch, new, keep_cache)

    @contextlib.contextmanager
    def edited(self, edits: Sequence[Edit] | None, *, keep_cache: bool = False) -> Iterator[tuple[Edit, ...]]:
        """``edits`` in force for the ``with`` block (see :meth:`set_edits`), the edits before it put back
        at its end, also when the block raises. Should the model refuse them then, every edit is cleared
        (a block's edits never outlive it) and the refusal raised."""
        before = self._edits
        self.set_edits(edits, keep_cache=keep_cache)
        try:
            yield self._edits
        finally:
            try:
                self.set_edits(list(before), keep_cache=keep_cache)
            except Exception:
                self.set_edits([], keep_cache=keep_cache)
                raise

    def clear_edits(self) -> None:
        """See :meth:`Llama.clear_edits`."""
        self.set_edits([])


__all__ = ["POINTS", "ResidualController"]

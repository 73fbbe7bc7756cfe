"""Embeddings: several texts per decode, one sequence each, pooled as the model defines."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import _core
from .errors import NonFiniteLogitsError

POOLING_NONE = 0


def _normalized(v: np.ndarray[Any, Any]) -> list[float]:
    norm = float(np.linalg.norm(v))
    return [float(x) for x in (v / norm if norm > 0 else v)]


def _finite(v: Any) -> Any:
    """v, an embedding, refused when it holds NaN or inf (the computation overflowed)."""
    if not np.all(np.isfinite(np.asarray(v, dtype=np.float32))):
        raise NonFiniteLogitsError("the embedding is not finite (NaN or inf): the computation overflowed; "
                                   "the wiring or edits may push the residual stream beyond float range")
    return v


def embed(ctx: _core.Context, tokenize: Callable[[bytes], list[int]], input: str | list[str], *,
          normalize: bool, truncate: bool) -> tuple[Any, int]:
    """(embeddings, prompt token count): one vector per text, or one per token without pooling.

    ``tokenize`` turns a text (UTF-8) into its tokens, with the model's prefix; every sequence of ``ctx``
    is used, and its cache is zeroed at the end."""
    texts = [input] if isinstance(input, str) else input
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("input must be a string or a non-empty list of strings")
    n_batch = int(ctx.n_batch())
    n_seq_max = int(ctx.n_seq_max())
    pooled = int(ctx.pooling_type()) != POOLING_NONE

    encoded: list[list[int]] = []
    for text in texts:
        tokens = tokenize(text.encode("utf-8"))
        if not tokens:
            raise ValueError("cannot embed an empty text: it has no tokens")
        if len(tokens) > n_batch:
            if not truncate:
                raise ValueError(f"a text of {len(tokens)} tokens exceeds n_batch = {n_batch}; "
                                 "pass truncate=True or a larger n_batch")
            tokens = tokens[:n_batch]
        encoded.append(tokens)

    out: list[Any] = []
    batch: list[list[int]] = []

    def flush() -> None:
        flat, pos, seq = [], [], []
        for s, toks in enumerate(batch):
            flat += toks
            pos += list(range(len(toks)))
            seq += [s] * len(toks)
        ctx.memory_clear()
        ctx.decode_batch(flat, pos, seq)
        start = 0
        for s, toks in enumerate(batch):
            if pooled:
                v = _finite(ctx.embeddings_seq(s))
                out.append(_normalized(v) if normalize else [float(x) for x in v])
            else:
                rows = [_finite(ctx.embeddings_ith(start + i)) for i in range(len(toks))]
                out.append([_normalized(r) if normalize else [float(x) for x in r] for r in rows])
            start += len(toks)
        batch.clear()

    try:
        for tokens in encoded:
            if batch and (sum(map(len, batch)) + len(tokens) > n_batch or len(batch) >= n_seq_max):
                flush()
            batch.append(tokens)
        flush()
    finally:
        ctx.memory_clear()  # zeroed: what an overflowing computation left there is NaN
    n_tokens = sum(map(len, encoded))
    return (out[0] if isinstance(input, str) else out), n_tokens

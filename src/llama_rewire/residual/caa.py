"""Contrastive activation addition (CAA, Rimsky et al. 2024): a steering vector per layer as the mean
difference of the residual stream between paired prompts that do and do not show a behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .cvec import ControlVector

READS = ("last", "mean")


def contrastive_vector(
    llm: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: int | Sequence[int] | None = None,
    *,
    read: str = "last",
    progress: bool = False,
) -> ControlVector:
    """For each layer, ``mean_i(h_L(positive[i]) - h_L(negative[i]))`` with ``h_L`` the ``resid_post`` of
    layer L at the last token (``read="last"``) or averaged over the tokens (``read="mean"``). The pairs
    are zipped: both lists must have the same length. Layers default to 1..n_layer-1 (llama.cpp's
    control vectors have no layer 0)."""
    if isinstance(positive, str) or isinstance(negative, str):
        raise TypeError("positive and negative are lists of prompts, not one string")
    pos, neg = list(positive), list(negative)
    if not pos or len(pos) != len(neg):
        raise ValueError(
            f"contrastive pairs: {len(pos)} positive and {len(neg)} negative prompts "
            "(one negative per positive, at least one pair)"
        )
    for p in pos + neg:
        if not isinstance(p, str) or not p:
            raise ValueError(f"a contrastive prompt must be a non-empty str, got {p!r}")
    if read not in READS:
        raise ValueError(f"read must be one of {', '.join(READS)}, got {read!r}")
    n_layer = llm.n_layer()
    wanted = list(range(1, n_layer)) if layers is None and n_layer > 1 else layers

    def h(text: str) -> np.ndarray:
        cap = llm.capture(text, taps="resid_post", layers=wanted)["resid_post"]  # [L, T, n_embd]
        return np.asarray(cap[:, -1] if read == "last" else cap.mean(axis=1), dtype=np.float64)

    total: np.ndarray | None = None
    pairs: Any = zip(pos, neg)
    if progress:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        pairs = tqdm(pairs, total=len(pos), desc="contrastive pairs", unit="pair")
    for p, n in pairs:
        d = h(p) - h(n)
        total = d if total is None else total + d
    assert total is not None
    mean = (total / len(pos)).astype(np.float32)
    layer_ids = llm._resid.checker().layers(wanted, "contrastive_vector")
    arch = llm.metadata.get("general.architecture", "") if hasattr(llm, "metadata") else ""
    return ControlVector({il: mean[j] for j, il in enumerate(layer_ids)}, str(arch))

"""Small helpers shared by the tests: logits of a fresh evaluation, errors, greedy-choice cases, greedy
answers compared up to a tie."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def logits_of(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """Every token's logits ([n, n_vocab], float64) from a fresh evaluation (needs logits_all)."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def greedy_cases(n: int, seed: int) -> list[np.ndarray]:
    """Logit rows whose first largest value sits in awkward places: ties within and across blocks of
    64, the last element, a lone finite value among -inf, all equal."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(20):
        cases.append(rng.normal(size=n).astype(np.float32))
    tie = rng.normal(size=n).astype(np.float32)
    tie[[3, n // 2, n - 1]] = 50.0
    cases.append(tie)
    near = rng.normal(size=n).astype(np.float32)
    near[[70, 71]] = 9.0
    near[200 % n] = np.nextafter(np.float32(9.0), np.float32(10.0))
    cases.append(near)
    last = rng.normal(size=n).astype(np.float32)
    last[-1] = 99.0
    cases.append(last)
    lone = np.full(n, -np.inf, np.float32)
    lone[n - 2] = -1e30
    cases += [lone, np.zeros(n, np.float32), np.full(n, -np.inf, np.float32)]
    return cases


# Two logits closer than this are a tie between batchings: a prompt evaluated in other batch sizes (a
# cached prefix, tokens of other sequences alongside) runs other kernels, most of all on AMX CPUs, and
# its logits move by up to ~0.8 (README, "Reproducible comparisons"); greedy text can only part at a tie.
BATCH_TIE = 0.8


def same_greedy_up_to_a_tie(got: list[dict[str, Any]], want: list[dict[str, Any]],
                            tie: float = BATCH_TIE) -> int:
    """Compare two greedy answers given as logprobs content (``logprobs=True, top_logprobs=2``): the
    same tokens, or the same up to a step where each side's pick is the other's second, by less than
    ``tie`` on both. Returns how many tokens they share."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g["token"] == w["token"]:
            continue
        gap_g = g["top_logprobs"][0]["logprob"] - g["top_logprobs"][1]["logprob"]
        gap_w = w["top_logprobs"][0]["logprob"] - w["top_logprobs"][1]["logprob"]
        where = f"token {i}: {g['token']!r} vs {w['token']!r}"
        assert g["top_logprobs"][1]["token"] == w["token"], f"{where}, not each other's second"
        assert w["top_logprobs"][1]["token"] == g["token"], f"{where}, not each other's second"
        assert gap_g < tie and gap_w < tie, f"{where}, top-2 gaps {gap_g:.3f} / {gap_w:.3f}"
        return i
    assert len(got) == len(want)
    return len(got)

"""Small helpers shared by the tests: logits of a fresh evaluation, errors, greedy-choice cases."""

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

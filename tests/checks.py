"""Small helpers shared by the tests that compare logits."""

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

"""Draft models for speculative decoding: ``Llama(..., draft_model=LlamaPromptLookupDecoding())``.

A draft model guesses the tokens that follow; the model checks all the guesses in one batched decode and
keeps the longest run that matches what it samples itself, so the output is the same as without a draft
(with the same seed), only faster when the guesses are good. The names and signatures are
llama-cpp-python's.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]


class LlamaDraftModel(abc.ABC):
    """Proposes draft tokens: ``draft(input_ids)`` gets every token so far (the prompt, the generated
    tokens and the token about to be evaluated) and returns the ids it guesses come next (may be empty)."""

    @abc.abstractmethod
    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        raise NotImplementedError


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """Prompt-lookup decoding: the draft is what followed an earlier occurrence of the last n-gram.

    Input-grounded generation (summaries, code edits, answers quoting a context) copies spans of its
    input; when the last ``max_ngram_size`` tokens (then fewer, down to one) occurred before, the
    ``num_pred_tokens`` tokens that followed their first occurrence are the draft.
    """

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10) -> None:
        for name, value in (("max_ngram_size", max_ngram_size), ("num_pred_tokens", num_pred_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    @staticmethod
    def find_candidate_pred_tokens(
        input_ids: npt.NDArray[Any], max_ngram_size: int, num_pred_tokens: int
    ) -> npt.NDArray[np.intc]:
        """The tokens after the first earlier occurrence of the longest matching tail n-gram."""
        ids = np.asarray(input_ids).reshape(-1)
        n = len(ids)
        for size in range(min(max_ngram_size, n - 1), 0, -1):
            # hit[s]: ids[s:s+size] equals the last `size` tokens, for every start s that leaves at least
            # one token after the match (so the occurrence is an earlier one, with a continuation)
            hit = np.ones(n - size, dtype=bool)
            for j in range(size):
                hit &= ids[j : n - size + j] == ids[n - size + j]
            found = np.flatnonzero(hit)
            if len(found):
                start = int(found[0]) + size
                return ids[start : start + num_pred_tokens].astype(np.intc)
        return np.zeros(0, dtype=np.intc)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        return self.find_candidate_pred_tokens(input_ids, self.max_ngram_size, self.num_pred_tokens)

"""The plain step loop: sample a token from the last logits, evaluate it, and again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional

import numpy as np
import numpy.typing as npt

from .. import _core, _params
from ..engine import Sequence, sample_row

if TYPE_CHECKING:
    from ..engine.sampling import LogitsProcessor

Step = tuple[int, Optional[npt.NDArray[np.single]]]


def steps(seq: Sequence, sampler: _core.Sampler, *, logits_processor: LogitsProcessor | None,
          want_logits: bool) -> Iterator[Step]:
    """After the prompt is evaluated on ``seq``: yield (token, its raw logits or None) step by step,
    evaluating each token before the next is sampled. The caller stops the loop.

    At each yield ``seq.n_tokens`` counts the tokens before the yielded one and ``seq.last_logits()`` are
    the logits it was sampled from."""
    with _params.grammar_messages():
        while True:
            raw = seq.last_logits().copy() if (want_logits or logits_processor is not None) else None
            token = sample_row(sampler, seq.ctx, -1, raw, logits_processor=logits_processor,
                               ids=lambda: seq.tokens, n_vocab=seq.n_vocab)
            yield token, raw
            seq.eval([token])

"""Speculative decoding: the step generator of ``Llama`` when it has a ``draft_model``.

Each round evaluates the token just sampled together with the draft model's guesses of the tokens after
it, in one decode that keeps the logits of every position. Then the sampler draws the next token from
each position in turn, exactly as it would one decode at a time: while its token equals the guess, that
guess is already evaluated and the next position's logits are there too; at the first difference the
sampled token is the next one to evaluate and the KV cache of the rejected guesses is removed. The tokens
(and the sampler's random draws) are those of plain decoding; only the number of decodes changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .. import _core, _params
from ..engine import Sequence, sample_row
from .steps import Step

if TYPE_CHECKING:
    from ..engine.sampling import LogitsProcessor
    from ..llama_speculative import LlamaDraftModel


def _draft(seq: Sequence, draft_model: LlamaDraftModel, token: int) -> list[int]:
    """The draft model's guesses after the evaluated tokens and token, cut to what one decode can take."""
    n_past = seq.n_tokens
    seq.ids[n_past] = token
    history = seq.ids[: n_past + 1]
    history.flags.writeable = False  # a view of the sequence's own buffer
    guess = np.asarray(draft_model(history))
    if guess.ndim > 1 or not (np.issubdtype(guess.dtype, np.integer) or guess.size == 0):
        raise TypeError(f"draft_model must return a list of token ids, got {guess!r:.80}")
    room = min(seq.n_batch, seq.n_ctx - n_past) - 1
    out: list[int] = []
    for t in guess.reshape(-1)[: max(0, room)].tolist():
        if not 0 <= int(t) < seq.n_vocab:
            break  # a guess that is no token ends the draft
        out.append(int(t))
    return out


def steps(
    seq: Sequence,
    sampler: _core.Sampler,
    draft_model: LlamaDraftModel,
    *,
    logits_processor: LogitsProcessor | None,
    want_logits: bool,
) -> Iterator[Step]:
    """After the prompt is evaluated: yield (token, raw logits or None) as the plain loop
    (:func:`.steps.steps`) does.

    At each yield ``seq.n_tokens`` counts the tokens before the yielded one and ``seq.last_logits()`` are
    the logits it was sampled from, as in plain decoding.
    """

    def sample(out: int) -> Step:
        raw = seq.last_logits().copy() if (want_logits or logits_processor is not None) else None
        return sample_row(sampler, seq.ctx, out, raw, logits_processor=logits_processor,
                          ids=lambda: seq.tokens, n_vocab=seq.n_vocab), raw

    try:
        with _params.grammar_messages():
            step = sample(-1)
            while True:
                yield step
                token = step[0]
                draft = _draft(seq, draft_model, token)
                n_past = seq.n_tokens
                seq.eval_outputs([token, *draft])
                for i in range(len(draft) + 1):
                    seq.select_output(n_past + 1 + i, i)
                    step = sample(i)
                    if i == len(draft) or step[0] != draft[i]:
                        seq.drop_uncounted()  # the rejected guesses draft[i:]
                        break
                    yield step  # a guess that holds: already evaluated
    finally:
        if seq.ctx is not None:
            seq.drop_uncounted()  # evaluated guesses after the last yielded token

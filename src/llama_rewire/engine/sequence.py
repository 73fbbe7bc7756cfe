"""One sequence of a context: the tokens evaluated on it, what its KV cache holds, the logits of its last
token.

A ``Sequence`` is the only place that knows these facts; everything that evaluates tokens goes through
one. The ``Llama`` holds one (sequence 0, which it evaluates alone: :meth:`Sequence.eval`); each
parallel slot holds its own, evaluated together in one batch by the slots, which tell it what they fed
(:meth:`Sequence.fed`).

``n_tokens`` counts the evaluated tokens, ``ids[:n_tokens]``. The cache may hold more positions than that
(``n_cached``): prefix reuse and ``reset()`` only lower ``n_tokens``, and what lies beyond it is removed
when the next tokens are evaluated (:meth:`Sequence.settle`), where :class:`Memory` says whether the
cache can be cut there at all (recurrent and hybrid state cannot be rolled back; a window-sized
sliding-window cache may have dropped positions the kept prefix needs).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from ..errors import ContextOverflowError


def prefix_len(a: SequenceOf[int], b: SequenceOf[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Memory:
    """What a model's KV cache allows, computed once per context.

    ``recurrent`` / ``hybrid``: the model keeps recurrent state, which cannot be rolled back to an earlier
    position. ``swa_window``: the sliding window of a window-sized cache (``swa_full=False``), which
    forgets positions older than the window (0: every position is kept)."""

    recurrent: bool = False
    hybrid: bool = False
    swa_window: int = 0

    @property
    def can_roll_back(self) -> bool:
        """Whether the cache can be cut at any position and continued from there: what prefix reuse across
        requests and speculative decoding (rejected guesses) need."""
        return not (self.recurrent or self.hybrid or self.swa_window)


class Sequence:
    """One sequence id of one context; see the module's docstring.

    ``check_open`` is called before every decode (it raises where the owner is closing). ``rows`` is how
    many rows of logits are kept (``logits_all``: one per position; else the last token's row is kept in
    the row of its position, or in row 0 of a one-row buffer; 0: none, the owner reads the context)."""

    def __init__(self, ctx: Any, seq_id: int, *, n_ctx: int, n_batch: int, n_vocab: int, memory: Memory,
                 logits_all: bool = False, rows: int = 0,
                 check_open: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.seq_id = seq_id
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_vocab = n_vocab
        self.memory = memory
        self.logits_all = logits_all
        self._check_open = check_open
        self.ids: npt.NDArray[np.intc] = np.zeros(n_ctx, dtype=np.intc)
        # calloc'd: only the rows that are written take memory
        self.scores: npt.NDArray[np.single] = np.zeros((rows, n_vocab), dtype=np.single)
        self.n_tokens = 0
        self.n_cached = 0  # positions the KV cache may hold (>= n_tokens)
        self.row_pending = False  # the last token's logits are still only in the context ...
        self.pending_out = -1  # ... as this output of the last decode
        self.ctx_has_logits = False  # the context holds the logits of the last evaluated token

    # -- reading ------------------------------------------------------------------------------------

    @property
    def tokens(self) -> npt.NDArray[np.intc]:
        """The evaluated tokens (a view)."""
        return self.ids[: self.n_tokens]

    def _row(self) -> int:
        return min(self.n_tokens, len(self.scores)) - 1

    def all_scores(self) -> npt.NDArray[np.single]:
        """The logits buffer, with the last token's row copied in from the context if it is pending."""
        if self.row_pending:
            self.scores[self._row()] = self.ctx.logits_ith(self.pending_out)
            self.row_pending = False
        return self.scores

    def last_logits(self) -> npt.NDArray[np.single]:
        """The logits of the last evaluated token (a view of its row)."""
        if self.n_tokens == 0:
            raise RuntimeError("no token has been evaluated")
        row: npt.NDArray[np.single] = self.all_scores()[self._row()]
        return row

    def shared_prefix(self, tokens: SequenceOf[int]) -> int:
        """How many leading tokens of ``tokens`` are evaluated here."""
        return prefix_len(self.ids[: self.n_tokens].tolist(), tokens)

    # -- what is kept -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the evaluated tokens: the cache is overwritten from position 0 on the next evaluation.
        Also what a change of the wiring or edits does (:meth:`invalidate`)."""
        self.n_tokens = 0
        self.row_pending = False

    invalidate = reset

    def reuse(self, tokens: list[int]) -> list[int]:
        """Keep the evaluated prefix shared with tokens, at least the last token left to evaluate again (its
        logits are needed); the rest of tokens, to evaluate."""
        n = prefix_len(self.ids[: min(self.n_tokens, len(tokens) - 1)].tolist(), tokens)
        self.n_tokens = n
        self.row_pending = False
        return tokens[n:]

    def settle(self, tokens: list[int]) -> list[int]:
        """Before ``tokens`` are evaluated after the ``n_tokens`` kept: make the cache hold exactly those.
        Where it cannot be cut there, it is emptied and the kept tokens are evaluated again: the tokens to
        evaluate from position ``n_tokens`` (which may have dropped to 0) are returned."""
        if self.n_cached > self.n_tokens and not self.drop_tail():
            tokens = self.ids[: self.n_tokens].tolist() + tokens
            # evaluated alone (see eval): the whole cache is this sequence's (the slots forget theirs
            # whenever the Llama's own calls have run)
            self.ctx.memory_clear()
            self.n_tokens = 0
        self.n_cached = self.n_tokens
        return tokens

    def drop_tail(self) -> bool:
        """Remove the cached positions from n_tokens on; whether the rest can be continued."""
        if not self.ctx.memory_seq_rm(self.n_tokens, -1, self.seq_id):
            return False
        if self.memory.swa_window and self.n_tokens:
            pos_min = self.ctx.memory_seq_pos_min(self.seq_id)
            return bool(0 <= pos_min <= max(0, self.n_tokens - self.memory.swa_window))
        return True

    def cut(self, n: int) -> None:
        """Keep the first n evaluated tokens and remove the rest from the cache now (all of them where the
        cache cannot be cut at n)."""
        if n < self.n_cached or n < self.n_tokens:
            self.n_tokens = min(n, self.n_tokens)
            if not self.ctx.memory_seq_rm(self.n_tokens, -1, self.seq_id):
                self.ctx.memory_seq_rm(0, -1, self.seq_id)
                self.n_tokens = 0
            self.n_cached = self.n_tokens
        self.row_pending = False

    def drop_uncounted(self) -> None:
        """Remove the cached positions from n_tokens on now (e.g. rejected draft tokens)."""
        if self.n_cached > self.n_tokens and self.drop_tail():
            self.n_cached = self.n_tokens

    def forget(self) -> None:
        """Another user of this sequence id (or of the whole context) has overwritten its cache."""
        self.n_tokens = 0
        self.n_cached = self.n_ctx
        self.row_pending = False
        self.ctx_has_logits = False

    def clear(self) -> None:
        """Empty this sequence's cache now."""
        self.ctx.memory_seq_rm(0, -1, self.seq_id)
        self.emptied()

    def wipe(self) -> None:
        """Zero the whole context's cache and forget this sequence's tokens: after logits that are not
        finite, the cache may hold NaN keys and values, which a masked attention weight of zero would
        still carry into any sequence evaluated over the same cells (the other sequences of the context
        are then :meth:`emptied`)."""
        self.ctx.memory_clear()
        self.emptied()

    def emptied(self) -> None:
        """The cache of this sequence has been emptied (e.g. the whole context's, by another sequence)."""
        self.n_tokens = 0
        self.n_cached = 0
        self.row_pending = False
        self.ctx_has_logits = False

    def detach(self) -> None:
        """The context is freed: the logits not yet copied out are lost, and nothing is evaluated here
        again (``ctx`` is None)."""
        self.ctx = None
        self.row_pending = False

    # -- evaluating alone (sequence 0) -------------------------------------------------------------

    def _fits(self, n: int) -> None:
        if self._check_open is not None:
            self._check_open()
        if self.n_tokens + n > self.n_ctx:
            raise ContextOverflowError(self.n_tokens + n, self.n_ctx)

    def eval(self, tokens: list[int]) -> None:
        """Evaluate tokens after the ``n_tokens`` kept, in decodes of ``n_batch``. With ``logits_all``
        every token's logits land in ``scores``; otherwise the last token's, when it is read."""
        self._fits(len(tokens))
        ctx = self.ctx
        # in the common case of appending (generation) there is nothing to cut: settle() is then free
        tokens = self.settle(tokens)
        self.row_pending = False
        self.pending_out = -1
        self.ctx_has_logits = False
        for start in range(0, len(tokens), self.n_batch):
            batch = tokens[start : start + self.n_batch]
            n_past = self.n_tokens
            self.n_cached = n_past + len(batch)  # also if the decode fails half-way
            logits = ctx.decode(batch, n_past, self.logits_all, copy=self.logits_all)
            self.ids[n_past : n_past + len(batch)] = batch
            if self.logits_all:
                self.scores[n_past : n_past + len(batch)] = logits
            self.n_tokens = n_past + len(batch)
        # without logits_all the last row is copied out of the context only when someone reads it
        self.row_pending = not self.logits_all and bool(tokens)
        self.ctx_has_logits = self.ctx_has_logits or bool(tokens)

    def eval_outputs(self, tokens: list[int]) -> None:
        """Evaluate tokens (at most n_batch) in one decode that keeps the logits of each one, as outputs
        0, 1, ... of the context: speculative decoding verifies a draft with them."""
        self._fits(len(tokens))
        if self.n_cached > self.n_tokens and not self.drop_tail():
            raise RuntimeError("the KV cache cannot be rolled back to the evaluated tokens")
        n_past = self.n_tokens
        self.n_cached = n_past + len(tokens)
        self.row_pending = False
        logits = self.ctx.decode(tokens, n_past, True, copy=self.logits_all)
        self.ids[n_past : n_past + len(tokens)] = tokens
        if self.logits_all:
            self.scores[n_past : n_past + len(tokens)] = logits
        self.n_tokens = n_past + len(tokens)
        self.ctx_has_logits = True

    def select_output(self, n_tokens: int, out: int) -> None:
        """Count n_tokens as evaluated, their last one being output ``out`` of the last decode."""
        self.n_tokens = n_tokens
        self.row_pending = not self.logits_all
        self.pending_out = out

    def restart(self) -> None:
        """Empty the cache for an evaluation from position 0 that the caller runs (see :meth:`cached`)."""
        self.reset()
        self.ctx.memory_clear()
        self.n_cached = 0

    def cached(self, n: int) -> None:
        """The caller has evaluated (or is evaluating) positions up to n outside the counted tokens."""
        self.n_cached = n

    def restore(self, n: int, ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> None:
        """What a loaded state holds: n tokens and their logits (all rows, or the last one); the
        context's own logits are stale then."""
        self.ids[:n] = ids
        if self.logits_all:
            self.scores[:n] = scores[:n]
        elif n and len(scores):
            self.scores[min(n, len(self.scores)) - 1] = scores[-1]
        self.n_tokens = n
        self.n_cached = n
        self.row_pending = False
        self.ctx_has_logits = False

    # -- evaluated in a batch with other sequences (slots) -----------------------------------------

    def fed(self, tokens: list[int]) -> None:
        """tokens were evaluated after the kept ones, in a batch decoded by the caller."""
        n = self.n_tokens
        self.ids[n : n + len(tokens)] = tokens
        self.n_tokens = self.n_cached = n + len(tokens)

"""Parallel slots: several sequences in flight on one ``Llama``, decoded together (continuous batching).

``Llama(path, n_parallel=N)`` makes a context with room for N sequences of ``n_ctx`` tokens each, and
``llama.slots`` runs completions on them. Its ``create_completion`` and ``create_chat_completion`` take
the arguments of the Llama's own and give the same results (streamed or not), and may be called from any
number of threads at once; ``create_completions`` runs a list of prompts together.

One decode thread serves the slots. Every step it packs, into a single ``llama_decode``, the next token
of every generating sequence and then chunks of the prompts waiting to be evaluated (up to ``n_batch``
tokens in all), so a request starts while others are mid-generation and a long prompt is fed in chunks
while the running streams keep flowing. Each sequence has its own sampler chain (seed, penalties,
grammar, logit bias), is sampled from its own row of the batch's logits, and keeps its evaluated tokens
as a cached prefix once it ends: the next request goes to the idle slot that shares the longest prefix
with its prompt (a follow-up chat turn reuses its conversation), and only the rest is evaluated.

A request that ends (end of generation, its token limit, a stop string, a closed stream) frees its slot
at the next step; a closed stream's generated tokens are removed from the cache (its prompt stays, for
reuse). A prompt that does not fit a slot's ``n_ctx`` raises ``ContextOverflowError`` before it waits,
and a completion never runs past its slot's window, so no request evicts another's tokens.

The slots and the Llama's own calls take turns: a call on the Llama from another thread (``eval``,
``set_wiring``, ``set_edits``, a completion on the Llama itself...) waits until the running sequences
have ended (none is admitted while it waits), runs alone, and the slots then start over with empty
caches. Residual-stream edits and taps apply to one sequence at a time and are refused here.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from . import _core, _params, engine
from ._guard import CLOSED
from .engine import sample_row
from .errors import NonFiniteLogitsError

if TYPE_CHECKING:
    from ._completion import CompletionIterator, PromptType
    from ._guard import CallGuard
    from .engine.sampling import LogitsProcessor
    from .residual.controller import ResidualController

Step = tuple[int, "npt.NDArray[np.single] | None"]
_END = object()  # the engine's last item for a job: its token limit was reached

IDLE, PREFILL, GENERATING = "idle", "prefill", "generating"


class Host(Protocol):
    """What the slots use of the ``Llama`` they belong to."""

    _guard: CallGuard
    _memory: engine.Memory

    @property
    def ctx(self) -> Any: ...
    @property
    def model(self) -> _core.Model: ...
    @property
    def sequence(self) -> engine.Sequence: ...
    @property
    def _resid(self) -> ResidualController: ...
    def n_ctx(self) -> int: ...
    def n_vocab(self) -> int: ...
    def create_completion(self, prompt: PromptType, **kwargs: Any) -> Any: ...
    def _chat(self, messages: list[dict[str, Any]], kwargs: dict[str, Any], llama: Any) -> Any: ...


class _Job:
    """One completion's sequence: what it evaluates and samples, and the queue its steps arrive on."""

    __slots__ = ("cancelled", "consumed", "evaluated", "finished", "ids", "keep_logits", "limit",
                 "logits_processor", "n_generated", "n_prompt", "pending", "prompt", "queue", "sampler",
                 "slot", "step_logits", "submitted", "want_logits")

    def __init__(self, prompt: list[int], sampler: _core.Sampler, *, limit: int, want_logits: bool,
                 logits_processor: LogitsProcessor | None, keep_logits: bool) -> None:
        self.prompt = prompt
        self.n_prompt = len(prompt)
        self.sampler = sampler
        self.limit = limit
        self.want_logits = want_logits
        self.logits_processor = logits_processor
        self.keep_logits = keep_logits  # stopping_criteria reads the last logits
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.slot: _Slot | None = None
        self.pending: list[int] = []  # tokens still to evaluate (the prompt's rest, or the sampled one)
        self.ids: list[int] = list(prompt)  # prompt and generated tokens, for logits processors
        # the consumer's side (its thread only): the tokens it has taken, the logits of the one it holds
        self.consumed: list[int] = list(prompt)
        self.step_logits: npt.NDArray[np.single] | None = None
        self.n_generated = 0
        self.cancelled = False
        self.finished = False
        self.submitted = time.monotonic()
        self.evaluated = 0  # prompt tokens evaluated for it (not reused from the cache)

    def steps(self) -> Iterator[Step]:
        """(token, raw logits or None) as the decode thread samples them; closing it ends the job."""
        try:
            while True:
                item = self.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                token, raw, self.step_logits = item
                yield token, raw
                self.consumed.append(token)
        finally:
            self.cancelled = True

    def criteria_args(self) -> tuple[npt.NDArray[np.intc], npt.NDArray[np.single]]:
        """What ``stopping_criteria`` is called with, as on the Llama alone: the ids evaluated before the
        token just taken (the prompt and the tokens before it), and the raw logits it was sampled from."""
        logits = self.step_logits if self.step_logits is not None else np.zeros(0, dtype=np.single)
        return np.asarray(self.consumed, dtype=np.intc), logits


@dataclass
class _Slot:
    """One sequence of the context, and the job it runs."""

    sequence: engine.Sequence
    job: _Job | None = None
    last_used: float = 0.0

    @property
    def seq(self) -> int:
        return self.sequence.seq_id

    @property
    def state(self) -> str:
        if self.job is None:
            return IDLE
        return PREFILL if len(self.job.pending) > 1 or self.job.n_generated == 0 else GENERATING


class Slots:
    """The parallel slots of a ``Llama(..., n_parallel=N)``: see the module's docstring.

    Counters (``stats()``) are kept for a server's metrics."""

    def __init__(self, llama: Host) -> None:
        self._llama = llama
        ctx = llama.ctx
        self.n_parallel = int(ctx.n_seq_max())
        self.n_ctx = llama.n_ctx()
        self._n_batch = int(ctx.n_batch())
        self._slots = [_Slot(engine.Sequence(ctx, i, n_ctx=self.n_ctx, n_batch=self._n_batch,
                                             n_vocab=llama.n_vocab(), memory=llama._memory))
                       for i in range(self.n_parallel)]
        self._waiting: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._turn = -1  # the guard's turn count when the slots last held it
        self._counts = {"requests": 0, "prompt_tokens": 0, "prompt_tokens_cached": 0,
                        "tokens_predicted": 0, "decodes": 0, "cancelled": 0, "errors": 0}

    # -- public ---------------------------------------------------------------------------------

    def create_completion(self, prompt: PromptType, **kwargs: Any) -> dict[str, Any] | CompletionIterator:
        """As ``Llama.create_completion`` (same arguments, same results), on a slot."""
        result: dict[str, Any] | CompletionIterator = self._llama.create_completion(prompt, _on_slots=self,
                                                                                  **kwargs)
        return result

    def create_chat_completion(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """As ``Llama.create_chat_completion`` (same arguments, same results), on a slot."""
        return self._llama._chat(messages, kwargs, _SlotsView(self._llama, self))

    def create_completions(self, prompts: Sequence[PromptType], **kwargs: Any) -> list[dict[str, Any]]:
        """Complete several prompts together (non-streamed): the results in the prompts' order."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise TypeError("create_completions takes a sequence of prompts")
        if kwargs.get("stream"):
            raise ValueError("create_completions returns whole results: call create_completion(stream=True)"
                             " for each prompt to stream them")
        results: list[Any] = [None] * len(prompts)
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                results[i] = self.create_completion(prompts[i], **kwargs)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def status(self) -> list[dict[str, Any]]:
        """Each slot: its id, state (idle, prefill, generating), cached tokens, and its job's counts."""
        with self._cv:
            out = []
            for s in self._slots:
                job = s.job
                out.append({"id": s.seq, "state": s.state, "n_cached": s.sequence.n_tokens,
                            "n_prompt": job.n_prompt if job else 0,
                            "n_generated": job.n_generated if job else 0})
            return out

    def stats(self) -> dict[str, int]:
        """Counters since the slots started: requests, prompt tokens (evaluated / taken from a slot's
        cache), tokens predicted, decodes, cancelled, errors; and now: busy slots, queued requests."""
        with self._cv:
            busy = sum(1 for s in self._slots if s.job is not None)
            return {**self._counts, "slots_processing": busy, "slots_idle": self.n_parallel - busy,
                    "queue": len(self._waiting)}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request runs or waits; whether that happened within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._waiting or any(s.job is not None for s in self._slots):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # -- submission -------------------------------------------------------------------------------

    def _submit(self, prompt: list[int], sampler: _core.Sampler, *, limit: int, want_logits: bool,
                logits_processor: LogitsProcessor | None, keep_logits: bool) -> _Job:
        llama = self._llama
        # the penalties see the generated tokens only (the sampler accepts each one it samples)
        job = _Job(prompt, sampler, limit=limit, want_logits=want_logits or keep_logits,
                   logits_processor=logits_processor, keep_logits=keep_logits)
        if llama._guard.held():
            raise RuntimeError(INSIDE_A_CALL)
        with self._cv:
            if self._stopping or llama._guard.closing:
                raise RuntimeError(CLOSED)
            self._waiting.append(job)
            self._counts["requests"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llama-rewire slots", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return job

    def _stop(self) -> None:
        """The Llama is closing: every job fails and the decode thread leaves the guard, then ends."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the decode thread ----------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._waiting) or any(s.job is not None for s in self._slots)

    def _loop(self) -> None:
        guard = self._llama._guard
        while True:
            with self._cv:
                while not self._stopping and not self._has_work():
                    self._cv.wait()
                if self._stopping:
                    self._fail_all(RuntimeError(CLOSED))
                    return
            try:
                guard.enter("parallel slots")
            except RuntimeError as e:  # closing
                with self._cv:
                    self._fail_all(e)
                    self._stopping = True
                return
            try:
                yielded = self._busy_period()
            finally:
                self._turn = guard.turns
                guard.exit()
            if yielded:
                self._let_others_in()

    def _let_others_in(self) -> None:
        """After draining for a waiting call: give it the guard before taking it again."""
        guard = self._llama._guard
        deadline = time.monotonic() + 1.0
        turn = guard.turns
        while guard.waiting and guard.turns == turn and time.monotonic() < deadline:
            time.sleep(0.001)

    def _busy_period(self) -> bool:
        """Run steps while there is work; True when it stopped to let a waiting call in."""
        llama = self._llama
        guard = llama._guard
        if guard.turns != self._turn + 1:
            # another call ran since the slots last did (it may have changed the wiring, the edits,
            # or the cache): what the slots' caches hold is not known
            self._forget_caches()
        llama.sequence.forget()  # the slots use sequence 0 too
        while True:
            if guard.closing or self._stopping:
                with self._cv:
                    self._fail_all(RuntimeError(CLOSED))
                return False
            contended = guard.waiting > 0
            with self._cv:
                self._reap()
                if not contended:
                    self._admit()
                active = [s for s in self._slots if s.job is not None]
                if not active:
                    self._cv.notify_all()
                    return contended
            self._step(active)

    def _forget_caches(self) -> None:
        for s in self._slots:
            s.sequence.clear()

    def _reap(self) -> None:
        """Free the slots of jobs that ended (their streams closed); under the lock."""
        for s in self._slots:
            job = s.job
            if job is not None and job.cancelled:
                self._counts["cancelled"] += 1
                # a closed stream's generated tokens are of no use: keep its prompt for reuse
                s.sequence.cut(job.n_prompt)
                self._release(s)

    def _release(self, s: _Slot) -> None:
        if s.job is not None:
            s.job.finished = True
        s.job = None
        s.last_used = time.monotonic()

    def _admit(self) -> None:
        """Give waiting jobs (oldest first) the free slots; under the lock."""
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            if job.cancelled:
                job.finished = True
                self._counts["cancelled"] += 1
                continue
            # checked here, where the slots hold the guard: edits that a call on the Llama alone sets for
            # its own duration (a steered server request) are gone by now, and must not refuse this job
            if self._llama._resid.any:
                job.finished = True
                self._counts["errors"] += 1
                job.queue.put(ValueError(EDITS_REFUSED))
                continue
            slot = self._pick(free, job.prompt)
            self._start(slot, job)

    def _pick(self, free: list[_Slot], prompt: list[int]) -> _Slot:
        """The free slot whose cache shares the longest prefix with prompt; else the least recently used."""
        shared = {s.seq: s.sequence.shared_prefix(prompt) for s in free}
        best = max(free, key=lambda s: (shared[s.seq], -s.last_used))
        return best if shared[best.seq] else min(free, key=lambda s: s.last_used)

    def _start(self, slot: _Slot, job: _Job) -> None:
        seq = slot.sequence
        # a cached prefix can be kept only where the cache can be cut at any position
        seq.cut(min(seq.shared_prefix(job.prompt), job.n_prompt - 1) if seq.memory.can_roll_back else 0)
        keep = seq.n_tokens
        job.pending = job.prompt[keep:]
        job.evaluated = len(job.pending)
        self._counts["prompt_tokens"] += len(job.pending)
        self._counts["prompt_tokens_cached"] += keep
        job.slot = slot
        slot.job = job
        slot.last_used = time.monotonic()

    def _step(self, active: list[_Slot]) -> None:
        """One decode: every generating slot's token, then prompt chunks; then sample the outputs."""
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        outputs: list[bool] = []
        fed: list[tuple[_Slot, int, int]] = []  # slot, its first index in the batch, tokens fed
        generating = [s for s in active if s.job is not None and s.job.n_generated > 0]
        prefilling = sorted((s for s in active if s.job is not None and s.job.n_generated == 0),
                            key=lambda s: s.job.submitted if s.job else 0.0)
        budget = self._n_batch
        for s in [*generating, *prefilling]:
            job = s.job
            assert job is not None
            take = min(budget, len(job.pending))
            if take == 0:
                continue
            start = len(tokens)
            base = s.sequence.n_tokens
            chunk = job.pending[:take]
            tokens.extend(chunk)
            pos.extend(range(base, base + take))
            seqs.extend([s.seq] * take)
            outputs.extend([False] * take)
            if take == len(job.pending):
                outputs[-1] = True  # the last pending token: sample the next one from its logits
            fed.append((s, start, take))
            budget -= take
            if budget == 0:
                break
        ctx = self._llama.ctx
        try:
            ctx.decode_batch(tokens, pos, seqs, outputs)
        except BaseException as e:
            with self._cv:
                for s, _, _ in fed:
                    # the cache may hold part of the batch: drop this sequence's tokens from its start
                    s.sequence.drop_tail()
                    self._fail(s, e)
            if not isinstance(e, Exception):
                raise
            return
        self._counts["decodes"] += 1
        for s, start, take in fed:
            job = s.job
            if job is None:  # ended with the error of another sequence's sampling (non-finite logits)
                continue
            s.sequence.fed(job.pending[:take])
            del job.pending[:take]
            if job.pending:
                continue  # the prompt's next chunk goes in a later step
            self._sample(s, job, start + take - 1)

    def _sample(self, s: _Slot, job: _Job, i: int) -> None:
        if job.cancelled:
            return  # freed at the next step
        ctx = s.sequence.ctx
        raw = None
        try:
            with _params.grammar_messages():
                wanted = job.want_logits or job.keep_logits or job.logits_processor is not None
                raw = ctx.logits_ith(i) if wanted else None
                token = sample_row(job.sampler, ctx, i, raw, logits_processor=job.logits_processor,
                                   ids=lambda: np.asarray(job.ids, dtype=np.intc), n_vocab=s.sequence.n_vocab)
        except NonFiniteLogitsError as e:
            with self._cv:
                if raw is not None and bool(np.all(np.isfinite(raw))):  # a logits_processor's NaN: its own
                    self._fail(s, e)
                    return
                # the computation overflowed (the wiring): the cache may hold NaN keys and values, which
                # leak into every sequence whose attention spans those cells (a masked weight of zero
                # times NaN), so every running sequence ends with the error and the whole cache is zeroed
                for other in self._slots:
                    self._fail(other, e)
                    other.sequence.emptied()
                s.sequence.wipe()
            return
        except BaseException as e:
            with self._cv:
                self._fail(s, e)
            if not isinstance(e, Exception):
                raise
            return
        job.n_generated += 1
        job.ids.append(token)
        self._counts["tokens_predicted"] += 1
        job.queue.put((token, raw if job.want_logits else None, raw if job.keep_logits else None))
        if job.n_generated >= job.limit or self._llama.model.is_eog(token):
            job.queue.put(_END)
            with self._cv:
                self._release(s)
                self._cv.notify_all()
        else:
            job.pending = [token]

    def _fail(self, s: _Slot, error: BaseException) -> None:
        """The job of slot s ends with error; under the lock."""
        if s.job is not None:
            self._counts["errors"] += 1
            s.job.queue.put(error)
            self._release(s)
        self._cv.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        """Every job ends with error (closing); under the lock."""
        for s in self._slots:
            self._fail(s, error)
        while self._waiting:
            job = self._waiting.popleft()
            job.finished = True
            job.queue.put(error)
        self._cv.notify_all()


INSIDE_A_CALL = ("the parallel slots cannot run inside a call on their Llama (a `with llm.rewired/edited/"
                 "steered` block, a callback of a running call): their decode thread would wait for it "
                 "to end")
EDITS_REFUSED = ("this Llama has residual-stream edits set: edits apply to one sequence at a time, so they "
                 "run on the Llama's own create_completion, not on parallel slots")


class _SlotsView:
    """The Llama as a chat handler sees it, with its completions run on the slots."""

    def __init__(self, llama: Host, slots: Slots) -> None:
        self._llama = llama
        self._slots = slots

    def create_completion(self, prompt: PromptType, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("create_completion on parallel slots takes the prompt and keyword arguments")
        return self._slots.create_completion(prompt, **kwargs)

    def __call__(self, prompt: PromptType, **kwargs: Any) -> Any:
        return self.create_completion(prompt, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

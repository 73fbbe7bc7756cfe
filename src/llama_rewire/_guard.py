"""One call at a time on a ``Llama``: what makes one safe to share between threads.

Every public method that touches the native context runs under the Llama's :class:`CallGuard`. A call
from another thread waits until the running one has returned; a call made inside a call, in the same
thread (``create_chat_completion`` -> ``create_completion`` -> ``eval``), goes straight through. Waiting
calls take their turns in the order they arrived (a queue of tickets): a thread that calls in a loop gets
the guard again only after every call that was waiting when it asked, so it cannot starve the others.

A stream (``create_completion(stream=True)``, a streamed chat completion, ``generate``) keeps the guard
between its steps as well, from the call that starts it until it is exhausted, closed or dropped; its
steps may come from any thread (a server pulls each chunk in a worker thread), one at a time. While it
is open, a call from another thread waits its turn; a call from the thread that last stepped it raises
``RuntimeError`` instead, since that thread would wait for itself. Methods that only look (``scores``,
``save_state``, ``describe_layers``...) go through between two steps. ``tokenize`` and ``detokenize``
only read the vocabulary and run alongside everything except ``close()``.

The guard owns a stream's generator: a stream dropped without ``close()`` is closed by the next call (or
at once, when nothing else runs), under the guard, never by the garbage collector in the middle of
another call. ``close()`` lets a running call stop at its next decode (it raises ``RuntimeError``),
closes an open stream, and only then frees the native objects.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Generic, TypeVar, cast

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CLOSED = "this Llama is closed"
CLOSING = "this Llama was closed (close() was called in another thread) during the call"
_POLL_S = 0.05  # how often a waiting call looks for a stream dropped while it waited
_log = logging.getLogger("llama_rewire")


def _open_stream_error(what: str, stream: str, *, mine: bool) -> RuntimeError:
    where = "in this thread" if mine else "by a thread that has ended"
    return RuntimeError(
        f"{what}: a streamed completion on this Llama ({stream}) is still open {where}: consume it to the "
        "end or close() it first (a call from another thread waits for it)")


class _Stream:
    """The guard's record of the open stream: the generator it steps, owned here."""

    __slots__ = ("abandoned", "closed_by_llama", "gen", "home", "home_thread", "what")

    def __init__(self, gen: Iterator[Any], what: str) -> None:
        self.gen = gen
        self.what = what
        self.home = threading.get_ident()  # the thread that started or last stepped it (and its ident)
        self.home_thread = threading.current_thread()
        self.abandoned = False  # its handle was garbage-collected
        self.closed_by_llama = False

    def set_home(self) -> None:
        self.home_thread = threading.current_thread()
        self.home = threading.get_ident()


class _Ticket:
    """A call waiting for the guard: its place in the queue and what it may run alongside."""

    __slots__ = ("me", "stream", "while_streaming")

    def __init__(self, me: int, while_streaming: bool, stream: _Stream | None) -> None:
        self.me = me
        self.while_streaming = while_streaming
        self.stream = stream


class CallGuard:
    """The state of one Llama's calls: which thread runs one (and how deeply nested), the open stream,
    the readers of the vocabulary, and whether it is closing."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._readers = 0
        self._waiting = 0  # threads in a wait on _cond (exit() notifies only when there are some)
        self._queue: list[_Ticket] = []  # the calls waiting for the guard, oldest first
        self._stream: _Stream | None = None
        self._closing = False
        self._closed = False
        self._turns = 0  # calls that have taken the guard (not counting calls inside calls)
        self._in_step = 0  # > 0 while the open stream's generator runs (a step, or its clean-up)

    @property
    def streaming(self) -> bool:
        """A stream is open (read without the lock, by a call that holds the guard)."""
        return self._stream is not None

    @property
    def turns(self) -> int:
        """How many calls have taken the guard so far (read by its owner: a changed count since it last
        held the guard says that other calls ran in between)."""
        return self._turns

    @property
    def waiting(self) -> int:
        """Calls waiting for the guard (read without the lock by its owner)."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        """close() has been called (read without the lock by the decode loop)."""
        return self._closing or self._closed

    # -- calls ------------------------------------------------------------------------------------

    def held(self) -> bool:
        """Whether the calling thread holds the guard (it is inside a call on the Llama)."""
        return self._owner == threading.get_ident()

    def end_stream(self) -> None:
        """Close the open stream, if any, from inside a call that holds the guard: a stream opened inside
        a scoped block (``Llama.rewired`` ...) ends with the block, before what the block changed is put
        back. Its handle then ends like a stream closed by another call."""
        s = self._stream
        if s is None or not self.held():
            return
        self._in_step += 1
        try:
            self._close_gen(s)  # its clean-up calls run in this turn
        finally:
            self._in_step -= 1
            self._release(s)

    @contextlib.contextmanager
    def turn(self, what: str, while_streaming: bool = False) -> Iterator[None]:
        """Hold the guard for a ``with`` block: several calls from this thread as one turn, nothing from
        another thread (nor the parallel slots) between them."""
        self.enter(what, while_streaming)
        try:
            yield
        finally:
            self.exit()

    def enter(self, what: str, while_streaming: bool = False, stream: _Stream | None = None) -> bool:
        """Take the guard for a call named ``what``, waiting for a call in another thread to end.

        ``while_streaming``: the call only looks, and may run between two steps of an open stream.
        ``stream``: the call is a step of that stream; returns False when it is no longer open.
        """
        me = threading.get_ident()
        if self._owner == me:  # a call inside a call: only this thread can change the owner now
            if (self._stream is not None and stream is None and not while_streaming
                    and not self._in_step):
                # a call inside a scoped block (Llama.rewired ...) while a stream the block opened is
                # open: refused as it would be outside the block, else it would run under the stream
                raise _open_stream_error(what, self._stream.what, mine=True)
            self._depth += 1
            return True
        with self._cond:
            if (stream is None and not self._queue and self._owner is None and self._stream is None
                    and not (self._closing or self._closed)):  # the common case: nothing runs or waits
                self._owner, self._depth = me, 1
                self._turns += 1
                return True
            ticket = _Ticket(me, while_streaming, stream)
            self._queue.append(ticket)
        collected = False
        try:
            while True:
                with self._cond:
                    verdict = self._wait_turn(ticket, what, collected)
                if verdict == "collect":  # our own open stream: unless it is garbage, that is an error
                    collected = True
                    gc.collect()
                    continue
                if verdict == "gone":
                    return False
                if isinstance(verdict, _Stream):  # a dropped stream is closed by whoever comes next
                    self._close_gen(verdict)
                return True
        finally:
            self._leave_queue(ticket)

    def _leave_queue(self, ticket: _Ticket) -> None:
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)
                if self._waiting:
                    self._cond.notify_all()  # the next in the queue may be the one to run now

    def _may_run(self, ticket: _Ticket) -> bool:
        """Under the lock, with no owner: whether the call would go ahead now (run, raise, or give up)
        rather than wait for the open stream's thread."""
        if self._closing or self._closed or (ticket.stream is not None and self._stream is not ticket.stream):
            return True
        s = self._stream
        if s is None or s is ticket.stream or ticket.while_streaming or s.abandoned:
            return True
        return s.home == ticket.me or not s.home_thread.is_alive()

    def _wait_turn(self, ticket: _Ticket, what: str, collected: bool) -> str | _Stream | None:
        """Under the lock: wait until this call's turn, then own the guard (None, or the dropped stream
        to close first), or say why not ('gone', 'collect'; raises when closed). A call that could run
        lets an earlier one that could run too go first."""
        me, stream = ticket.me, ticket.stream
        while True:
            if stream is not None and self._stream is not stream:
                return "gone"
            if self._closing or self._closed:
                raise RuntimeError(CLOSED)
            if self._owner is None:
                if not self._may_run(ticket):
                    self._wait(_POLL_S)  # the stream's thread may still consume it: wait
                    continue
                earlier = self._queue[: self._queue.index(ticket)]
                if any(self._may_run(t) for t in earlier):
                    self._wait(_POLL_S)  # its turn comes first
                    continue
                s = self._stream
                dropped = None
                if s is not None and s is not stream and not ticket.while_streaming:
                    if not s.abandoned:
                        if not collected:
                            return "collect"
                        raise _open_stream_error(what, s.what, mine=s.home == me)
                    dropped, self._stream = s, None
                self._queue.remove(ticket)
                self._owner, self._depth = me, 1
                self._turns += 1
                if stream is not None:
                    stream.set_home()
                return dropped
            self._wait(_POLL_S if self._stream is not None else None)

    def _wait(self, timeout: float | None) -> None:
        self._waiting += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def exit(self) -> None:
        """End the call taken with :meth:`enter` (by the thread that took it)."""
        if self._depth > 1:
            self._depth -= 1
            return
        s = self._stream
        if s is not None and s.abandoned and not self._closing:
            with self._cond:
                s, self._stream = (s, None) if self._stream is s else (None, self._stream)
            if s is not None:
                self._close_gen(s)  # still the owner: the generator's own clean-up calls go through
        with self._cond:
            self._owner, self._depth = None, 0
            if self._waiting:
                self._cond.notify_all()

    def reader(self) -> bool:
        """Start a call that reads the vocabulary only; True when it must call :meth:`reader_done`."""
        if self._owner == threading.get_ident():
            return False
        with self._cond:
            if self._closing or self._closed:
                raise RuntimeError(CLOSED)
            self._readers += 1
        return True

    def reader_done(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers and self._waiting:
                self._cond.notify_all()

    # -- streams ----------------------------------------------------------------------------------

    def open_stream(self, gen: Iterator[T], what: str) -> GuardedStream[T]:
        """Make ``gen`` the open stream; called inside the call that starts it, which owns the guard."""
        return GuardedStream(self, self._register(gen, what))

    def _register(self, gen: Iterator[Any], what: str) -> _Stream:
        me = threading.get_ident()
        if self._owner != me:
            raise RuntimeError(f"{what}: a stream must be opened inside a call on the Llama")
        with self._cond:
            if self._stream is not None:
                raise _open_stream_error(what, self._stream.what, mine=True)
            record = self._stream = _Stream(gen, what)
        return record

    def _release(self, record: _Stream) -> None:
        with self._cond:
            if self._stream is record:
                self._stream = None
                if self._waiting:
                    self._cond.notify_all()

    @staticmethod
    def _close_gen(record: _Stream) -> None:
        close = getattr(record.gen, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            _log.warning("closing an unfinished %s failed", record.what, exc_info=True)

    def abandon(self, record: _Stream) -> None:
        """The stream's handle is gone (a weakref finalizer): close its generator now if nothing runs,
        else leave it to the next call (the lock is not waited for: this may run inside any code)."""
        record.abandoned = True
        if not self._cond.acquire(blocking=False):
            return
        try:
            if self._stream is not record or self._owner is not None or self._closing:
                return
            self._stream = None
            self._owner, self._depth = threading.get_ident(), 1
            self._turns += 1
        finally:
            self._cond.release()
        try:
            self._close_gen(record)
        finally:
            self.exit()

    # -- closing ----------------------------------------------------------------------------------

    def close(self, free: Callable[[], None]) -> None:
        """Wait for the running call to stop (it stops at its next decode), close the open stream, then
        ``free()``; later calls raise. Idempotent."""
        me = threading.get_ident()
        with self._cond:
            if self._closed:
                return
            if self._owner == me:
                raise RuntimeError("close() was called inside a call on this Llama (from a callback?): "
                                   "close it once the call has returned")
            if self._closing:  # another thread is closing it
                while not self._closed:
                    self._wait(None)
                return
            self._closing = True
            while self._owner is not None or self._readers:
                self._wait(_POLL_S)
            self._owner, self._depth = me, 1
            record, self._stream = self._stream, None
        try:
            if record is not None:
                record.closed_by_llama = True
                self._close_gen(record)
            free()
        finally:
            with self._cond:
                self._closed = True
                self._owner, self._depth = None, 0
                self._cond.notify_all()


class GuardedStream(Generic[T]):
    """The handle of a stream under a guard: each ``next()`` is one step, taken under the guard from
    whichever thread calls it; ``close()`` stops it. Dropping the handle closes the stream too.

    Opened either at once (``CallGuard.open_stream``, inside the call that starts it) or, with
    :meth:`lazy`, at its first step (``generate``: all its work is in its steps)."""

    def __init__(self, guard: CallGuard, record: _Stream | None, gen: Iterator[T] | None = None,
                 what: str = "") -> None:
        self._guard = guard
        self._record = record
        self._pending = gen  # a lazy stream's generator until its first step
        self._what = record.what if record is not None else what
        self._done = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if record is not None:
            self._watch(record)

    @classmethod
    def lazy(cls, guard: CallGuard, gen: Iterator[T], what: str) -> GuardedStream[T]:
        return cls(guard, None, gen, what)

    def _watch(self, record: _Stream) -> None:
        self._finalizer = weakref.finalize(self, self._guard.abandon, record)
        self._finalizer.atexit = False

    def __iter__(self) -> GuardedStream[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        guard = self._guard
        record = self._record
        if record is None:  # a lazy stream's first step: it opens the stream
            guard.enter(self._what)
            try:
                if self._record is None:
                    assert self._pending is not None
                    record = self._record = guard._register(self._pending, self._what)
                    self._pending = None
                    self._watch(record)
                else:  # another thread started it while this one waited: it has ended since
                    self._done = True
                    raise StopIteration
            except BaseException:
                guard.exit()
                raise
        elif not guard.enter(self._what, stream=record):
            self._end()
            if record.closed_by_llama:
                raise RuntimeError(CLOSED)
            raise StopIteration
        guard._in_step += 1
        try:
            item: T = next(record.gen)
        except BaseException:  # exhausted, or failed: either way the stream is over
            guard._release(record)
            self._end()
            raise
        finally:
            guard._in_step -= 1
            guard.exit()
        return item

    def _end(self) -> None:
        self._done = True
        if self._finalizer is not None:
            self._finalizer.detach()

    def close(self) -> None:
        """Stop the stream (its generator's clean-up runs under the guard); idempotent."""
        if self._done:
            return
        record = self._record
        if record is None:  # never started: nothing ran
            self._end()
            close = getattr(self._pending, "close", None)
            if close is not None:
                close()
            return
        guard = self._guard
        try:
            if not guard.enter(self._what, stream=record):
                return
        except RuntimeError:  # the Llama is closing: it closes the stream itself
            return
        finally:
            self._end()
        guard._in_step += 1
        try:
            CallGuard._close_gen(record)
        finally:
            guard._in_step -= 1
            guard._release(record)
            guard.exit()


def serialised(*, while_streaming: bool = False, name: str | None = None) -> Callable[[F], F]:
    """A method decorator: the call runs under ``self._guard`` (see :class:`CallGuard`); ``name`` is what
    messages call it (default: the method's name)."""

    def wrap(method: F) -> F:
        what = name or method.__name__

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            guard: CallGuard = self._guard
            guard.enter(what, while_streaming)
            try:
                return method(self, *args, **kwargs)
            finally:
                guard.exit()

        return cast("F", call)

    return wrap


def reading(method: F) -> F:
    """A method decorator for calls that only read the vocabulary: they run alongside other calls and
    only keep ``close()`` from freeing the model under them."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard: CallGuard = self._guard
        counted = guard.reader()
        try:
            return method(self, *args, **kwargs)
        finally:
            if counted:
                guard.reader_done()

    return cast("F", call)

"""Server-sent events: a model's chunk iterator, pulled in worker threads, sent as ``data: {json}``
events and ended by ``data: [DONE]``.

A stream on a one-at-a-time model holds its model's lock from the call that starts it until its
iterator ends or is closed, so a later request to the same model waits its turn instead of interrupting
it; a stream on a model's parallel slots holds one slot instead. A client that disconnects stops the
generation: the iterator is closed (which frees its slot), then the lock released.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import from_exception

if TYPE_CHECKING:
    from ..llama import Llama
    from .pool import ServedModel

log = logging.getLogger("llama_rewire.server")

DONE = b"data: [DONE]\n\n"

Chunk = dict[str, Any]
UsageFallback = Callable[["Llama", str], dict[str, int]]


def _plain(value: Any) -> Any:
    """numpy numbers and arrays as JSON sees them."""
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return tolist()


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=_plain).encode("utf-8")


def sse_event(data: Any) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def next_chunk(iterator: Iterator[Chunk]) -> Chunk | None:
    return next(iterator, None)


class ChunkStream:
    """The chunks of one streamed completion, owning its model's lock until the end.

    The caller has taken the lock and started the iterator, then calls :meth:`prefetch` (so that an
    error before any output is still an HTTP error). ``text_of(chunk)`` is the text a chunk adds; with
    ``include_usage`` a last chunk with empty ``choices`` carries the ``usage`` that the iterator
    reports, or, where it reports none, ``usage_fallback(llama, generated_text)``.
    """

    def __init__(self, served: ServedModel, iterator: Iterator[Chunk], *,
                 include_usage: bool, text_of: Callable[[Chunk], str], usage_fallback: UsageFallback,
                 locked: bool = True, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.served = served
        self.locked = locked  # the stream holds the model's lock (else: a slot, freed by closing)
        self.limiter = limiter  # the worker threads it pulls chunks in (None: anyio's default)
        self.iterator = iterator
        self.include_usage = include_usage
        self.text_of = text_of
        self.usage_fallback = usage_fallback
        self._pending: Chunk | None = None
        self._texts: list[str] = []
        self._last: Chunk = {}
        self._exhausted = False
        self._released = False
        self._ended = False

    async def prefetch(self, param: str | None = None) -> None:
        """Pull the first chunk; an error raises :class:`APIError` (``param``: the request's input)."""
        try:
            self._pending = await anyio.to_thread.run_sync(next_chunk, self.iterator, limiter=self.limiter)
        except Exception as e:
            raise from_exception(e, param) from e
        self._exhausted = self._pending is None

    async def pull(self) -> bytes | None:
        """The next event(s) to send; None once the stream has ended."""
        if self._ended:
            return None
        try:
            chunk, self._pending = self._pending, None
            if chunk is None and not self._exhausted:
                chunk = await anyio.to_thread.run_sync(next_chunk, self.iterator, limiter=self.limiter)
            if chunk is not None:
                return sse_event(self._prepare(chunk))
            self._exhausted = True
            tail = sse_event(await self._usage_chunk()) if self.include_usage else b""
            await self.close()
            self._ended = True
            return tail + DONE
        except Exception as e:
            # output has been sent already: the error goes in the stream, as OpenAI's API does
            self._ended = True
            await self.close()
            return sse_event(from_exception(e).body())

    def _prepare(self, chunk: Chunk) -> Chunk:
        chunk["model"] = self.served.alias
        if self.include_usage:
            chunk.setdefault("usage", None)
        self._texts.append(self.text_of(chunk))
        self._last = chunk
        return chunk

    async def _usage_chunk(self) -> Chunk:
        usage = getattr(self.iterator, "usage", None)
        if not isinstance(usage, dict):
            text = "".join(self._texts)
            usage = await anyio.to_thread.run_sync(self.usage_fallback, self.served.llama, text,
                                                   limiter=self.limiter)
        return {
            "id": self._last.get("id", ""),
            "object": self._last.get("object", ""),
            "created": self._last.get("created", 0),
            "model": self.served.alias,
            "choices": [],
            "usage": usage,
        }

    async def close(self) -> None:
        """Stop the generation (if it has not ended) and release the model's lock; idempotent.

        Call it shielded from cancellation."""
        if self._released:
            return
        try:
            if self._exhausted:
                self.served.count_usage(getattr(self.iterator, "usage", None))
            close = getattr(self.iterator, "close", None)
            if not self._exhausted and close is not None:
                await anyio.to_thread.run_sync(close, limiter=self.limiter)
        except Exception:
            log.exception("closing a stream's iterator failed")
        finally:
            self._released = True
            if self.locked:
                self.served.lock.release()


class SSEResponse(Response):
    """A ``text/event-stream`` response sending a :class:`ChunkStream`, which it always closes."""

    media_type = "text/event-stream"

    def __init__(self, stream: ChunkStream) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                await self._send_all(send)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.close()

    async def _send_all(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            while (event := await self.stream.pull()) is not None:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            log.info("client went away during a stream of %s; generation stopped", self.stream.served.alias)

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.info("client disconnected from a stream of %s; generation stopped",
                         self.stream.served.alias)
                scope.cancel()
                return

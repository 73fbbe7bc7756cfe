"""The served models: loading, selection by alias, and one lock per model.

A ``Llama`` holds one inference context. With ``n_parallel`` 1 the requests to a model run one at a
time: each takes the model's lock (an asyncio lock, so waiting requests do not hold threads) and runs
its model calls in worker threads, so the event loop stays free. With ``n_parallel`` N > 1 completions
and chat completions run on the model's N slots (``Llama.slots``: one decode loop, continuous batching)
without the lock; what the slots cannot run (a steered request, echo with logprobs, embeddings) still
takes the lock and runs on the Llama itself, which waits for the running slots to finish first.
Different models have different locks and run concurrently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..llama import Llama
from .errors import SERVER_ERROR, APIError, from_exception, model_not_found
from .settings import ModelSettings

T = TypeVar("T")


class ServedModel:
    """One loaded model under its alias."""

    def __init__(self, settings: ModelSettings, llama: Llama) -> None:
        self.settings = settings
        self.alias = settings.alias
        self.llama = llama
        self.created = int(time.time())
        self._lock: asyncio.Lock | None = None
        self.parallel = settings.n_parallel > 1
        self.waiting = 0  # requests waiting for the lock
        self.counts = {"requests": 0, "prompt_tokens": 0, "tokens_predicted": 0}  # one-at-a-time
        self._limiter: anyio.CapacityLimiter | None = None
        self._longest_piece: int | None = None  # bytes; 0 where the tokenizer gives no bound

    @classmethod
    def load(cls, settings: ModelSettings) -> ServedModel:
        from ..models import resolve

        path = resolve(settings.model)
        return cls(settings, Llama(str(path), **settings.llama_kwargs()))

    @property
    def lock(self) -> asyncio.Lock:
        # created on first use, inside the event loop that serves requests
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def call(self, fn: Callable[[Llama], T], param: str | None = None) -> T:
        """Run ``fn(llama)`` in a worker thread while holding the model's lock; a model error becomes
        an :class:`APIError` (``param``: the request field that carried the input)."""
        async with self.lock:
            return await self.call_locked(fn, param)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """Worker threads for requests on the slots: each waits for its tokens in a thread of its own,
        so the requests queued for a slot do not take the threads the other endpoints need."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(max(256, 4 * self.settings.n_parallel))
        return self._limiter

    async def call_slots(self, fn: Callable[[Llama], T], param: str | None = None) -> T:
        """Run ``fn(llama)`` (which uses ``llama.slots``) in a worker thread, without the lock."""
        try:
            return await anyio.to_thread.run_sync(fn, self.llama, limiter=self.limiter)
        except Exception as e:
            raise from_exception(e, param) from e

    def count_usage(self, usage: Any) -> None:
        """Add a finished request's usage to the counters."""
        if isinstance(usage, dict):
            self.counts["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.counts["tokens_predicted"] += int(usage.get("completion_tokens") or 0)

    def slot_counts(self) -> dict[str, int]:
        """Slots busy and idle, requests queued (a one-at-a-time model: its lock taken or not)."""
        if self.parallel:
            stats = self.llama.slots.stats()
            return {"n_parallel": self.settings.n_parallel, "slots_idle": stats["slots_idle"],
                    "slots_processing": stats["slots_processing"], "queue": stats["queue"]}
        busy = int(self._lock is not None and self._lock.locked())
        return {"n_parallel": 1, "slots_idle": 1 - busy, "slots_processing": busy, "queue": self.waiting}

    async def call_locked(self, fn: Callable[[Llama], T], param: str | None = None) -> T:
        """As :meth:`call`, for a caller that already holds the lock."""
        try:
            return await anyio.to_thread.run_sync(fn, self.llama)
        except Exception as e:
            raise from_exception(e, param) from e

    async def prompt_bytes_limit(self) -> int | None:
        """The most bytes of text that can fit in a sequence's window (``n_ctx`` tokens of the longest
        piece of the vocabulary), so that a larger prompt is refused before it is tokenized; None for a
        tokenizer that may drop or shorten text (WPM, UGM, RWKV: no such bound)."""
        if self._longest_piece is None:
            self._longest_piece = await anyio.to_thread.run_sync(longest_piece, self.llama)
        return self.llama.n_ctx() * self._longest_piece if self._longest_piece else None

    def require_embedding(self) -> None:
        if not self.settings.embedding:
            raise APIError(400, f"The model {self.alias!r} does not serve embeddings: load it with the "
                                "setting embedding=true", param="model", code="embeddings_not_enabled")

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry."""
        return {
            "id": self.alias,
            "object": "model",
            "created": self.created,
            "owned_by": "llama-rewire",
            "permissions": [],
            "activations": self.settings.activations,
            "wiring": str(self.llama.wiring) or None,  # the effective wiring, canonical
            "n_ctx": self.settings.n_ctx,
            "n_parallel": self.settings.n_parallel,
        }


# llama.cpp's vocabulary types whose tokens cover the text's bytes as their pieces do: SPM (with
# byte fallback) and byte-level BPE
_PIECEWISE_VOCABS = (1, 2)


def longest_piece(llama: Llama) -> int:
    """The longest text, in bytes, one token stands for (special tokens as their text); 0 for a vocabulary
    whose tokenizer normalizes text (then a token may stand for more text than its piece)."""
    model = llama.model
    if model.vocab_type() not in _PIECEWISE_VOCABS:
        return 0
    return max((len(model.token_to_piece(t, True)) for t in range(model.n_vocab())), default=0)


def select_alias(requested: str | None, aliases: list[str]) -> str:
    """The alias a request's ``model`` field selects: on a one-model server that model, whatever the
    name (as llama-cpp-python's server answers); else the alias named, the first model's when omitted,
    and a 404 :class:`APIError` for an unknown name."""
    if requested is None or requested == "" or len(aliases) == 1:
        return aliases[0]
    if requested in aliases:
        return requested
    raise model_not_found(requested, aliases)


class ModelPool:
    """The served models, by alias, in the order they were configured."""

    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = {m.alias: m for m in models}

    @classmethod
    def load(cls, settings: list[ModelSettings]) -> ModelPool:
        loaded: list[ServedModel] = []
        try:
            for s in settings:
                loaded.append(ServedModel.load(s))
        except BaseException:
            for m in loaded:
                m.llama.close()
            raise
        return cls(loaded)

    def get(self, requested: str | None) -> ServedModel:
        """The model a request names; a 503 for one whose RPC server went away (the others serve on)."""
        served = self.models[select_alias(requested, list(self.models))]
        lost = served.llama.rpc_lost
        if lost is not None:
            raise APIError(503, f"the model {served.alias!r} lost its RPC server {lost}; restart the server "
                                "(or reload the model) once the RPC server is back", type=SERVER_ERROR,
                           code="rpc_server_lost")
        return served

    async def aclose(self) -> None:
        """Close every model, each once its running request is done."""
        for m in self.models.values():
            async with m.lock:
                m.llama.close()

    def close(self) -> None:
        for m in self.models.values():
            m.llama.close()

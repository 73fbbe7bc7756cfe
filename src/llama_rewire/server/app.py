"""The FastAPI application: OpenAI's completions, chat completions, embeddings and models endpoints,
llama-cpp-python's tokenize/detokenize extras, and /health."""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Optional, TypeVar

import anyio
import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..llama import Llama
from ..llama_grammar import LlamaGrammar
from .errors import APIError, install_handlers
from .limits import check_bias_size, check_messages_size, check_prompt_size, check_tokenize_size
from .metrics import render_metrics
from .middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    authorized,
    cors_options,
    is_loopback,
    names,
)
from .pool import ModelPool, ServedModel
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    SamplingRequest,
    TokenizeRequest,
)
from .settings import Settings
from .steering import Steering, SteeringDir, steered, steered_stream, steering_of
from .streaming import Chunk, ChunkStream, SSEResponse, UsageFallback, dumps

OPEN_PATHS = frozenset({"/health"})
# stopping_criteria(ids, logits) -> stop?
StopCheck = Callable[[Any, Any], bool]
LlamaCall = Callable[[Llama], Any]
# call(target, stream, stop): a completion or chat on the Llama or its slots
GenerateCall = Callable[[Any, bool, Optional[StopCheck]], Any]
T = TypeVar("T")


def create_app(settings: Settings, pool: ModelPool | None = None) -> FastAPI:
    """The server for ``settings``; loads its models now (or serves ``pool``) and closes them at shutdown."""
    models = pool if pool is not None else ModelPool.load(settings.models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await models.aclose()

    app = FastAPI(title="llama-rewire", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.pool = models
    steering_dir = SteeringDir(settings.steering_dir) if settings.steering_dir else None
    install_handlers(app)
    app.include_router(_router(models, steering_dir, settings.api_key))
    # the last added runs first: Host check, CORS (browsers' preflight requests need no key), key, size
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, open_paths=OPEN_PATHS)
    app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins, settings.api_key))
    if is_loopback(settings.host):
        app.add_middleware(HostCheckMiddleware, allowed=names(settings.allowed_hosts))
    return app


# -- request helpers ----------------------------------------------------------------------------------


def _check_only_one(value: int | None, name: str) -> None:
    if value is not None and value != 1:
        raise APIError(400, f"{name}={value} is not supported: this server returns one choice", param=name)


def _single_prompt(prompt: str | list[int] | list[str]) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if all(isinstance(p, int) for p in prompt):
        return [int(p) for p in prompt]
    if len(prompt) > 1:
        raise APIError(400, "a list of several prompts is not supported: send one prompt per request",
                       param="prompt")
    return str(prompt[0])


def _token_bias(served: ServedModel, body: SamplingRequest) -> dict[int, float] | None:
    """logit_bias with token-id keys (checked before the request waits for its model)."""
    if not body.logit_bias:
        return None
    check_bias_size(served, body.logit_bias)
    if body.logit_bias_type == "tokens":
        return None
    try:
        return {int(k): v for k, v in body.logit_bias.items()}
    except ValueError as e:
        raise APIError(400, "logit_bias keys must be token ids (or set logit_bias_type to 'tokens')",
                       param="logit_bias") from e


def _model_kwargs(llm: Llama, body: SamplingRequest, kwargs: dict[str, Any],
                  token_bias: dict[int, float] | None) -> dict[str, Any]:
    """The request's keyword arguments as the model takes them: a grammar parsed (a bad one raises
    GrammarError), logit_bias keyed by token id (with logit_bias_type "tokens", texts tokenized)."""
    out = dict(kwargs)
    if isinstance(out.get("grammar"), str):
        out["grammar"] = LlamaGrammar.from_string(out["grammar"], verbose=False)
    if token_bias is not None:
        out["logit_bias"] = token_bias
    elif body.logit_bias:
        by_text: dict[int, float] = {}
        for text, value in body.logit_bias.items():
            for token in llm.tokenize(text.encode("utf-8"), add_bos=False, special=True):
                by_text[token] = value
        out["logit_bias"] = by_text
    return out


def _usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


def _tokens(llm: Llama, text: str) -> list[int]:
    """As llama-cpp-python's /extras/tokenize: with the model's BOS, special tokens parsed."""
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)


def _count(llm: Llama, text: str, add_bos: bool) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)) if text else 0


def _completion_usage(prompt: str | list[int]) -> UsageFallback:
    def usage(llm: Llama, generated: str) -> dict[str, int]:
        n_prompt = len(prompt) if isinstance(prompt, list) else _count(llm, prompt, add_bos=True)
        return _usage(n_prompt, _count(llm, generated, add_bos=False))

    return usage


def _chat_usage(messages: list[dict[str, Any]]) -> UsageFallback:
    """Approximate: the message contents without the chat template's own tokens."""
    def usage(llm: Llama, generated: str) -> dict[str, int]:
        contents = "".join(m["content"] for m in messages if isinstance(m.get("content"), str))
        return _usage(_count(llm, contents, add_bos=True), _count(llm, generated, add_bos=False))

    return usage


def _completion_text(chunk: Chunk) -> str:
    choices = chunk.get("choices") or [{}]
    return str(choices[0].get("text") or "")


def _chat_text(chunk: Chunk) -> str:
    choices = chunk.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


async def _acquire(served: ServedModel, request: Request) -> bool:
    """Take the model's lock; False (and no lock) if the client left while it waited its turn."""
    served.waiting += 1
    try:
        await served.lock.acquire()
    finally:
        served.waiting -= 1
    try:
        if await request.is_disconnected():
            served.lock.release()
            return False
    except BaseException:
        served.lock.release()
        raise
    return True


class ResultResponse(JSONResponse):
    """JSON that may hold numpy numbers."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _result(served: ServedModel, result: Any) -> Response:
    """A call's result as JSON, under the served alias, its usage counted."""
    if isinstance(result, dict) and "model" in result:
        result["model"] = served.alias
        served.count_usage(result.get("usage"))
    return ResultResponse(result)


async def _sse(stream: ChunkStream, param: str) -> Response:
    """The stream as server-sent events, its first chunk pulled now (an error before any output is an
    HTTP error); a failed start closes it."""
    try:
        await stream.prefetch(param)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.close()
        raise
    return SSEResponse(stream)


async def _until_client_leaves(request: Request, run: Callable[[StopCheck], Awaitable[T]]) -> tuple[T, bool]:
    """``run(client_gone)``, with the client watched meanwhile: ``client_gone`` (a ``stopping_criteria``)
    turns true once it has left. Returns the result and whether the client left."""
    gone = threading.Event()
    receive = request.receive  # the body has been read: what comes next is the disconnect

    def client_gone(ids: Any, logits: Any) -> bool:
        return gone.is_set()

    async def watch() -> None:
        # it holds no reference to the request: the cancelled watcher's frame lives on in a reference
        # cycle (its CancelledError's traceback) until the cyclic collector runs, and the request would
        # keep its parsed body alive with it
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            result = await run(client_gone)
        except Exception as e:  # raised below, not inside the group (which would wrap it)
            error = e
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        try:
            raise error
        finally:
            error = None  # no cycle through this frame
    return result, gone.is_set()


async def _run(served: ServedModel, request: Request, call: Callable[[StopCheck | None], LlamaCall],
               param: str, watch: bool = True) -> Response:
    """A non-streamed call on the Llama, its result as JSON. ``call(stop)`` is the call to make; with
    ``watch``, ``stop`` turns true once the client has left, so that a generation it passes on as
    ``stopping_criteria`` ends at its next token rather than run to ``max_tokens`` for nobody."""
    if not await _acquire(served, request):
        return Response(status_code=499)
    try:
        if watch:
            result, gone = await _until_client_leaves(
                request, lambda stop: served.call_locked(call(stop), param))
        else:
            result, gone = await served.call_locked(call(None), param), False
    finally:
        served.lock.release()
    if gone:
        return Response(status_code=499)
    return _result(served, result)


async def _run_slots(served: ServedModel, request: Request, call: Callable[[Llama, StopCheck], Any],
                     param: str) -> Response:
    """A non-streamed call on the model's slots, its result as JSON; as :func:`_run`, a client that
    leaves meanwhile stops the generation at its next token, which frees its slot."""
    result, gone = await _until_client_leaves(
        request, lambda stop: served.call_slots(lambda llm: call(llm, stop), param))
    if gone:
        return Response(status_code=499)
    return _result(served, result)


async def _stream_slots(served: ServedModel, start: Callable[[Llama], Iterator[Chunk]], *, param: str,
                        include_usage: bool, text_of: Callable[[Chunk], str],
                        usage_fallback: UsageFallback) -> Response:
    """A streamed call on the model's slots: the stream holds a slot until it ends or is closed."""
    iterator = await served.call_slots(start, param)
    stream = ChunkStream(served, iterator, include_usage=include_usage, text_of=text_of,
                         usage_fallback=usage_fallback, locked=False, limiter=served.limiter)
    return await _sse(stream, param)


async def _generate(served: ServedModel, request: Request, call: GenerateCall, *, stream: bool,
                    steering: Steering | None, slots_ok: bool, param: str, include_usage: bool,
                    text_of: Callable[[Chunk], str], usage_fallback: UsageFallback) -> Response:
    """One generation request (a completion or a chat) on its model, streamed or not.

    ``call(target, stream, stop)`` makes the call on ``target``: the Llama, or its parallel slots, which
    take the same arguments (``stop`` is a ``stopping_criteria``, or None). The request runs on the
    slots where the model has them and the slots can run it (no steering, and ``slots_ok``), else on
    the Llama under the model's lock, with its steering."""
    if served.parallel and steering is None and slots_ok:
        if stream:
            return await _stream_slots(served, lambda llm: call(llm.slots, True, None), param=param,
                                       include_usage=include_usage, text_of=text_of,
                                       usage_fallback=usage_fallback)
        return await _run_slots(served, request, lambda llm, stop: call(llm.slots, False, stop), param)
    if stream:
        return await _stream(served, request, steered_stream(steering, lambda llm: call(llm, True, None)),
                             param=param, include_usage=include_usage, text_of=text_of,
                             usage_fallback=usage_fallback)
    return await _run(served, request, lambda stop: steered(steering, lambda llm: call(llm, False, stop)),
                      param)


def _base64_embeddings(result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's encoding_format="base64": each vector as little-endian float32 bytes."""
    for item in result.get("data", []):
        vector = np.asarray(item["embedding"], dtype="<f4")
        if vector.ndim == 1:  # one vector per token (pooling none) stays a list of lists
            item["embedding"] = base64.b64encode(vector.tobytes()).decode("ascii")
    return result


async def _stream(served: ServedModel, request: Request, start: Callable[[Llama], Iterator[Chunk]], *,
                  param: str, include_usage: bool, text_of: Callable[[Chunk], str],
                  usage_fallback: UsageFallback) -> Response:
    """A streamed call: the lock is held from here until the stream ends (see :mod:`.streaming`)."""
    if not await _acquire(served, request):
        return Response(status_code=499)
    try:
        iterator = await served.call_locked(start, param)
    except BaseException:
        served.lock.release()
        raise
    stream = ChunkStream(served, iterator, include_usage=include_usage, text_of=text_of,
                         usage_fallback=usage_fallback)
    return await _sse(stream, param)


# -- routes ---------------------------------------------------------------------------------------------


def _router(pool: ModelPool, steering_dir: SteeringDir | None = None,
            api_key: str | None = None) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Up, and each model's slots: idle, processing, requests queued for one (to a client without the
        API key, if the server has one, only whether it is up)."""
        if api_key is not None and not authorized(request.scope, api_key):
            return {"status": "ok"}
        models = {alias: m.slot_counts() for alias, m in pool.models.items()}
        return {"status": "ok", "slots_idle": sum(c["slots_idle"] for c in models.values()),
                "slots_processing": sum(c["slots_processing"] for c in models.values()), "models": models}

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text: requests, tokens, slots and queue per model."""
        return Response(render_metrics(pool), media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.describe() for m in pool.models.values()]}

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        served = pool.get(body.model)
        served.counts["requests"] += 1
        _check_only_one(body.n, "n")
        _check_only_one(body.best_of, "best_of")
        kwargs = body.call_kwargs()
        prompt = _single_prompt(kwargs.pop("prompt", body.prompt))
        await check_prompt_size(served, prompt)
        bias = _token_bias(served, body)
        steering = await steering_of(body.steer, steering_dir)

        def call(target: Any, stream: bool, stop: StopCheck | None) -> Any:
            return target.create_completion(prompt, model=served.alias, stream=stream, stopping_criteria=stop,
                                            **_model_kwargs(served.llama, body, kwargs, bias))

        echo_logprobs = bool(body.echo) and body.logprobs is not None  # every prompt token's logits
        return await _generate(served, request, call, stream=body.stream, steering=steering,
                               slots_ok=not echo_logprobs, param="prompt", include_usage=body.include_usage,
                               text_of=_completion_text, usage_fallback=_completion_usage(prompt))

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        served = pool.get(body.model)
        served.counts["requests"] += 1
        _check_only_one(body.n, "n")
        kwargs = body.call_kwargs()
        await check_messages_size(served, kwargs["messages"])
        bias = _token_bias(served, body)
        steering = await steering_of(body.steer, steering_dir)

        def call(target: Any, stream: bool, stop: StopCheck | None) -> Any:
            return target.create_chat_completion(model=served.alias, stream=stream, stopping_criteria=stop,
                                                 **_model_kwargs(served.llama, body, kwargs, bias))

        return await _generate(served, request, call, stream=body.stream, steering=steering, slots_ok=True,
                               param="messages", include_usage=body.include_usage, text_of=_chat_text,
                               usage_fallback=_chat_usage(kwargs["messages"]))

    @router.get("/extras/steering")
    async def steering_vectors() -> dict[str, Any]:
        """The control vectors requests may name in ``steer.vector``."""
        names = await anyio.to_thread.run_sync(steering_dir.names) if steering_dir is not None else []
        return {"object": "list", "enabled": steering_dir is not None, "data": names}

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        served = pool.get(body.model)
        served.require_embedding()
        if body.dimensions is not None:
            raise APIError(400, "dimensions is not supported", param="dimensions")
        def call(llm: Llama) -> dict[str, Any]:
            result: dict[str, Any] = llm.create_embedding(body.input, model=served.alias)
            return _base64_embeddings(result) if body.encoding_format == "base64" else result

        return await _run(served, request, lambda stop: call, "input", watch=False)

    @router.post("/extras/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, list[int]]:
        served = pool.get(body.model)
        check_tokenize_size(body.input)
        return {"tokens": await served.call(lambda llm: _tokens(llm, body.input), "input")}

    @router.post("/extras/tokenize/count")
    async def tokenize_count(body: TokenizeRequest) -> dict[str, int]:
        served = pool.get(body.model)
        check_tokenize_size(body.input)
        return {"count": len(await served.call(lambda llm: _tokens(llm, body.input), "input"))}

    @router.post("/extras/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, str]:
        served = pool.get(body.model)

        def call(llm: Llama) -> str:
            n_vocab = llm.n_vocab()
            bad = [t for t in body.tokens if not 0 <= t < n_vocab]
            if bad:
                raise APIError(400, f"token ids out of range [0, {n_vocab}): {bad[:8]}", param="tokens")
            return llm.detokenize(body.tokens).decode("utf-8", errors="replace")

        return {"text": await served.call(call, "tokens")}

    return router

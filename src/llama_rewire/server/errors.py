"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, mapped from exception
types (never from message text)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import (
    ActivationSpecError,
    ChatFormatError,
    ClosedError,
    ContextOverflowError,
    DecodeError,
    GrammarError,
    RPCServerLostError,
    WiringSpecError,
)

log = logging.getLogger("llama_rewire.server")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error response: HTTP status plus OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_exception(exc: BaseException, param: str | None = None) -> APIError:
    """The response for an exception raised by a model call; ``param`` names the request field that
    carried the input (``prompt``, ``messages``, ...)."""
    if isinstance(exc, APIError):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ContextOverflowError):
        return APIError(400, message, param=param, code="context_length_exceeded")
    if isinstance(exc, WiringSpecError):
        return APIError(400, message, param="wiring", code="invalid_wiring_spec")
    if isinstance(exc, ActivationSpecError):
        return APIError(400, message, param="activations", code="invalid_activation_spec")
    if isinstance(exc, GrammarError):
        return APIError(400, message, param="grammar", code="invalid_grammar")
    if isinstance(exc, ChatFormatError):
        return APIError(400, message, param="messages", code="invalid_chat_format")
    if isinstance(exc, (ValueError, TypeError)):  # the argument it names, else the request's main field
        return APIError(400, message, param=getattr(exc, "param", None) or param)
    if isinstance(exc, ClosedError):
        return APIError(503, "the model is closed (the server is shutting down)", type=SERVER_ERROR,
                        code="model_closed")
    if isinstance(exc, RPCServerLostError):
        log.error("%s", message)
        return APIError(503, message, type=SERVER_ERROR, code="rpc_server_lost")
    if isinstance(exc, DecodeError):
        log.error("decode failed: %s", message)
        return APIError(500, f"decode failed: {message}", type=SERVER_ERROR, code="decode_error")
    log.error("unexpected error in a model call", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {message}", type=SERVER_ERROR)


def release(exc: BaseException | None) -> None:
    """Drop what a handled exception keeps alive: the tracebacks of it and of the exceptions chained to
    it (``__cause__``, ``__context__``, a group's members), and the chain itself.

    A traceback holds the frames it passed through, with their locals: the request, its body, its parsed
    fields (a 500,000-key ``logit_bias``). A frame that also holds the exception (``except ... as e``
    kept in a variable, an error re-raised later) closes a reference cycle that only the cyclic garbage
    collector frees, and it runs rarely when a request allocates few but large objects: a server answering
    big bad requests would keep each one's memory. Call it once the response is built."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        pending += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
        e.__traceback__ = None
        e.__cause__ = None
        e.__context__ = None


def model_not_found(name: str, known: list[str]) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; this server has {', '.join(known)}",
                    param="model", code="model_not_found")


def unauthorized() -> APIError:
    return APIError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for item in exc.errors():
        loc = [str(x) for x in item.get("loc", ()) if x != "body"]
        if item.get("type") == "json_invalid":
            reason = item.get("ctx", {}).get("error", item.get("msg", ""))
            return f"Invalid JSON in the request body: {reason}", None
        where = ".".join(loc)
        if not where:  # the body as a whole
            return ("The request body must be a JSON object, sent with 'Content-Type: application/json' "
                    f"({item.get('msg')})"), None
        param = param or where
        parts.append(f"{where}: {item.get('msg')}")
    return "; ".join(parts) or "invalid request", param


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    release(exc)
    return exc.response()


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    release(exc)
    exc.body = None  # the request body FastAPI keeps on the error
    return APIError(400, message, param=param).response()


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
    release(exc)
    return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error handling %s %s", request.method, request.url.path, exc_info=exc)
    release(exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type=SERVER_ERROR).response()


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

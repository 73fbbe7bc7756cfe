"""The checks every HTTP request passes before it reaches an endpoint: the Host header (a server on a
loopback address answers loopback names only), the API key, and the size of the body.

Outermost first: the Host check, CORS (see :func:`cors_options`), the API key, the body limit. Each
answers with an OpenAI-shaped error and does not call the application.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import secrets
import threading
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, unauthorized

# browsers' pages on this machine: http(s)://localhost, 127.x.x.x or [::1], any port
LOOPBACK_ORIGINS = r"https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without a port) names this machine only."""
    name = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host of a Host header's value, without its port or brackets."""
    value = header.strip()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def names(value: str | None) -> list[str]:
    """A comma-separated setting as a list."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def authorized(scope: Scope, api_key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <api_key>``."""
    given = Headers(scope=scope).get("authorization", "")
    scheme, _, key = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # the header arrives decoded as latin-1: encoded back, it is the bytes the client sent, which a key
    # of any characters matches when sent as UTF-8 (as HTTP clients send it)
    return secrets.compare_digest(key.strip().encode("latin-1", errors="replace"),
                                  api_key.strip().encode("utf-8"))


def cors_options(origins: str | None, api_key: str | None) -> dict[str, Any]:
    """CORSMiddleware's keyword arguments: the origins given ('*' for any); by default any origin when an
    API key guards the server (as llama-cpp-python's server allows), pages on localhost only when none
    does, so that a page on another site cannot use a key-less server through its visitor's browser."""
    given = names(origins)
    common = {"allow_methods": ["*"], "allow_headers": ["*"]}
    if given:
        return {"allow_origins": given, **common}
    if api_key:
        return {"allow_origins": ["*"], **common}
    return {"allow_origin_regex": LOOPBACK_ORIGINS, **common}


class HostCheckMiddleware:
    """On a server bound to a loopback address, a 400 for a Host header that names another host: a page
    whose domain was re-pointed to 127.0.0.1 (DNS rebinding) sends its own domain there."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed
        self.allowed = frozenset(h.lower().rstrip(".") for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allow_any:
            header = Headers(scope=scope).get("host")
            host = host_of(header).lower().rstrip(".") if header is not None else None
            if host is not None and not is_loopback(host) and host not in self.allowed:
                error = APIError(400, f"Host {header!r} is not served here: this server listens on a "
                                      "loopback address and answers loopback names only (see "
                                      "--allowed_hosts)", code="host_not_allowed")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """Every HTTP request but those to ``open_paths`` needs ``Authorization: Bearer <api_key>``."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or authorized(scope, self.api_key):
            await self.app(scope, receive, send)
            return
        await unauthorized().response()(scope, receive, send)


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server accepts ({limit} bytes; see "
                         "--max_body_bytes)", code="request_too_large")


# after a request whose body was at least this big, the memory it freed is handed back to the system
TRIM_AFTER_BYTES = 1 << 20


# glibc's mallopt(M_MMAP_THRESHOLD, ...), and the size it starts at
_M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 128 << 10


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold at its initial ``LARGE_BLOCK_BYTES``: each block that large or larger
    gets a mapping of its own, handed back to the system when freed. Returns whether it was set.

    glibc raises the threshold each time such a block is freed (up to 32 MiB), so after the first big
    request (a body of megabytes, parsed into a str and lists) blocks of megabytes came from the heap
    arenas of whichever worker threads handled them, and stayed there as the process's high-water mark:
    a soak of 1,600 requests with hostile bodies mixed in grew 10.2% with the threshold moving, 4.1% with
    it fixed. A threshold the user set (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``) is left alone."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:  # glibc only: other C libraries keep their own policy
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))


def _malloc_trim() -> Any:
    try:  # glibc only: other C libraries keep their own policy
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
HANDS_MEMORY_BACK = _TRIM is not None  # this C library can hand freed pages back on request
_trimming = threading.Lock()


def release_freed_memory() -> bool:
    """Hand the pages that the C allocator holds free back to the system (glibc's ``malloc_trim``).

    A request of megabytes (a long prompt, a big ``logit_bias``) is parsed into many objects in a worker
    thread; freed, they stay in that thread's allocator arena as the process's high-water mark, and a few
    such requests at once raise the server's RSS for good. Returns whether memory was released; at most one
    call runs at a time (a call while one runs returns False at once). It takes milliseconds, in a worker
    thread."""
    if _TRIM is None or not _trimming.acquire(blocking=False):
        return False
    try:
        return bool(_TRIM(0))
    finally:
        _trimming.release()


class BodyLimitMiddleware:
    """A 413 for a request body over ``limit`` bytes: at once when its Content-Length says so, else as soon
    as the bytes read pass the limit. The body is read here, whole, before the endpoint runs; after a body
    of ``TRIM_AFTER_BYTES`` or more, the memory freed is handed back (:func:`release_freed_memory`)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await too_large(self.limit).response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the endpoint sees that
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                chunks.clear()
                await too_large(self.limit).response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        size = len(body)
        try:
            await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], None,
                                          receive), send)
        finally:
            del body
            if size >= TRIM_AFTER_BYTES and HANDS_MEMORY_BACK:
                await asyncio.to_thread(release_freed_memory)


def _replay(messages: list[Message], last: Message | None, receive: Receive) -> Receive:
    """A receive channel that gives ``messages``, then ``last`` (if any), then what ``receive`` gives."""
    pending = [*messages, *([last] if last is not None else [])]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

"""llama.cpp's RPC backend: layers of a model on other machines.

A ``llama-rewire rpc-server`` (this machine's CPU, served over TCP) runs on each machine; a ``Llama``
given ``rpc_servers="host:port,host:port"`` and ``n_gpu_layers`` puts its offloaded layers on them
(split by ``tensor_split``, else by their free memory), the rest on the local CPU. Client and servers
must be built from the same llama.cpp commit: the handshake checks the protocol version, and the graph's
op ids travel over the wire.

Every endpoint is probed (connect, handshake) before llama.cpp sees it, since llama.cpp aborts the
process when an endpoint is unreachable or is not an RPC server: here that is a ``ConnectionError`` or a
``ValueError`` naming the endpoint. The RPC protocol has no authentication and no encryption: serve on
loopback or on a private network only.

Neither end trusts the other. A server closes the connection of a client whose message it cannot take
(a size beyond its limits, a tensor outside its buffer, a graph it cannot compute) and serves the next
one; it drops a client silent in the middle of a message, and an idle one when another waits to connect
(after ``LLAMA_REWIRE_RPC_SERVER_TIMEOUT`` seconds, 60 by default). A client counts an answer it cannot
use (an alignment that is not a power of two, a null base, an oversized allocation, too many devices) or
a server silent for ``LLAMA_REWIRE_RPC_TIMEOUT`` seconds (300 by default, see :func:`set_timeout`) as a
lost connection: an error at load, or an ``RPCServerLostError`` later.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _core

DEFAULT_PORT = 50052
PROBE_TIMEOUT_S = 5.0
# how long a client waits for a server's answer (a long graph on a slow server included)
CLIENT_TIMEOUT_S = 300.0
# how long a server waits for the rest of a message, for a HELLO, or lets a client idle while another
# waits to connect; the largest message other than a tensor's data (bounded by the client's buffers)
SERVER_TIMEOUT_S = 60.0
SERVER_MAX_MESSAGE_MIB = 256

# the handshake, as ggml-rpc frames it: | command (1 byte) | size (uint64) | payload |; the answer is
# | size (uint64) | payload |. HELLO's number is fixed across protocol versions.
_CMD_HELLO = 14
_CONN_CAPS = 24  # bytes of transport capabilities in the hello request and answer (all zero: plain TCP)
_HELLO_ANSWER = 4 + _CONN_CAPS  # major, minor, patch, padding, capabilities

_lock = threading.Lock()
_in_use: dict[str, int] = {}  # endpoint -> models of this process connected to it
_timeout: list[float | None] = [None]  # set_timeout's value; None: the environment's, else the default


# RPCServerLostError (a DecodeError): a decode found that an RPC server the model runs on went away; the
# Llama is unusable from then on (every call raises it again; close() frees it)
RPCServerLostError = _core.RPCServerLostError


class RPCServerError(ConnectionError, ValueError):
    """An RPC server that cannot be reached, or does not answer the handshake (also a ValueError: the
    endpoint passed is no good)."""


def parse_endpoints(value: Any) -> list[str]:
    """``"host:port,host:port"`` (llama-cpp-python's ``rpc_servers`` format; a list of such strings is
    also taken) as a list of endpoints; None or "" for none."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [part for v in value for part in v.split(",")]
    else:
        raise TypeError(f"rpc_servers must be a string 'host:port,host:port', got {type(value).__name__}")
    if not any(i.strip() for i in items):
        return []
    out: list[str] = []
    for item in items:
        endpoint = item.strip()
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or ":" in host or any(c.isspace() for c in host):
            raise ValueError(f"rpc_servers: {endpoint!r} is not host:port")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:  # "²" is a digit
            raise ValueError(f"rpc_servers: the port of {endpoint!r} must be a number from 1 to 65535")
        endpoint = f"{host}:{int(port)}"
        if endpoint in out:
            raise ValueError(f"rpc_servers: {endpoint} is given twice")
        out.append(endpoint)
    if len(out) > _core.RPC_MAX_SERVERS:
        raise ValueError(f"rpc_servers: at most {_core.RPC_MAX_SERVERS} servers, got {len(out)}")
    return out


def _seconds(name: str, value: str | None, default: float) -> float:
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= 86400 * 7:
        raise ValueError(f"{name} must be from 0 (no limit) to 604800 seconds, got {value!r}")
    return seconds


def set_timeout(seconds: float | None) -> None:
    """How long this process waits for an RPC server's answer before the connection counts as lost, for
    the connections made from now on (0: without limit; None: ``LLAMA_REWIRE_RPC_TIMEOUT``, else
    :data:`CLIENT_TIMEOUT_S`)."""
    if seconds is not None:
        _seconds("set_timeout", str(seconds), CLIENT_TIMEOUT_S)
    _timeout[0] = seconds


def client_timeout() -> float:
    """The timeout :func:`set_timeout` chose, in seconds."""
    if _timeout[0] is not None:
        return _timeout[0]
    return _seconds("LLAMA_REWIRE_RPC_TIMEOUT", os.environ.get("LLAMA_REWIRE_RPC_TIMEOUT"), CLIENT_TIMEOUT_S)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, int, int]:
    """Connect to ``endpoint`` and shake hands as llama.cpp's RPC client does; its protocol version.

    An endpoint that cannot be reached is an :class:`RPCServerError`; one that answers but is not a
    compatible RPC server (another service, another protocol version) is a ``ValueError``. A server
    busy with another client does not answer until that client leaves: that is a timeout."""
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise RPCServerError(f"RPC server {endpoint} cannot be reached: {e}") from None
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS) + bytes(_CONN_CAPS))
            head = _recv_exactly(sock, 8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            answer = _recv_exactly(sock, _HELLO_ANSWER) if size == _HELLO_ANSWER else b""
        except socket.timeout:
            raise RPCServerError(
                f"RPC server {endpoint} did not answer the handshake within {timeout:g} s (is it an RPC "
                "server? one serves a single client at a time: is another one connected?)") from None
        except OSError as e:
            raise RPCServerError(f"RPC server {endpoint}: the handshake failed: {e}") from None
    if len(answer) != _HELLO_ANSWER:
        raise ValueError(f"{endpoint} is not an RPC server of this protocol (its answer to the handshake "
                         f"was {(head + answer)[:16]!r})")
    major, minor, patch = answer[0], answer[1], answer[2]
    ours = (_core.RPC_PROTO_MAJOR_VERSION, _core.RPC_PROTO_MINOR_VERSION, _core.RPC_PROTO_PATCH_VERSION)
    if major != ours[0] or minor > ours[1]:
        raise ValueError(f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this client "
                         f"{ours[0]}.{ours[1]}.{ours[2]}: build both from the same llama-rewire")
    return major, minor, patch


def connect(endpoints: list[str], timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Probe each endpoint not already in use by this process (its one connection is then shared), and
    register it with llama.cpp; the names of their devices. Call :func:`release` with the same list when
    the model is freed."""
    names: list[str] = []
    with _lock:
        _core.rpc_set_timeout(round(client_timeout() * 1000))
        for endpoint in endpoints:
            if not _in_use.get(endpoint):
                try:
                    probe(endpoint, timeout)
                except ValueError as e:  # RPCServerError too: the message names the argument
                    raise type(e)(f"rpc_servers: {e}") from None
            elif _core.rpc_lost(endpoint):
                raise RPCServerError(f"rpc_servers: the connection to RPC server {endpoint} was lost, and a "
                                     "model of this process still holds it: close that model first")
            try:
                names += _core.rpc_device_names(endpoint)
            except RuntimeError as e:
                raise RPCServerError(f"rpc_servers: {e}") from None
        for endpoint in endpoints:
            _in_use[endpoint] = _in_use.get(endpoint, 0) + 1
    return names


def check_connected(endpoints: list[str]) -> None:
    """An :class:`RPCServerError` when the connection to one of ``endpoints`` was lost: while a model
    loaded, that is a server that stopped, stayed silent past the timeout, or answered what an RPC server
    must not (the log says which)."""
    for endpoint in endpoints:
        if _core.rpc_lost(endpoint):
            raise RPCServerError(
                f"rpc_servers: the connection to RPC server {endpoint} was lost while the model loaded (the "
                f"server stopped, did not answer within {client_timeout():g} s, or answered what an RPC "
                "server must not: see the log)")


def release(endpoints: list[str]) -> None:
    with _lock:
        for endpoint in endpoints:
            n = _in_use.get(endpoint, 0) - 1
            if n > 0:
                _in_use[endpoint] = n
            else:
                _in_use.pop(endpoint, None)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, threads: int | None = None,
          cache_dir: str | None = None, timeout: float | None = None,
          max_message_mib: int | None = None) -> None:
    """Serve this machine's CPU as an RPC device until the process ends (see ``llama-rewire
    rpc-server``). ``timeout`` (seconds; 0: none) drops a client silent in the middle of a message or
    before its handshake, or idle while another waits to connect; ``max_message_mib`` bounds a message
    other than a tensor's data. Their defaults: ``LLAMA_REWIRE_RPC_SERVER_TIMEOUT`` and
    ``LLAMA_REWIRE_RPC_MAX_MESSAGE_MIB``, else :data:`SERVER_TIMEOUT_S` and :data:`SERVER_MAX_MESSAGE_MIB`."""
    n = threads if threads else max(1, os.cpu_count() or 1)
    if timeout is None:
        name = "LLAMA_REWIRE_RPC_SERVER_TIMEOUT"
        timeout = _seconds(name, os.environ.get(name), SERVER_TIMEOUT_S)
    else:
        timeout = _seconds("timeout", str(timeout), SERVER_TIMEOUT_S)
    if max_message_mib is None:
        value = os.environ.get("LLAMA_REWIRE_RPC_MAX_MESSAGE_MIB") or str(SERVER_MAX_MESSAGE_MIB)
        if not value.strip().isdigit():
            raise ValueError(f"LLAMA_REWIRE_RPC_MAX_MESSAGE_MIB must be a whole number, got {value!r}")
        max_message_mib = int(value)
    if not 1 <= max_message_mib <= 1 << 20:
        raise ValueError(f"max_message_mib must be from 1 to {1 << 20}, got {max_message_mib}")
    _core.rpc_serve(f"{host}:{port}", cache_dir, n, round(timeout * 1000), max_message_mib << 20)
    raise RPCServerError(f"the RPC server on {host}:{port} could not start (is the port in use?)")


# -- local server processes (tests, benchmarks, several servers on one machine) ---------------------------


def spawn(port: int, *, host: str = "127.0.0.1", threads: int = 1,
          timeout: float | None = None) -> subprocess.Popen[bytes]:
    """Start ``llama-rewire rpc-server`` in a new process (``timeout``: its
    ``LLAMA_REWIRE_RPC_SERVER_TIMEOUT``). Its idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)
    rather than spin, so that processes sharing cores do not slow each other."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if timeout is not None:
        env["LLAMA_REWIRE_RPC_SERVER_TIMEOUT"] = str(timeout)
    return subprocess.Popen([sys.executable, "-m", "llama_rewire.cli", "rpc-server", "--host", host,
                             "--port", str(port), "--threads", str(threads)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(endpoint: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Wait until ``endpoint`` answers the handshake; a ``RuntimeError`` if ``proc`` exits first, an
    :class:`RPCServerError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the RPC server for {endpoint} exited with {proc.returncode}")
        try:
            probe(endpoint)
            return
        except RPCServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End a server process (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def local_servers(n: int, *, host: str = "127.0.0.1", threads: int = 1) -> Iterator[list[str]]:
    """``n`` rpc-server processes on free ports of ``host``, each answering when this yields their
    endpoints; stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    endpoints: list[str] = []
    try:
        for _ in range(n):
            port = _free_port(host)
            procs.append(spawn(port, host=host, threads=threads))
            endpoints.append(f"{host}:{port}")
        for proc, endpoint in zip(procs, endpoints):
            wait_ready(endpoint, proc)
        yield endpoints
    finally:
        for proc in procs:
            stop(proc)

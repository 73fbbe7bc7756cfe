"""Both ends of llama.cpp's RPC protocol in Python, for hostile and random peers.

The wire format (ggml-rpc.cpp): a request is ``| command (1 byte) | size (uint64) | payload |``, an answer
``| size (uint64) | payload |``; integers are little-endian, structs packed. Only the commands listed in
:data:`ANSWERED` have an answer. A tensor travels as an :data:`TENSOR` struct (296 bytes).

:class:`Client` speaks to a real ``llama-rewire rpc-server`` (allocates buffers, writes and reads tensors,
sends graphs), and can send any bytes; :func:`serves` checks that a server still serves a well-behaved
client (a buffer, a tensor written and read back, a graph computed). :class:`FakeServer` answers a real
client (``Llama(rpc_servers=...)``) from a table of answers that a test can make hostile, or random.
:func:`fuzz_server` sends seeded random and mutated messages to a server.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# commands (enum rpc_cmd)
ALLOC_BUFFER, GET_ALIGNMENT, GET_MAX_SIZE, BUFFER_GET_BASE, FREE_BUFFER, BUFFER_CLEAR = range(6)
SET_TENSOR, SET_TENSOR_HASH, GET_TENSOR, COPY_TENSOR, GRAPH_COMPUTE, GET_DEVICE_MEMORY = range(6, 12)
INIT_TENSOR, GET_ALLOC_SIZE, HELLO, DEVICE_COUNT, GRAPH_RECOMPUTE, MEMSET_TENSOR = range(12, 18)
N_COMMANDS = 18
ANSWERED = {ALLOC_BUFFER, GET_ALIGNMENT, GET_MAX_SIZE, BUFFER_GET_BASE, SET_TENSOR_HASH, GET_TENSOR,
            COPY_TENSOR, GET_DEVICE_MEMORY, GET_ALLOC_SIZE, HELLO, DEVICE_COUNT}
CONN_CAPS = 24

# ggml ids used here
F32, Q4_0, I32 = 0, 2, 26
OP_NONE, OP_ADD, OP_SCALE, OP_MUL_MAT, OP_UNARY, OP_MAP_CUSTOM1, OP_CUSTOM = 0, 2, 32, 29, 91, 92, 95
N_OPS = 101
FLAG_COMPUTE = 16  # a node ggml computes (GGML_TENSOR_FLAG_COMPUTE)
# ADD, SUB, MUL, DIV, SQR, SQRT, LOG, SCALE, MUL_MAT, UNARY, MAP_CUSTOM1, CUSTOM: ops whose kernels' asserts
# the server checks before computing
CHECKED_OPS = (2, 6, 7, 8, 9, 10, 11, OP_SCALE, OP_MUL_MAT, OP_UNARY, OP_MAP_CUSTOM1, OP_CUSTOM)

MAX_SRC = 10
# id, type, buffer, ne[4], nb[4], op, op_params[16], flags, src[10], view_src, view_offs, data, name,
# use_count
TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
assert TENSOR.size == 296


@dataclass
class Tensor:
    id: int
    ne: tuple[int, int, int, int] = (1, 1, 1, 1)
    type: int = F32
    buffer: int = 0
    data: int = 0
    op: int = OP_NONE
    src: tuple[int, ...] = ()
    op_params: tuple[int, ...] = ()
    nb: tuple[int, int, int, int] | None = None
    view_src: int = 0
    view_offs: int = 0
    flags: int | None = None  # None: GGML_TENSOR_FLAG_COMPUTE for an op, else 0

    def strides(self) -> tuple[int, int, int, int]:
        if self.nb is not None:
            return self.nb
        size = 4 if self.type in (F32, I32) else 18  # q4_0: 18 bytes a block of 32
        row = self.ne[0] * size if self.type in (F32, I32) else self.ne[0] // 32 * size
        n1, n2 = row * self.ne[1], row * self.ne[1] * self.ne[2]
        return (size, row & 0xFFFFFFFF, n1 & 0xFFFFFFFF, n2 & 0xFFFFFFFF)

    def pack(self) -> bytes:
        params = list(self.op_params) + [0] * (16 - len(self.op_params))
        src = list(self.src) + [0] * (MAX_SRC - len(self.src))
        flags = self.flags if self.flags is not None else FLAG_COMPUTE if self.op != OP_NONE else 0
        return TENSOR.pack(self.id, self.type, self.buffer, *self.ne, *self.strides(), self.op, *params,
                           flags, *src, self.view_src, self.view_offs, self.data, b"t%d" % self.id, 0)


def graph(nodes: list[int], tensors: list[Tensor], device: int = 0) -> bytes:
    """A GRAPH_COMPUTE payload: | device | n_nodes | node ids | n_tensors | tensors |."""
    return (struct.pack("<II", device, len(nodes)) + struct.pack(f"<{len(nodes)}Q", *nodes)
            + struct.pack("<I", len(tensors)) + b"".join(t.pack() for t in tensors))


def request(cmd: int, payload: bytes) -> bytes:
    return struct.pack("<BQ", cmd, len(payload)) + payload


def hello() -> bytes:
    return request(HELLO, bytes(CONN_CAPS))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError(f"the peer closed the connection ({len(data)} of {n} bytes)")
        data += chunk
    return bytes(data)


class Client:
    """A client of a real RPC server (one connection)."""

    def __init__(self, endpoint: str, timeout: float = 10.0, handshake: bool = True) -> None:
        host, _, port = endpoint.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        if handshake:
            answer = self.call(HELLO, bytes(CONN_CAPS))
            assert len(answer) == 4 + CONN_CAPS, answer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd: int, payload: bytes) -> None:
        self.sock.sendall(request(cmd, payload))

    def call(self, cmd: int, payload: bytes) -> bytes:
        self.send(cmd, payload)
        (size,) = struct.unpack("<Q", recv_exactly(self.sock, 8))
        return recv_exactly(self.sock, size)

    def alloc(self, size: int) -> tuple[int, int, int]:
        """A buffer of ``size`` bytes: its handle, its size and its base address."""
        handle, got = struct.unpack("<QQ", self.call(ALLOC_BUFFER, struct.pack("<IQ", 0, size)))
        (base,) = struct.unpack("<Q", self.call(BUFFER_GET_BASE, struct.pack("<Q", handle)))
        return handle, got, base

    def set_tensor(self, t: Tensor, data: bytes, offset: int = 0) -> None:
        self.send(SET_TENSOR, t.pack() + struct.pack("<BQ", 0, offset) + data)

    def get_tensor(self, t: Tensor, size: int, offset: int = 0) -> bytes:
        return self.call(GET_TENSOR, t.pack() + struct.pack("<QQ", offset, size))

    def closed_by_peer(self, wait: float = 10.0) -> bool:
        """Whether the server closes this connection (within ``wait`` seconds)."""
        self.sock.settimeout(wait)
        try:
            while True:
                if not self.sock.recv(1 << 16):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def serves(endpoint: str, timeout: float = 15.0) -> None:
    """A well-behaved client is served: a buffer, two tensors written, their sum computed and read back."""
    with Client(endpoint, timeout=timeout) as c:
        handle, size, base = c.alloc(4096)
        assert size >= 4096 and base != 0
        a = Tensor(1, ne=(8, 1, 1, 1), buffer=handle, data=base)
        b = Tensor(2, ne=(8, 1, 1, 1), buffer=handle, data=base + 64)
        out = Tensor(3, ne=(8, 1, 1, 1), buffer=handle, data=base + 128, op=OP_ADD, src=(1, 2))
        x = np.arange(8, dtype=np.float32)
        c.set_tensor(a, x.tobytes())
        c.set_tensor(b, (10 * x).tobytes())
        assert c.get_tensor(a, 32) == x.tobytes()
        c.send(GRAPH_COMPUTE, graph([3], [a, b, out]))
        got = np.frombuffer(c.get_tensor(out, 32), dtype=np.float32)
        assert np.array_equal(got, 11 * x), got


# -- a fake server, for a real client ---------------------------------------------------------------------


@dataclass
class Answers:
    """What a :class:`FakeServer` answers; the defaults are those of a well-behaved one-device server.
    ``silent_after`` (a command) stops answering from that command on; ``chooser`` (seeded random answers)
    replaces a command's answer when it returns bytes."""

    device_count: int = 1
    free: int = 1 << 30
    total: int = 1 << 30
    alignment: int = 32
    max_size: int = 1 << 40
    handle: Callable[[int], int] = lambda n: n  # the n-th buffer's handle
    remote_size: Callable[[int], int] = lambda size: size
    base: Callable[[int], int] = lambda handle: ((handle & 0xFFFF) + 1) << 32
    alloc_size: int | None = None  # None: the size the client computed
    silent_after: int | None = None
    chooser: Callable[[int, bytes], bytes | None] | None = None
    commands: list[int] = field(default_factory=list)  # every command received, in order


class FakeServer:
    """A loopback server that speaks the RPC protocol with :class:`Answers` (a thread per connection)."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.n_buffers = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        a = self.answers
        silent = False
        try:
            while True:
                cmd = recv_exactly(conn, 1)[0]
                (size,) = struct.unpack("<Q", recv_exactly(conn, 8))
                payload = recv_exactly(conn, size)
                a.commands.append(cmd)
                if a.silent_after is not None and cmd == a.silent_after:
                    silent = True
                if cmd not in ANSWERED or silent:
                    continue
                answer = a.chooser(cmd, payload) if a.chooser else None
                if answer is None:
                    answer = self._answer(cmd, payload)
                conn.sendall(struct.pack("<Q", len(answer)) + answer)
        except (ConnectionError, OSError):
            return

    def _answer(self, cmd: int, payload: bytes) -> bytes:
        a = self.answers
        if cmd == HELLO:
            from llama_rewire import _core
            return bytes([_core.RPC_PROTO_MAJOR_VERSION, _core.RPC_PROTO_MINOR_VERSION,
                          _core.RPC_PROTO_PATCH_VERSION, 0]) + bytes(CONN_CAPS)
        if cmd == DEVICE_COUNT:
            return struct.pack("<I", a.device_count)
        if cmd == GET_DEVICE_MEMORY:
            return struct.pack("<QQ", a.free, a.total)
        if cmd == GET_ALIGNMENT:
            return struct.pack("<Q", a.alignment)
        if cmd == GET_MAX_SIZE:
            return struct.pack("<Q", a.max_size)
        if cmd == ALLOC_BUFFER:
            _, size = struct.unpack("<IQ", payload)
            self.n_buffers += 1
            return struct.pack("<QQ", a.handle(self.n_buffers), a.remote_size(size))
        if cmd == BUFFER_GET_BASE:
            (handle,) = struct.unpack("<Q", payload)
            return struct.pack("<Q", a.base(handle))
        if cmd == GET_ALLOC_SIZE:
            t = TENSOR.unpack_from(payload, 4)
            ne, nb = t[3:7], t[7:11]
            nbytes = 0 if 0 in ne else nb[0] * ne[0] + sum((n - 1) * s for n, s in zip(ne[1:], nb[1:]))
            return struct.pack("<Q", nbytes if a.alloc_size is None else a.alloc_size)
        if cmd == GET_TENSOR:
            _, size = struct.unpack_from("<QQ", payload, TENSOR.size)
            return bytes(size)
        return bytes(1)  # SET_TENSOR_HASH (not cached), COPY_TENSOR (not copied)


def random_answers(seed: int) -> Answers:
    """Answers that are now and then random: a wrong size, a wrong value, an extreme value."""
    rng = random.Random(seed)

    def choose(cmd: int, payload: bytes) -> bytes | None:
        if cmd == HELLO or rng.random() > 0.15:
            return None
        kind = rng.randrange(4)
        if kind == 0:
            return bytes(rng.randrange(0, 40))  # a size the client does not expect
        width = {DEVICE_COUNT: 4, GET_DEVICE_MEMORY: 16, ALLOC_BUFFER: 16}.get(cmd, 8)
        value = rng.choice([0, 1, 3, 2**31, 2**32 - 1, 2**63, 2**64 - 1, rng.getrandbits(64)])
        return value.to_bytes(8, "little")[:min(width, 8)].ljust(width, b"\xff" if kind == 1 else b"\0")

    return Answers(chooser=choose)


# -- random messages, for a real server -------------------------------------------------------------------


def random_tensor(rng: random.Random, ids: list[int], handle: int, base: int, size: int) -> Tensor:
    """A tensor that is mostly plausible: its memory in the buffer or near it, its sources among ``ids``."""
    ne = tuple(rng.choice([1, 1, 2, 8, 32, rng.randrange(0, 70000), 2**32 - 1]) for _ in range(4))
    type_ = rng.choice([F32, F32, Q4_0, I32, rng.randrange(0, 60)])
    data = rng.choice([base, base + rng.randrange(0, size + 64) // 32 * 32, 0, rng.getrandbits(64)])
    nb = None if rng.random() < 0.7 else tuple(rng.choice([0, 1, 4, 32, 2**31]) for _ in range(4))
    src = tuple(rng.choice([*ids, 0, rng.getrandbits(64)]) if ids else 0 for _ in range(rng.randrange(4)))
    return Tensor(id=rng.choice([len(ids) + 1, len(ids) + 1, rng.getrandbits(64)]), ne=ne, type=type_,
                  buffer=rng.choice([handle, handle, 0, rng.getrandbits(64)]), data=data,
                  op=rng.choice([OP_NONE, OP_ADD, OP_MUL_MAT, OP_SCALE, OP_UNARY, rng.randrange(0, 256)]),
                  src=src, op_params=tuple(rng.randrange(-3, 40) for _ in range(rng.randrange(3))), nb=nb,
                  view_src=rng.choice([0, 0, 0, *ids]), view_offs=rng.choice([0, 64, 2**40]))


def mutated_graph(rng: random.Random, handle: int, base: int, size: int) -> bytes:
    """A graph of one op over two small tensors inside the buffer, with random shapes and types, and an op
    of :data:`CHECKED_OPS`: well-formed, so that it reaches the server's checks of what the CPU kernels
    assert (which mirror those of these ops only)."""
    def shape() -> tuple[int, int, int, int]:
        return (rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4]), rng.choice([1, 2]), 1)

    slot = max(size // 4, 64) // 64 * 64
    a = Tensor(1, ne=shape(), buffer=handle, data=base, type=rng.choice([F32, F32, I32]))
    b = Tensor(2, ne=shape(), buffer=handle, data=base + slot, type=rng.choice([F32, F32, I32]))
    op = rng.choice(CHECKED_OPS)
    out = Tensor(3, ne=shape(), buffer=handle, data=base + 2 * slot, op=op, src=(1, 2)[:rng.randrange(3)],
                 op_params=tuple(rng.randrange(0, 8) for _ in range(rng.randrange(4))))
    return request(GRAPH_COMPUTE, graph([3], [a, b, out]))


def random_message(rng: random.Random, handle: int, base: int, size: int) -> bytes:
    """One random request (a command, its size, its payload), of a kind a client could send or not."""
    kind = rng.randrange(7)
    if kind == 6:
        return mutated_graph(rng, handle, base, size)
    if kind == 0:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
    if kind == 1:  # a command with a random announced size and few bytes
        return struct.pack("<BQ", rng.randrange(0, 256), rng.choice([0, 1, 296, 2**20, 2**40, 2**63,
                                                                      2**64 - 1])) + bytes(rng.randrange(9))
    tensors: list[Tensor] = []
    for _ in range(rng.randrange(1, 6)):
        tensors.append(random_tensor(rng, [t.id for t in tensors], handle, base, size))
    t = tensors[-1]
    if kind == 2:
        nodes = [x.id for x in rng.sample(tensors, rng.randrange(1, len(tensors) + 1))]
        if rng.random() < 0.2:
            nodes.append(rng.choice([0, nodes[0], rng.getrandbits(64)]))
        payload = graph(nodes, tensors, device=rng.choice([0, 0, 0, 1, 2**32 - 1]))
        if rng.random() < 0.2:
            payload = payload[:rng.randrange(len(payload))]
        return request(GRAPH_COMPUTE, payload)
    if kind == 3:
        data = bytes(rng.choice([0, 4, 32, 64, 4096]))
        return request(SET_TENSOR, t.pack() + struct.pack("<BQ", 0, rng.choice([0, 4, size, 2**63])) + data)
    if kind == 4:
        return request(GET_TENSOR, t.pack() + struct.pack("<QQ", rng.choice([0, 4, size]),
                                                          rng.choice([0, 4, 64, size, 2**63])))
    cmd = rng.choice([MEMSET_TENSOR, INIT_TENSOR, COPY_TENSOR, GET_ALLOC_SIZE, BUFFER_CLEAR, FREE_BUFFER,
                      BUFFER_GET_BASE, GRAPH_RECOMPUTE])
    body = {MEMSET_TENSOR: t.pack() + struct.pack("<QQB", rng.choice([0, 4]), rng.choice([4, 2**62]), 1),
            INIT_TENSOR: t.pack(), COPY_TENSOR: t.pack() + tensors[0].pack(),
            GET_ALLOC_SIZE: struct.pack("<I", 0) + t.pack() + b"".join(
                (tensors[0] if i == 0 else Tensor(0)).pack() for i in range(MAX_SRC)),
            BUFFER_CLEAR: struct.pack("<QB", rng.choice([handle, rng.getrandbits(64)]), 0),
            FREE_BUFFER: struct.pack("<Q", rng.choice([handle, rng.getrandbits(64)])),
            BUFFER_GET_BASE: struct.pack("<Q", rng.choice([handle, rng.getrandbits(64)])),
            GRAPH_RECOMPUTE: struct.pack("<I", rng.choice([0, 5]))}[cmd]
    return request(cmd, body)


def fuzz_server(endpoint: str, seed: int, n: int, alive: Callable[[], bool]) -> int:
    """Send ``n`` connections' worth of random messages (each connection: a buffer, then 1 to 4 messages,
    then the end of its stream) to the server at ``endpoint``; ``alive`` says whether its process still
    runs. The number of messages sent; an AssertionError naming the case when the server dies, and an
    exception when it stops serving a well-behaved client."""
    rng = random.Random(seed)
    sent = 0
    for i in range(n):
        with Client(endpoint, timeout=20) as c:
            handle, size, base = c.alloc(rng.choice([256, 4096]))
            for _ in range(rng.randrange(1, 5)):
                try:
                    c.sock.sendall(random_message(rng, handle, base, size))
                except OSError:
                    break
                sent += 1
            with contextlib.suppress(OSError):  # a message cut short is complete: the server decides
                c.sock.shutdown(socket.SHUT_WR)
            assert c.closed_by_peer(wait=20), f"case {i} of seed {seed}: the server kept the connection"
        if not alive():
            raise AssertionError(f"the server died on case {i} of seed {seed}")
        if i % 10 == 9:
            serves(endpoint)
    serves(endpoint)
    return sent


# -- a real client in a child process ---------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from llama_rewire import Llama
    try:
        with Llama(sys.argv[1], rpc_servers=sys.argv[2], n_gpu_layers=-1, n_ctx=64, n_threads=1,
                   verbose=False) as llm:
            llm.eval([1, 2, 3])
        print(json.dumps({"outcome": "ok"}))
    except Exception as e:
        print(json.dumps({"outcome": type(e).__name__, "mro": [k.__name__ for k in type(e).__mro__],
                          "message": str(e)}))
""")


def run_client(model: str, endpoint: str, timeout: float = 120, answer_timeout: float = 2) -> dict[str, Any]:
    """``Llama(model, rpc_servers=endpoint)`` and a decode in a child process (waiting ``answer_timeout``
    seconds for each answer): its outcome (``ok`` or the exception's type, classes and message); an
    AssertionError when the child dies or hangs."""
    env = {**os.environ, "LLAMA_REWIRE_RPC_TIMEOUT": str(answer_timeout)}
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, model, endpoint], capture_output=True, text=True,
                           timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the client hung on {endpoint}") from None
    assert r.returncode == 0, f"the client died ({r.returncode}): {r.stderr[-2000:]}"
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))

"""RPC peers that do not follow the protocol, at both ends (tests/fuzz/rpc_peer.py speaks it in Python).

A real ``llama-rewire rpc-server`` child process gets hostile messages: sizes announced beyond what it can
allocate, headers with nothing after them, clients that idle or say nothing, tensors outside their
buffers, crafted graphs (a node twice, a null node, an unknown op, a custom op's function pointer, a
missing source, mismatched shapes, a partial block, a chain of sources deeper than the stack). Each time
it closes that connection, stays alive and serves a well-behaved client afterwards. It hands out opaque
buffer handles and addresses, not its own. A hostile fake server answers a real client
(``Llama(rpc_servers=...)`` in a child process with a time limit): an alignment that is not a power of
two, a null base, a smaller buffer than asked for, a huge allocation size, a million devices, silence
after the handshake; the client raises a ValueError (RPCServerError, ModelLoadError) or
RPCServerLostError, and neither aborts nor hangs (``llama-rewire serve --rpc_servers`` exits with a
one-line error). Seeded random messages (both directions) keep to the
same properties.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import rpc_peer as rp
from checks import free_port, rss_mib
from rpc_peer import Tensor

from llama_rewire import rpc

SERVER_TIMEOUT = 1.0  # the server under test drops a silent or idle client after this many seconds


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], endpoint: str) -> None:
        self.proc, self.endpoint = proc, endpoint

    def alive(self) -> bool:
        return self.proc.poll() is None

    def refuses(self, c: rp.Client) -> None:
        """The server closed ``c``'s connection, lives on, and serves a well-behaved client."""
        assert c.closed_by_peer(), "the server kept a connection it should have closed"
        c.close()
        assert self.alive(), f"the server died (exit status {self.proc.returncode})"
        rp.serves(self.endpoint)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = rpc.spawn(port, timeout=SERVER_TIMEOUT)
    try:
        rpc.wait_ready(endpoint, proc)
        yield Server(proc, endpoint)
    finally:
        rpc.stop(proc)


@pytest.fixture()
def buf(server: Server) -> Iterator[tuple[rp.Client, int, int]]:
    """A connection with a 4 KiB buffer: (client, handle, base)."""
    c = rp.Client(server.endpoint)
    handle, size, base = c.alloc(4096)
    assert size >= 4096
    try:
        yield c, handle, base
    finally:
        c.close()


# -- the server --------------------------------------------------------------------------------------------


def test_a_well_behaved_client_is_served_with_opaque_handles(server: Server) -> None:
    rp.serves(server.endpoint)
    with rp.Client(server.endpoint) as c:
        handles = [c.alloc(1024) for _ in range(3)]
    # a handle is a small number and a base an address of the server's choosing: no heap address leaks
    assert [h for h, _, _ in handles] == sorted({h for h, _, _ in handles}) and handles[-1][0] < 1 << 20
    assert all(base % (1 << 24) == 0 for _, _, base in handles)


@pytest.mark.parametrize("cmd", [rp.SET_TENSOR, rp.GRAPH_COMPUTE], ids=["SET_TENSOR", "GRAPH_COMPUTE"])
def test_a_size_beyond_what_the_server_can_allocate(server: Server, cmd: int) -> None:
    # 42 bytes: a HELLO, then a header announcing 2^63 bytes (std::length_error killed the server)
    c = rp.Client(server.endpoint, handshake=False)
    c.sock.sendall(rp.hello() + struct.pack("<BQ", cmd, 1 << 63))
    rp.recv_exactly(c.sock, 8 + 4 + rp.CONN_CAPS)
    server.refuses(c)


def test_an_announced_size_is_not_allocated_before_its_bytes_arrive(server: Server) -> None:
    before = rss_mib(server.proc.pid)
    c = rp.Client(server.endpoint)
    c.sock.sendall(struct.pack("<BQ", rp.GRAPH_COMPUTE, 200 << 20))  # 9 bytes, then silence
    time.sleep(0.5 * SERVER_TIMEOUT)
    grown = rss_mib(server.proc.pid) - before
    assert grown < 64, f"the server took {grown:.0f} MiB for a header"  # it zero-filled 200 MiB
    server.refuses(c)  # silent in the middle of a message: dropped after the timeout


def test_an_idle_client_does_not_lock_out_others(server: Server) -> None:
    silent = rp.Client(server.endpoint, handshake=False)  # connects, says nothing
    t = time.monotonic()
    rp.serves(server.endpoint, timeout=10 * SERVER_TIMEOUT)
    idle = rp.Client(server.endpoint)  # shakes hands, then idles
    rp.serves(server.endpoint, timeout=10 * SERVER_TIMEOUT)
    assert time.monotonic() - t < 8 * SERVER_TIMEOUT
    assert idle.closed_by_peer(wait=1) and silent.closed_by_peer(wait=1)
    silent.close()
    idle.close()


def test_an_idle_client_alone_keeps_its_connection(server: Server) -> None:
    with rp.Client(server.endpoint) as c:
        handle, _, base = c.alloc(256)
        time.sleep(3 * SERVER_TIMEOUT)  # nobody else waits: an idle model keeps its server
        t = Tensor(1, ne=(4, 1, 1, 1), buffer=handle, data=base)
        c.set_tensor(t, bytes(range(16)))
        assert c.get_tensor(t, 16) == bytes(range(16))


def test_tensor_regions_outside_the_tensor(server: Server, buf: Any) -> None:
    c, handle, base = buf
    t = Tensor(1, ne=(4, 1, 1, 1), buffer=handle, data=base)
    c.set_tensor(t, bytes(32), offset=0)  # 32 bytes into a 16-byte tensor (inside the buffer): an assert
    server.refuses(c)


def test_a_tensor_read_past_its_end(server: Server, buf: Any) -> None:
    c, handle, base = buf
    c.send(rp.GET_TENSOR, Tensor(1, ne=(4, 1, 1, 1), buffer=handle, data=base).pack()
           + struct.pack("<QQ", 8, 64))
    server.refuses(c)


def test_a_tensor_at_an_address_outside_its_buffer(server: Server, buf: Any) -> None:
    c, handle, base = buf
    c.set_tensor(Tensor(1, ne=(4, 1, 1, 1), buffer=handle, data=base + 4096), bytes(16))
    server.refuses(c)


def crafted_graphs(handle: int, base: int) -> dict[str, Callable[[], bytes]]:
    def t(id_: int, at: int, **kw: Any) -> Tensor:
        return Tensor(id_, ne=kw.pop("ne", (8, 1, 1, 1)), buffer=handle, data=base + at, **kw)

    a, b = t(1, 0), t(2, 64)

    def chain() -> bytes:
        return rp.graph([200_000], [Tensor(1)] + [Tensor(i, op=rp.OP_SCALE, src=(i - 1,))
                                                   for i in range(2, 200_001)])

    cases = {
        # the data of a node beyond its buffer's end (GGML_ASSERT in deserialize_tensor)
        "data outside the buffer": rp.graph([3], [a, b, t(3, 4096, op=rp.OP_ADD, src=(1, 2))]),
        # a node twice (the hash set's ALREADY_EXISTS used as an index)
        "a node twice": rp.graph([3, 3], [a, b, t(3, 128, op=rp.OP_ADD, src=(1, 2))]),
        # node id 0 (a null node computed)
        "a null node": rp.graph([0], [a]),
        # an op number past the last op
        "an unknown op": rp.graph([3], [a, t(3, 128, op=200, src=(1,))]),
        # a custom op: a function pointer taken from the message
        "a custom op": rp.graph([3], [a, t(3, 128, op=rp.OP_MAP_CUSTOM1, src=(1,),
                                           op_params=(0x4141, 0x4141, 1))]),
        # an ADD without its second source
        "a missing source": rp.graph([3], [a, t(3, 128, op=rp.OP_ADD, src=(1,))]),
        # a matrix product of mismatched shapes
        "mismatched shapes": rp.graph([3], [a, t(2, 64, ne=(4, 2, 1, 1)),
                                             t(3, 128, ne=(1, 2, 1, 1), op=rp.OP_MUL_MAT, src=(1, 2))]),
        # a q4_0 row of one element (ggml_row_size asserts)
        "a partial block": rp.graph([3], [t(1, 0, ne=(1, 1, 1, 1), type=rp.Q4_0, nb=(18, 18, 18, 18)),
                                          t(3, 128, op=rp.OP_SCALE, src=(1,))]),
        # a unary op whose kind is out of range
        "an unknown unary op": rp.graph([3], [a, t(3, 128, op=rp.OP_UNARY, src=(1,), op_params=(999,))]),
        # a node whose source is not in the message
        "an unknown source": rp.graph([3], [a, t(3, 128, op=rp.OP_ADD, src=(1, 77))]),
        # a node without memory
        "a node without memory": rp.graph([3], [a, Tensor(3, ne=(8, 1, 1, 1), op=rp.OP_SCALE, src=(1,))]),
        # counts that do not match the message
        "too many nodes": rp.graph([1], [a])[:4] + struct.pack("<I", 1 << 30) + rp.graph([1], [a])[8:],
    }
    out: dict[str, Callable[[], bytes]] = {k: (lambda v=v: v) for k, v in cases.items()}
    # 200000 sources deep (the recursive deserialisation overflowed the stack)
    out["a chain deeper than the stack"] = chain
    return out


CASES = list(crafted_graphs(1, 1 << 24))


@pytest.mark.parametrize("case", CASES)
def test_crafted_graphs_are_refused(server: Server, buf: Any, case: str) -> None:
    c, handle, base = buf
    c.send(rp.GRAPH_COMPUTE, crafted_graphs(handle, base)[case]())
    server.refuses(c)


def test_seeded_random_messages_never_kill_the_server(server: Server) -> None:
    sent = rp.fuzz_server(server.endpoint, seed=20261207, n=60, alive=server.alive)
    assert sent > 60 and server.alive()


# -- the client --------------------------------------------------------------------------------------------


def raises_cleanly(out: dict[str, Any]) -> bool:
    return out["outcome"] != "ok" and bool({"ValueError", "RuntimeError"} & set(out["mro"]))


HOSTILE = {
    "alignment 3": rp.Answers(alignment=3),
    "alignment 0": rp.Answers(alignment=0),
    "base 0": rp.Answers(base=lambda handle: 0),
    "an unaligned base": rp.Answers(base=lambda handle: (1 << 32) + 1),
    "a smaller buffer": rp.Answers(remote_size=lambda size: size // 2),
    "an allocation size of 2^63": rp.Answers(alloc_size=1 << 63),
    "10^6 devices": rp.Answers(device_count=10**6),
    "silence after HELLO": rp.Answers(silent_after=rp.DEVICE_COUNT),
    "silence after the first buffer": rp.Answers(silent_after=rp.BUFFER_GET_BASE),
    "silence at the first graph": rp.Answers(silent_after=rp.GRAPH_COMPUTE),
    "a maximum buffer size of 0": rp.Answers(max_size=0),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_server_is_an_error_not_an_abort(tiny: Any, case: str) -> None:
    path, _ = tiny("llama")
    with rp.FakeServer(HOSTILE[case]) as fake:
        out = rp.run_client(str(path), fake.endpoint)
    assert raises_cleanly(out), out
    assert fake.endpoint in out["message"], out


@pytest.mark.parametrize("case", ["alignment 3", "silence after HELLO", "an allocation size of 2^63"])
def test_serve_with_a_hostile_rpc_server_exits_with_an_error(tiny: Any, case: str) -> None:
    path, _ = tiny("llama")
    env = {**os.environ, "LLAMA_REWIRE_RPC_TIMEOUT": "2"}
    with rp.FakeServer(HOSTILE[case]) as fake:
        try:
            r = subprocess.run([sys.executable, "-m", "llama_rewire.cli", "serve", "--model", str(path),
                                "--rpc_servers", fake.endpoint, "--n_gpu_layers", "-1", "--n_ctx", "64",
                                "--port", str(free_port())],
                               capture_output=True, text=True, timeout=120, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError("serve hung") from None
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "llama-rewire serve: error:" in r.stderr and fake.endpoint in r.stderr, r.stderr[-2000:]


def test_fake_buffer_handles_are_only_handed_back(tiny: Any) -> None:
    # a server's handles are opaque to the client: any value other than 0 works
    path, _ = tiny("llama")
    answers = rp.Answers(handle=lambda n: 0xDEADBEEF00000000 + n)
    with rp.FakeServer(answers) as fake:
        out = rp.run_client(str(path), fake.endpoint)
    assert out["outcome"] == "ok", out
    assert rp.GRAPH_COMPUTE in answers.commands


@pytest.mark.parametrize("seed", range(6))
def test_seeded_random_answers_never_kill_the_client(tiny: Any, seed: int) -> None:
    path, _ = tiny("llama")
    with rp.FakeServer(rp.random_answers(seed)) as fake:
        out = rp.run_client(str(path), fake.endpoint)
    assert out["outcome"] == "ok" or raises_cleanly(out), out

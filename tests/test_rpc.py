"""llama.cpp's RPC backend: a model's layers on ``llama-rewire rpc-server`` processes (two, on loopback).

Split across two servers, and across one server and the local CPU, the logits equal the local run's and
the numpy reference's; a rewired model split across them equals the same wiring run locally, and a new
wiring between decodes applies there too. Endpoints that are malformed, unreachable, not RPC servers or
silent are clear errors before llama.cpp (which would abort the process) sees them. A server killed
between decodes or during a generation is an RPCServerLostError in a process that lives on, and the HTTP
server answers 503 for that model while it serves the others.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy_ref
import pytest
from checks import free_port, logits_of, rel_err
from conftest import EXACT
from serving import running

from llama_rewire import Llama, _core, rpc
from llama_rewire.cli import rpc_server
from llama_rewire.errors import DecodeError, RPCServerLostError
from llama_rewire.server import ModelSettings, Settings, create_app, parse_settings

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12]
# the servers run the same CPU kernels as the local run, on the same machine: only the order in which a
# split graph's pieces meet could move the last bits
TIGHT = 1e-5


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    with rpc.local_servers(2) as endpoints:
        yield endpoints


def remote_bytes(llm: Llama) -> dict[str, int]:
    """Bytes of weights per RPC buffer (the model's buffers whose name says RPC)."""
    return {name: n for name, n in llm.model.buffers().items() if "RPC" in name and n > 0}


def test_split_across_two_servers_matches_the_local_run(tiny: Any, servers: list[str]) -> None:
    path, spec = tiny("llama")
    with Llama(str(path), **EXACT) as local:
        want = logits_of(local, TOKENS)
    with Llama(str(path), rpc_servers=",".join(servers), n_gpu_layers=-1, tensor_split=[1, 1],
               **EXACT) as split:
        assert len(remote_bytes(split)) == 2, split.model.buffers()  # weights on both servers
        got = logits_of(split, TOKENS)
        text = split.create_completion(TOKENS[:4], max_tokens=8, temperature=0)["choices"][0]["text"]
    assert rel_err(got, want) < TIGHT
    assert rel_err(got, numpy_ref.forward(spec, TOKENS)) < 1e-4
    with Llama(str(path), **EXACT) as local:
        assert local.create_completion(TOKENS[:4], max_tokens=8, temperature=0)["choices"][0]["text"] == text


def test_a_moe_model_split_across_two_servers(tiny: Any, servers: list[str]) -> None:
    path, spec = tiny("moe")
    with Llama(str(path), **EXACT) as local:
        want = logits_of(local, TOKENS)
    with Llama(str(path), rpc_servers=servers, n_gpu_layers=-1, **EXACT) as split:
        assert len(remote_bytes(split)) == 2
        got = logits_of(split, TOKENS)
    assert rel_err(got, want) < TIGHT
    assert rel_err(got, numpy_ref.forward(spec, TOKENS)) < 1e-4


def test_split_across_a_server_and_the_local_cpu(tiny: Any, servers: list[str]) -> None:
    path, _ = tiny("gemma3")
    with Llama(str(path), **EXACT) as local:
        want = logits_of(local, TOKENS)
    with Llama(str(path), rpc_servers=servers[1], n_gpu_layers=1, **EXACT) as split:
        buffers = split.model.buffers()
        local_bytes = sum(n for name, n in buffers.items() if name.startswith("CPU"))
        assert len(remote_bytes(split)) == 1 and local_bytes > 0, buffers
        got = logits_of(split, TOKENS)
    assert rel_err(got, want) < TIGHT


def test_a_rewired_model_split_across_servers(tiny: Any, servers: list[str]) -> None:
    path, spec = tiny("llama")
    first, second = "0-1:relu, *:gelu, -1:skip=attn", "*:x*sigmoid(x), 0:ffn_scale=0.5, 1:heads_off=[1]"
    with Llama(str(path), wiring=first, **EXACT) as local:
        want_first = logits_of(local, TOKENS)
        local.set_wiring(second)
        want_second = logits_of(local, TOKENS)
    plain = numpy_ref.forward(spec, TOKENS)
    with Llama(str(path), rpc_servers=servers, n_gpu_layers=-1, wiring=first, **EXACT) as split:
        assert len(remote_bytes(split)) == 2
        got_first = logits_of(split, TOKENS)
        split.set_wiring(second)  # between decodes: the next graph, run remotely, has the new wiring
        got_second = logits_of(split, TOKENS)
    # gelu runs from llama.cpp's fp16 table on every CPU backend, remote or not: same values
    assert rel_err(got_first, want_first) < TIGHT
    assert rel_err(got_second, want_second) < TIGHT
    assert rel_err(want_first, plain) > 1e-2 and rel_err(want_second, plain) > 1e-2  # the wiring did act


def test_several_models_of_one_process_share_a_server(tiny: Any, servers: list[str]) -> None:
    path, _ = tiny("llama")
    with Llama(str(path), rpc_servers=servers[0], n_gpu_layers=-1, **EXACT) as a, \
            Llama(str(path), rpc_servers=servers[0], n_gpu_layers=-1, **EXACT) as b:
        assert rel_err(logits_of(a, TOKENS), logits_of(b, TOKENS)) < TIGHT


@pytest.mark.parametrize("value, message", [
    ("localhost", "is not host:port"),
    (":50052", "is not host:port"),
    ("127.0.0.1:http", "must be a number"),
    ("127.0.0.1:70000", "must be a number from 1 to 65535"),
    ("127.0.0.1:5,127.0.0.1:5", "given twice"),
    ("::1:50052", "is not host:port"),
])
def test_malformed_endpoints(tiny: Any, value: str, message: str) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError, match=message):
        Llama(str(path), rpc_servers=value, n_gpu_layers=-1, **EXACT)


def test_rpc_servers_must_be_a_string(tiny: Any) -> None:
    path, _ = tiny("llama")
    with pytest.raises(TypeError, match="rpc_servers must be a string"):
        Llama(str(path), rpc_servers=50052, **EXACT)  # type: ignore[arg-type]
    assert rpc.parse_endpoints("") == rpc.parse_endpoints(None) == []
    assert rpc.parse_endpoints(" a:1, b:02 ") == ["a:1", "b:2"]
    for bad in ("127.0.0.1:\u00b2", "127.0.0.1:\u0663"):  # Unicode digits (str.isdigit) are no port
        with pytest.raises(ValueError, match="must be a number from 1 to 65535"):
            rpc.parse_endpoints(bad)


def test_an_unreachable_endpoint_is_a_connection_error(tiny: Any) -> None:
    path, _ = tiny("llama")
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError, match=f"rpc_servers: RPC server {endpoint} cannot be reached") as e:
        Llama(str(path), rpc_servers=endpoint, n_gpu_layers=-1, **EXACT)
    assert isinstance(e.value, ValueError)  # a bad argument, to code that catches llama-cpp-python's errors


class FakeServer:
    """A loopback TCP server that answers each connection with ``reply`` (None: says nothing)."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.recv(64)
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_port_that_is_not_an_rpc_server(tiny: Any) -> None:
    path, _ = tiny("llama")
    http = FakeServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(ValueError, match=f"{http.endpoint} is not an RPC server"):
            Llama(str(path), rpc_servers=http.endpoint, n_gpu_layers=-1, **EXACT)
    finally:
        http.close()
    old = FakeServer(bytes([28, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]) + bytes(24))  # protocol 3.0.0
    try:
        with pytest.raises(ValueError, match=r"speaks protocol 3\.0\.0"):
            rpc.probe(old.endpoint)
    finally:
        old.close()
    silent = FakeServer(None)
    try:
        with pytest.raises(ConnectionError, match="did not answer the handshake"):
            rpc.probe(silent.endpoint, timeout=0.5)
    finally:
        silent.close()


def test_rpc_server_command_line() -> None:
    assert rpc_server._loopback("127.0.0.1") and rpc_server._loopback("localhost")
    assert not rpc_server._loopback("0.0.0.0") and not rpc_server._loopback("10.0.0.2")
    for args in (["--port", "0"], ["--port", "70000"], ["--threads", "0"], ["--host", "::1"]):
        r = subprocess.run([sys.executable, "-m", "llama_rewire.cli", "rpc-server", *args],
                           check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "llama-rewire rpc-server:" in r.stderr, (args, r.stderr)
    # a port already taken: the server cannot start, and says so
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "llama_rewire.cli", "rpc-server", "--port", str(port)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "could not start" in r.stderr, r.stderr


def test_serve_takes_rpc_servers() -> None:
    settings = parse_settings(["--model", "m.gguf", "--rpc_servers", "127.0.0.1:50052",
                               "--n_gpu_layers", "-1"])
    kwargs = settings.models[0].llama_kwargs()
    assert kwargs["rpc_servers"] == "127.0.0.1:50052" and kwargs["n_gpu_layers"] == -1


def test_the_probe_leaves_a_real_server_free(servers: list[str]) -> None:
    # the server takes one client at a time: a probe must hang up, or the next client would wait
    for _ in range(3):
        assert rpc.probe(servers[0], timeout=5)[0] == _core.RPC_PROTO_MAJOR_VERSION


# -- a server that goes away -----------------------------------------------------------------------------


@pytest.fixture()
def own_server() -> Iterator[tuple[list[subprocess.Popen[bytes]], str]]:
    """An RPC server of the test's own, to kill: ([its process, and any restarted on its port], endpoint)."""
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    procs = [rpc.spawn(port)]
    try:
        rpc.wait_ready(endpoint, procs[0])
        yield procs, endpoint
    finally:
        for proc in procs:
            rpc.stop(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def no_eos(eos: int) -> Any:
    def ban(ids: Any, logits: Any) -> Any:
        logits[eos] = -np.inf
        return logits
    return ban


def test_a_server_killed_between_decodes(tiny: Any, own_server: Any) -> None:
    procs, endpoint = own_server
    path, _ = tiny("llama")
    with Llama(str(path), **EXACT) as local:
        want = logits_of(local, TOKENS)
    llm = Llama(str(path), rpc_servers=endpoint, n_gpu_layers=-1, **EXACT)
    llm.eval(TOKENS[:4])
    assert llm.rpc_lost is None and llm.rpc_servers == [endpoint]
    kill(procs[0])
    with pytest.raises(RPCServerLostError, match=f"RPC server {endpoint} was lost") as caught:
        llm.eval(TOKENS[4:])
    assert isinstance(caught.value, DecodeError)
    assert llm.rpc_lost == endpoint
    with pytest.raises(RPCServerLostError):  # unusable from now on, and says why
        llm.create_completion(TOKENS[:3], max_tokens=2)
    llm.close()
    # this process lives on: a server restarted on the same port serves a new model
    procs.append(rpc.spawn(int(endpoint.rpartition(":")[2])))
    rpc.wait_ready(endpoint, procs[1])
    with Llama(str(path), rpc_servers=endpoint, n_gpu_layers=-1, **EXACT) as again:
        assert again.rpc_lost is None
        assert rel_err(logits_of(again, TOKENS), want) < TIGHT


def test_a_server_killed_during_a_generation(tiny: Any, own_server: Any) -> None:
    procs, endpoint = own_server
    path, _ = tiny("llama")
    with Llama(str(path), rpc_servers=endpoint, n_gpu_layers=-1, **EXACT) as llm:
        stream = llm.create_completion(TOKENS[:3], max_tokens=40, temperature=0, stream=True,
                                       logits_processor=no_eos(llm.token_eos()))
        next(stream)
        kill(procs[0])
        with pytest.raises(RPCServerLostError, match=endpoint):
            for _ in stream:
                pass
        assert llm.rpc_lost == endpoint


def test_the_http_server_answers_503_for_a_lost_model(tiny: Any, own_server: Any) -> None:
    procs, endpoint = own_server
    path, _ = tiny("llama")
    common = {"model": str(path), "n_ctx": 64, "n_threads": 2}
    settings = Settings(models=[ModelSettings(**common, model_alias="remote", rpc_servers=endpoint,
                                              n_gpu_layers=-1),
                                ModelSettings(**common, model_alias="local")])
    body = {"prompt": "hello", "max_tokens": 4, "temperature": 0}
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/completions", json={**body, "model": "remote"}).status_code == 200
        kill(procs[0])
        for _ in range(2):  # the request that finds the loss, and every later one
            r = client.post("/v1/completions", json={**body, "model": "remote"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "rpc_server_lost" and endpoint in r.json()["error"]["message"]
        assert client.post("/v1/completions", json={**body, "model": "local"}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.real_model
def test_a_real_model_split_across_two_servers(smollm2_path: Any, servers: list[str]) -> None:
    prompt = "The three primary colors are"
    kwargs = {"n_ctx": 256, "n_threads": 2, "verbose": False}
    # the servers keep the layers in plain CPU buffers (nothing is repacked over RPC), so the local run
    # keeps its weights as stored too: on an AMX CPU the repacked kernels give other greedy text
    with Llama(str(smollm2_path), use_extra_bufts=False, **kwargs) as local:
        want = local.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
        local.set_wiring("0-9:relu, 20:skip=ffn")
        want_rewired = local.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
    with Llama(str(smollm2_path), rpc_servers=servers, n_gpu_layers=-1, **kwargs) as split:
        assert len(remote_bytes(split)) == 2
        assert split.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"] == want
        split.set_wiring("0-9:relu, 20:skip=ffn")
        got = split.create_completion(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
    assert got == want_rewired != want

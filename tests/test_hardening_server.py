"""The server against hostile or careless input and configuration: a refused steering leaves the model as
it was, request bodies and prompts are bounded and rejected ones leave no memory behind, a key-less local
server answers loopback Host names and local pages only, a client that leaves stops its generation; and
its parity with llama-cpp-python's server (sampling defaults, model names, boolean flags).

Every server here serves a tiny generated model (or a fake one) on a loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from checks import free_port, rss_mib
from pydantic import ValidationError
from serving import running, wait_until_up

from llama_rewire import Llama
from llama_rewire.residual import ControlVector
from llama_rewire.server import ModelSettings, Settings, create_app, parse_settings
from llama_rewire.server.errors import APIError
from llama_rewire.server.limits import MAX_TOKENIZE_BYTES
from llama_rewire.server.middleware import HANDS_MEMORY_BACK
from llama_rewire.server.pool import ModelPool, ServedModel, select_alias
from llama_rewire.server.schemas import SAMPLING_DEFAULTS
from llama_rewire.server.settings import DEFAULT_MAX_BODY_BYTES
from llama_rewire.server.steering import Steering

N_EMBD = 64  # the tiny llama's width
GREEDY = {"prompt": "hello world", "max_tokens": 6, "temperature": 0}


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return cast(dict[str, Any], error)


def text_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text[:500]
    return cast(str, r.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def tiny_path(tiny: Any) -> Path:
    return cast(Path, tiny("llama")[0])


# -- steering: a refused request changes nothing ---------------------------------------------------------


@pytest.fixture(scope="module")
def steering_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vectors")
    rng = np.random.default_rng(0)
    directions = {il: rng.uniform(-1, 1, N_EMBD).astype(np.float32) for il in (1, 2)}
    directions[1][0] = 2.0  # the largest value
    ControlVector(directions, "llama").save(d / "v.gguf")
    big = {il: (rng.standard_normal(N_EMBD) * 1e30).astype(np.float32) for il in (1, 2)}
    ControlVector(big, "llama").save(d / "big.gguf")  # finite, but alpha 1e9 overflows float32
    os.symlink(d / "loop.gguf", d / "loop.gguf")  # a link to itself
    return d


@pytest.fixture(scope="module")
def steer_url(tiny_path: Path, steering_dir: Path) -> Iterator[str]:
    settings = Settings(steering_dir=str(steering_dir),
                        models=[ModelSettings(model=str(tiny_path), n_ctx=64)])
    with running(create_app(settings)) as url:
        yield url


def test_a_refused_steering_leaves_the_model_as_it_was(steer_url: str) -> None:
    url = f"{steer_url}/v1/completions"
    baseline = text_of(httpx.post(url, json=GREEDY))
    for steer in ({"vector": "v.gguf", "alpha": 1e308},  # a double, beyond float32
                  {"vector": "big.gguf", "alpha": 1e9},  # alpha * v beyond float32
                  {"vector": "v.gguf", "alpha": 2e38, "layers": [1]}):  # 2 * 2e38
        for path in ("/v1/completions", "/v1/chat/completions"):
            body = {**GREEDY, "messages": [{"role": "user", "content": "hi"}], "steer": steer}
            error = error_of(httpx.post(f"{steer_url}{path}", json=body), 400)
            assert error["param"] == "steer.alpha", error
        # every later request is served as before
        assert text_of(httpx.post(url, json=GREEDY)) == baseline
    steered = text_of(httpx.post(url, json={**GREEDY, "steer": {"vector": "v.gguf", "alpha": 40.0}}))
    assert steered != baseline
    assert text_of(httpx.post(url, json=GREEDY)) == baseline


class EditsLlama:
    """A stand-in that stores the steering before refusing it, as a non-transactional setter would."""

    def __init__(self, error: Exception, refuse_restore: bool = False) -> None:
        self.edits: tuple[Any, ...] = ("earlier",)
        self.error = error
        self.refuse_restore = refuse_restore
        self.cleared = False

    def set_steering(self, vector: Any, alpha: float, **kwargs: Any) -> None:
        self.edits = ("steer", alpha)
        raise self.error

    def set_edits(self, edits: list[Any]) -> None:
        if self.refuse_restore and edits:
            raise ValueError("refused")
        self.cleared = not edits
        self.edits = tuple(edits)


def test_applying_steering_is_all_or_nothing() -> None:
    vector = ControlVector({1: np.ones(N_EMBD, dtype=np.float32)}, "llama")
    steering = Steering("v.gguf", vector, 3.0, None, "all")
    llm = EditsLlama(ValueError("a value the model refuses"))
    with pytest.raises(APIError) as info:
        steering.apply(cast(Llama, llm))
    assert info.value.status == 400 and info.value.param == "steer"
    assert llm.edits == ("earlier",)
    llm = EditsLlama(RuntimeError("the engine broke"))
    with pytest.raises(RuntimeError, match="engine broke"):
        steering.apply(cast(Llama, llm))
    assert llm.edits == ("earlier",)
    # edits that cannot be put back are cleared rather than left steering every later request
    llm = EditsLlama(ValueError("refused"), refuse_restore=True)
    with pytest.raises(APIError):
        steering.apply(cast(Llama, llm))
    assert llm.edits == () and llm.cleared


@pytest.mark.parametrize("name", ["x" * 300, "y" * 5000, "loop.gguf", "a/" * 600 + "b.gguf"],
                         ids=["long-part", "very-long", "link-loop", "deep"])
def test_long_or_looping_vector_names_are_a_400(steer_url: str, name: str) -> None:
    body = {**GREEDY, "steer": {"vector": name, "alpha": 1.0}}
    error = error_of(httpx.post(f"{steer_url}/v1/completions", json=body), 400)
    assert error["param"] == "steer.vector"
    assert text_of(httpx.post(f"{steer_url}/v1/completions", json=GREEDY))


def test_a_vector_name_that_is_not_unicode_text_is_a_400(steer_url: str) -> None:
    body = json.dumps({**GREEDY, "steer": {"vector": "x", "alpha": 1.0}}).replace('"x"', '"\\ud800.gguf"')
    r = httpx.post(f"{steer_url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
    error = error_of(r, 400)  # was a 500 (UnicodeEncodeError)
    assert error["param"] == "steer.vector" and "Unicode" in error["message"]


def test_a_grammar_that_is_not_unicode_text_is_a_400(steer_url: str) -> None:
    body = json.dumps({**GREEDY, "grammar": 'root ::= "x"'}).replace('\\"x\\"', '\\"\\ud800\\"')
    r = httpx.post(f"{steer_url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert "not valid Unicode" in error_of(r, 400)["message"]
    assert text_of(httpx.post(f"{steer_url}/v1/completions", json=GREEDY))


# -- request size -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body_url(tiny_path: Path) -> Iterator[str]:
    settings = Settings(max_body_bytes=64 << 10, models=[ModelSettings(model=str(tiny_path), n_ctx=64)])
    with running(create_app(settings)) as url:
        yield url


def raw_exchange(url: str, head: str, chunks: Iterable[bytes] = ()) -> str:
    """Send ``head`` (and then ``chunks`` while the server reads) on a plain socket; the response's head."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:  # the server answered and closed the connection half-way
            pass
        received = b""
        while b"\r\n\r\n" not in received:
            data = s.recv(65536)
            if not data:
                break
            received += data
    return received.decode("latin-1")


def test_a_body_over_the_limit_is_a_413(small_body_url: str) -> None:
    url = small_body_url
    head = ("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n")
    # announced: answered before any of the body is sent
    assert raw_exchange(url, head).startswith("HTTP/1.1 413")
    # streamed without a length: answered once the bytes read pass the limit
    head = ("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 16384
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(64))
    assert raw_exchange(url, head, chunks).startswith("HTTP/1.1 413")
    r = httpx.post(f"{url}/v1/completions", json={**GREEDY, "padding": "x" * (80 << 10)})
    assert error_of(r, 413)["code"] == "request_too_large"
    # under the limit, also streamed in pieces
    assert text_of(httpx.post(f"{url}/v1/completions", json={**GREEDY, "padding": "x" * (60 << 10)}))
    payload = json.dumps(GREEDY).encode()
    r = httpx.post(f"{url}/v1/completions", content=iter([payload[:5], payload[5:]]),
                   headers={"Content-Type": "application/json"})
    assert text_of(r)
    assert Settings(models=[ModelSettings()]).max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 << 20
    assert parse_settings(["--max_body_bytes", "4096"]).max_body_bytes == 4096
    assert parse_settings(["--max-body-bytes", "4096"]).max_body_bytes == 4096


def test_a_bad_sampling_value_names_its_field(small_body_url: str) -> None:
    for path, body in (("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        for field, value in (("temperature", 1e39), ("top_p", -1e39), ("logit_bias", {"5": 1e39})):
            request = {**body, field: value, "max_tokens": 1}
            error = error_of(httpx.post(f"{small_body_url}{path}", json=request), 400)
            assert error["param"] == field, (path, field, error)


def test_inputs_that_cannot_fit_are_refused_before_any_work(small_body_url: str, tiny_path: Path) -> None:
    llm = Llama(str(tiny_path), n_ctx=64, verbose=False)
    n_vocab, n_ctx = llm.n_vocab(), llm.n_ctx()
    llm.close()
    url = small_body_url
    bias = {str(i): 1.0 for i in range(n_vocab + 1)}
    for path, body in (("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        error = error_of(httpx.post(f"{url}{path}", json={**body, "logit_bias": bias}), 400)
        assert error["param"] == "logit_bias" and "more than the model's" in error["message"]
    # text that no n_ctx tokens of this vocabulary can stand for: refused without tokenizing it
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": "ab " * 20000}), 400)
    assert error["code"] == "context_length_exceeded" and "no token of this model" in error["message"]
    chat = {"messages": [{"role": "user", "content": "ab " * 20000}]}
    error = error_of(httpx.post(f"{url}/v1/chat/completions", json=chat), 400)
    assert error["param"] == "messages" and "no token of this model" in error["message"]
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": [5] * 5000}), 400)
    assert error["code"] == "context_length_exceeded" and f"of {n_ctx} tokens" in error["message"]
    assert text_of(httpx.post(f"{url}/v1/completions", json=GREEDY))


def test_tokenize_takes_at_most_a_mebibyte(steer_url: str) -> None:
    # a tokenizer's pre-split of long runs of spaces is slower than linear: 14 MB held a server 82 s
    big = " " * (MAX_TOKENIZE_BYTES + 1)
    for path in ("/extras/tokenize", "/extras/tokenize/count"):
        assert error_of(httpx.post(f"{steer_url}{path}", json={"input": big}), 400)["param"] == "input"
        assert httpx.post(f"{steer_url}{path}", json={"input": "hello"}).status_code == 200


CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import uvicorn
from llama_rewire.server import ModelSettings, Settings, create_app
settings = Settings(models=[ModelSettings(model=sys.argv[1], n_ctx=64)])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""


@contextlib.contextmanager
def child_server(model: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[str]]]:
    """A server on ``model`` in a child process (its RSS is its own): a client to it, and the process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(proc, url)
        except AssertionError:
            if proc.poll() is not None:  # it exited: say why
                raise AssertionError(proc.communicate()[1]) from None
            raise
        with httpx.Client(base_url=url, timeout=120, headers={"Content-Type": "application/json"}) as c:
            yield c, proc
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the child's RSS from /proc")
def test_rejected_big_bodies_leave_no_memory_behind(tiny_path: Path) -> None:
    n = 300_000
    bodies = {  # each ~4 MB, each answered 400
        "/v1/completions": [
            {"prompt": "hi", "logit_bias": {str(i): 1.0 for i in range(n)}},  # more entries than tokens
            {"prompt": "hi", "logit_bias": {str(i): 1.0 for i in range(200)} | {"x": 1.0}},
            # refused by the model call itself (a token id out of range), with a large field alongside
            {"prompt": "hi", "stop": [f"s{i}" for i in range(n)], "logit_bias": {"99999": 1.0}},
            {"prompt": "ab " * (n * 4)},
            {"prompt": "ab " * (n * 4), "max_tokens": -1},  # a validation error
        ],
        "/v1/chat/completions": [{"messages": [{"role": "user", "content": "ab " * (n * 4)}]}],
    }
    payloads = [(path, json.dumps(body).encode()) for path, group in bodies.items() for body in group]
    with child_server(tiny_path) as (c, proc):
        def send_all() -> None:
            for path, payload in payloads:
                r = c.post(path, content=payload)
                assert r.status_code == 400, r.text[:300]

        send_all()  # the allocator's high-water mark
        before = rss_mib(proc.pid)
        for _ in range(4):
            send_all()
        after = rss_mib(proc.pid)
        assert c.post("/v1/completions", json=GREEDY).status_code == 200
    # each rejected body used to leave ~50 MiB behind: 20 of them, about 1 GiB
    assert after - before < 80, (before, after)


FRAGMENTS = """
import sys
from llama_rewire.server.middleware import release_freed_memory
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
blocks = [bytes(1000) for _ in range(200_000)]  # 200 MB of malloc'd chunks (over pymalloc's 512 bytes)
kept = blocks[::64]  # one in 64 stays: the free runs between them are not at the heap's top
del blocks
before = rss()
released = release_freed_memory()
print(before, rss(), released)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
@pytest.mark.skipif(not HANDS_MEMORY_BACK, reason="needs glibc's malloc_trim: other C libraries keep their "
                    "own policy for freed pages")
def test_freed_memory_goes_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTS], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, released = out.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 100, out.stdout  # of the ~190 MB freed between the survivors


LARGE_BLOCKS = """
import sys
from llama_rewire.server.middleware import keep_large_blocks_mapped
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
if sys.argv[1] == "fixed":
    assert keep_large_blocks_mapped()
big = bytearray(20 << 20)  # a 20 MB body, in a mapping of its own
del big  # glibc raises its mmap threshold to 20 MB as it frees it
start = rss()
blocks = []
for i in range(100):
    blocks.append(b"x" * (1 << 20))  # the blocks of a big request, written
    blocks.append(bytes(600))  # a survivor between them
kept = blocks[1::2]
del blocks
print(rss() - start)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
@pytest.mark.skipif(not HANDS_MEMORY_BACK, reason="needs glibc's allocator: others keep their own policy")
def test_large_blocks_keep_mappings_of_their_own() -> None:
    def retained(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", LARGE_BLOCKS, mode], check=False, capture_output=True,
                             text=True, timeout=120, env={**os.environ, "GLIBC_TUNABLES": ""})
        assert out.returncode == 0, out.stderr
        return float(out.stdout)

    assert retained("dynamic") > 10  # of the 100 MB freed, with the threshold moving
    assert retained("fixed") < 5
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1000000"}
    code = "from llama_rewire.server.middleware import keep_large_blocks_mapped as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False"  # the user's own setting stays


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the server's environment")
@pytest.mark.skipif(not HANDS_MEMORY_BACK, reason="needs glibc's allocator: others keep their own policy")
def test_the_server_process_runs_on_the_c_allocator(tiny_path: Path) -> None:
    """pymalloc's arenas fragmented under bursts of small objects (26 to 50 arenas in a soak, objects
    level); the server re-executes itself, same pid, with PYTHONMALLOC=malloc unless that is set."""
    def environ_of_a_server(**env: str) -> dict[str, str]:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
        proc = subprocess.Popen([sys.executable, "-m", "llama_rewire.server", "--model", str(tiny_path),
                                 "--n_ctx", "64", "--port", str(port)], env={**base, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_up(proc, f"http://127.0.0.1:{port}")
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes()  # the same pid: exec, not a child
            items = raw.decode(errors="replace").split("\0")
            return dict(item.split("=", 1) for item in items if "=" in item)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    assert environ_of_a_server().get("PYTHONMALLOC") == "malloc"
    assert environ_of_a_server(PYTHONMALLOC="pymalloc").get("PYTHONMALLOC") == "pymalloc"


def test_a_big_body_hands_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from llama_rewire.server import middleware

    calls: list[int] = []
    monkeypatch.setattr(middleware, "release_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(middleware, "HANDS_MEMORY_BACK", True)

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"n": len(await request.body())})

    routes = [Route("/", echo, methods=["POST"])]
    app = middleware.BodyLimitMiddleware(Starlette(routes=routes), limit=4 << 20)
    with TestClient(app) as client:
        assert client.post("/", content=b"x" * 1000).json() == {"n": 1000}
        assert calls == []  # a small body: nothing to hand back
        assert client.post("/", content=b"x" * (2 << 20)).json() == {"n": 2 << 20}
        assert calls == [1]
        assert client.post("/", content=b"x" * (5 << 20)).status_code == 413  # refused unread
        assert calls == [1]


# -- configuration: key, Host, CORS, paths -------------------------------------------------------------------


def test_an_empty_api_key_is_an_error_at_start(tiny_path: Path) -> None:
    for key in ("", "  "):
        with pytest.raises(ValidationError, match="API key is empty"):
            Settings(api_key=key, models=[ModelSettings(model=str(tiny_path))])
        with pytest.raises(SystemExit):
            parse_settings(["--model", str(tiny_path), "--api_key", key])
    run = subprocess.run([sys.executable, "-m", "llama_rewire.server", "--model", str(tiny_path), "--api_key",
                          "", "--port", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "API key is empty" in run.stderr


def test_a_key_of_any_characters_matches_as_utf8(tiny_path: Path) -> None:
    key = "sk-tést ключ"
    settings = Settings(api_key=key, models=[ModelSettings(model=str(tiny_path), n_ctx=64)])
    with running(create_app(settings)) as url:
        headers = {"Authorization": b"Bearer " + key.encode("utf-8")}
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200
        wrong = {"Authorization": b"Bearer sk-t\xc3\xa9st"}
        assert httpx.get(f"{url}/v1/models", headers=wrong).status_code == 401
        latin1 = {"Authorization": b"Bearer " + key.encode("utf-8").decode("latin-1").encode("utf-8")}
        assert httpx.get(f"{url}/v1/models", headers=latin1).status_code == 401


def test_no_server_path_is_disclosed(tiny_path: Path) -> None:
    settings = Settings(api_key="k", models=[ModelSettings(model=str(tiny_path), n_ctx=64)])
    assert settings.models[0].alias == tiny_path.name
    with running(create_app(settings)) as url:
        keyed = {"Authorization": "Bearer k"}
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # no names, no slots
        assert list(httpx.get(f"{url}/health", headers=keyed).json()["models"]) == [tiny_path.name]
        models = httpx.get(f"{url}/v1/models", headers=keyed)
        completion = httpx.post(f"{url}/v1/completions", json=GREEDY, headers=keyed)
        for r in (health, models, completion):
            assert str(tiny_path.parent) not in r.text
        assert completion.json()["model"] == tiny_path.name


@pytest.fixture(scope="module")
def plain_settings(tiny_path: Path) -> dict[str, Any]:
    return {"models": [ModelSettings(model=str(tiny_path), n_ctx=64)]}


def test_a_loopback_server_answers_loopback_host_names_only(plain_settings: dict[str, Any]) -> None:
    with running(create_app(Settings(**plain_settings))) as url:  # host: localhost
        port = url.rsplit(":", 1)[1]
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:80", "app.localhost"):
            assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "10.0.0.1",
                     "localhost.attacker.example"):
            error = error_of(httpx.get(f"{url}/v1/models", headers={"Host": host}), 400)
            assert error["code"] == "host_not_allowed", host
            r = httpx.post(f"{url}/v1/completions", json=GREEDY, headers={"Host": host})
            assert r.status_code == 400
    settings = Settings(allowed_hosts="box.lan, other.lan", **plain_settings)
    with running(create_app(settings)) as url:
        assert httpx.get(f"{url}/v1/models", headers={"Host": "box.lan:8000"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"Host": "attacker.example"}).status_code == 400
    for settings in (Settings(allowed_hosts="*", **plain_settings),
                     Settings(host="0.0.0.0", **plain_settings)):
        with running(create_app(settings)) as url:
            assert httpx.get(f"{url}/v1/models", headers={"Host": "box.lan"}).status_code == 200


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(f"{url}/v1/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})


def test_cors_origins(plain_settings: dict[str, Any]) -> None:
    with running(create_app(Settings(**plain_settings))) as url:  # no key: pages on localhost only
        for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "https://localhost"):
            r = preflight(url, origin)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, origin
        r = preflight(url, "https://attacker.example")
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = httpx.get(f"{url}/v1/models", headers={"Origin": "https://attacker.example"})
        assert "access-control-allow-origin" not in r.headers
    with running(create_app(Settings(api_key="k", **plain_settings))) as url:  # a key: any page
        r = preflight(url, "https://attacker.example")
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] in ("*", "https://attacker.example")
        r = httpx.get(f"{url}/v1/models", headers={"Origin": "https://attacker.example"})
        assert r.status_code == 401
    settings = Settings(cors_origins="https://app.example", **plain_settings)
    with running(create_app(settings)) as url:
        assert preflight(url, "https://app.example").status_code == 200
        assert preflight(url, "http://localhost:3000").status_code == 400
    with running(create_app(Settings(cors_origins="*", **plain_settings))) as url:
        assert preflight(url, "https://attacker.example").status_code == 200


# -- a fake model: what each call is given, and a generation that runs until stopped -------------------------


class RecordingLlama:
    """Records the keyword arguments of each call; the prompt "slow" generates until its stopping
    criteria say stop (or 10 s pass)."""

    rpc_lost = None

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.slow_done = threading.Event()
        self.slow_stopped = False

    def create_completion(self, prompt: str, stream: bool = False, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if prompt == "slow":
            stop = kwargs.get("stopping_criteria")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if stop is not None and stop(np.zeros(1, np.intc), np.zeros(1, np.single)):
                    self.slow_stopped = True
                    break
                time.sleep(0.01)
            self.slow_done.set()
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "x",
                "choices": [{"text": "ok", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def create_chat_completion(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return {"id": "chat-fake", "object": "chat.completion", "created": 0, "model": "x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def close(self) -> None:
        pass


@pytest.fixture()
def fake() -> Iterator[tuple[str, RecordingLlama]]:
    llm = RecordingLlama()
    settings = ModelSettings(model="fake.gguf", model_alias="fake")
    pool = ModelPool([ServedModel(settings, cast(Llama, llm))])
    with running(create_app(Settings(models=[settings]), pool=pool)) as url:
        yield url, llm


def test_omitted_sampling_fields_take_llama_cpp_pythons_server_defaults(
        fake: tuple[str, RecordingLlama]) -> None:
    url, llm = fake
    expected = {"temperature": 0.8, "top_p": 0.95, "min_p": 0.05, "top_k": 40, "repeat_penalty": 1.1,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, "mirostat_mode": 0, "mirostat_tau": 5.0,
                "mirostat_eta": 0.1}
    assert expected == SAMPLING_DEFAULTS
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "x"}).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "x"}]}).status_code == 200
    for call in llm.calls:
        assert {k: call[k] for k in expected} == expected
    given = {"temperature": 0.0, "top_k": 5, "repeat_penalty": 1.0}
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "x", **given}).status_code == 200
    assert {k: llm.calls[-1][k] for k in given} == given


def test_a_non_streamed_request_stops_when_its_client_leaves(fake: tuple[str, RecordingLlama]) -> None:
    url, llm = fake
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json={"prompt": "slow"}, timeout=0.5)
    assert llm.slow_done.wait(3), "the generation ran on after its client left"
    assert llm.slow_stopped
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=5).status_code == 200


def test_a_non_streamed_request_on_the_model_stops_when_its_client_leaves(tiny_path: Path) -> None:
    """The same on a real (tiny) model: a generation of thousands of tokens ends soon after its client
    leaves, so that the next request does not wait for it."""
    settings = Settings(models=[ModelSettings(model=str(tiny_path), n_ctx=8192, n_threads=1)])
    app = create_app(settings)
    llm = app.state.pool.get(None).llama
    bias = {str(llm.token_eos()): -1e9}
    with running(app) as url:
        body = {"prompt": "hello", "max_tokens": 8000, "temperature": 0, "logit_bias": bias}
        started = time.monotonic()
        full = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 400}, timeout=60)
        per_token = (time.monotonic() - started) / 400
        assert full.status_code == 200 and full.json()["usage"]["completion_tokens"] == 400
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        started = time.monotonic()
        assert httpx.post(f"{url}/v1/completions", json=GREEDY, timeout=120).status_code == 200
        waited = time.monotonic() - started
    # the abandoned generation would have taken 8000 tokens' time
    assert waited < min(2 + 200 * per_token, 8000 * per_token / 2), (waited, per_token)


# -- model names and the command line ---------------------------------------------------------------------


def test_model_names(tiny_path: Path) -> None:
    assert select_alias("gpt-4o", ["only"]) == "only"
    assert select_alias(None, ["a", "b"]) == "a" and select_alias("b", ["a", "b"]) == "b"
    with pytest.raises(APIError, match="does not exist"):
        select_alias("c", ["a", "b"])
    one = Settings(models=[ModelSettings(model=str(tiny_path), n_ctx=64, model_alias="tiny")])
    with running(create_app(one)) as url:
        r = httpx.post(f"{url}/v1/completions", json={**GREEDY, "model": "gpt-3.5-turbo"})
        assert text_of(r) and r.json()["model"] == "tiny"
    two = Settings(models=[ModelSettings(model=str(tiny_path), n_ctx=64, model_alias="a"),
                           ModelSettings(model=str(tiny_path), n_ctx=64, model_alias="b")])
    with running(create_app(two)) as url:
        assert error_of(httpx.post(f"{url}/v1/completions", json={**GREEDY, "model": "c"}), 404)
        assert httpx.post(f"{url}/v1/completions", json={**GREEDY, "model": "b"}).json()["model"] == "b"


def test_boolean_flags_take_a_value_as_llama_cpp_python_does() -> None:
    (m,) = parse_settings(["--model", "m.gguf", "--embedding", "true", "--flash_attn", "False",
                           "--verbose=yes", "--logits-all", "0", "--use_extra_bufts", "off"]).models
    assert (m.model, m.embedding, m.flash_attn, m.verbose, m.logits_all, m.use_extra_bufts) == (
        "m.gguf", True, False, True, False, False)
    (m,) = parse_settings(["--embedding", "1", "m.gguf"]).models
    assert (m.model, m.embedding) == ("m.gguf", True)
    (m,) = parse_settings(["--embedding", "m.gguf"]).models  # the bare flag, then the model
    assert (m.model, m.embedding) == ("m.gguf", True)
    (m,) = parse_settings(["m.gguf", "--flash_attn", "--no-embedding"]).models
    assert (m.flash_attn, m.embedding) == (True, False)
    with pytest.raises(SystemExit):
        parse_settings(["m.gguf", "--embedding=maybe"])

"""The OpenAI-compatible server, run for real on a loopback port and driven with httpx and openai.

One server per module serves the demo model three times: "orig" (its own activations), "relu" (every
layer rewired to ReLU) and "emb" (for embeddings). A second, model-free server with a fake model
checks what a real model cannot be made to do on demand (an unexpected error, a slow endless stream).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from serving import running, wait_until_up

from llama_rewire import Llama
from llama_rewire.errors import (
    ActivationSpecError,
    ContextOverflowError,
    DecodeError,
    GrammarError,
    WiringSpecError,
)
from llama_rewire.server import ModelSettings, Settings, create_app, parse_settings
from llama_rewire.server import main as server_main
from llama_rewire.server.errors import APIError, from_exception
from llama_rewire.server.pool import ModelPool, ServedModel, select_alias

pytestmark = pytest.mark.real_model

KEY = "test-key"
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_tokens": 10}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_url(smollm2_path: Path) -> Iterator[str]:
    common = {"model": str(smollm2_path), "n_ctx": 512, "seed": 1234}
    settings = Settings(api_key=KEY, models=[
        ModelSettings(**common, model_alias="orig"),
        ModelSettings(**common, model_alias="relu", activations="*:relu"),
        ModelSettings(**common, model_alias="emb", embedding=True, pooling_type=1),  # mean
    ])
    with running(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def events(response: httpx.Response) -> list[str]:
    """The data of each server-sent event."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        data = events(r)
    return [json.loads(d) for d in data if d != "[DONE]"], data


def complete(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY, **body})
    assert r.status_code == 200, r.text
    return cast(dict[str, Any], r.json())


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return cast(dict[str, Any], error)


# -- endpoints ------------------------------------------------------------------------------------


def test_health_and_models(client: httpx.Client, base_url: str) -> None:
    # no key needed to learn that the server is up; the slots and models only with the key
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    health = client.get("/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"orig", "relu", "emb"}
    assert health["slots_idle"] == 3 and health["slots_processing"] == 0
    assert health["models"]["orig"] == {"n_parallel": 1, "slots_idle": 1, "slots_processing": 0, "queue": 0}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["orig", "relu", "emb"]
    assert all(m["object"] == "model" for m in models["data"])


def test_completion(client: httpx.Client) -> None:
    out = complete(client, model="orig")
    assert out["object"] == "text_completion"
    assert out["model"] == "orig"
    choice = out["choices"][0]
    assert choice["text"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["completion_tokens"] <= 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the model field may be left out: the first model serves it
    assert complete(client)["choices"][0]["text"] == choice["text"]


def test_streamed_completion_is_the_same_text(client: httpx.Client) -> None:
    whole = complete(client, model="orig")
    chunks, data = stream(client, "/v1/completions", {"model": "orig", "prompt": PROMPT, **GREEDY})
    assert data[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["object"] == "text_completion" and c["model"] == "orig" for c in chunks)
    assert all("usage" not in c for c in chunks)


def test_stream_include_usage(client: httpx.Client) -> None:
    whole = complete(client, model="relu")
    body = {"model": "relu", "prompt": PROMPT, **GREEDY, "stream_options": {"include_usage": True}}
    chunks, data = stream(client, "/v1/completions", body)
    assert data[-1] == "[DONE]"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole["choices"][0]["text"]


def test_the_original_and_the_rewired_model_side_by_side(client: httpx.Client) -> None:
    orig = complete(client, model="orig")["choices"][0]["text"]
    relu = complete(client, model="relu")["choices"][0]["text"]
    assert orig != relu
    assert complete(client, model="orig")["choices"][0]["text"] == orig  # no state leaks between models


def test_chat_completion(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "orig", "messages": CHAT, **GREEDY})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["model"] == "orig"
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    body = {"model": "orig", "messages": CHAT, **GREEDY, "stream_options": {"include_usage": True}}
    chunks, data = stream(client, "/v1/chat/completions", body)
    assert data[-1] == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == message["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"]
    short = client.post("/v1/chat/completions", json={"messages": CHAT, "max_completion_tokens": 2})
    assert short.status_code == 200, short.text
    assert short.json()["usage"]["completion_tokens"] <= 2


def test_embeddings(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"model": "emb", "input": ["hello", "world"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "list" and out["model"] == "emb"
    vectors = [d["embedding"] for d in out["data"]]
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert len(vectors[0]) == len(vectors[1]) == 576  # SmolLM2-135M's n_embd
    assert vectors[0] != vectors[1]
    r = client.post("/v1/embeddings", json={"model": "emb", "input": "hello", "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vectors[0], rtol=1e-6)
    # a model loaded without embedding=true does not serve them
    error = error_of(client.post("/v1/embeddings", json={"model": "orig", "input": "hello"}), 400)
    assert error["param"] == "model"


def test_tokenize_and_detokenize(client: httpx.Client) -> None:
    r = client.post("/extras/tokenize", json={"input": "Hello world", "model": "orig"})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    count = client.post("/extras/tokenize/count", json={"input": "Hello world"}).json()
    assert count == {"count": len(tokens)}
    r = client.post("/extras/detokenize", json={"tokens": tokens})
    assert r.status_code == 200, r.text
    assert r.json()["text"].endswith("Hello world")
    error_of(client.post("/extras/detokenize", json={"tokens": [10**9]}), 400)


def test_sampling_fields_reach_the_model(client: httpx.Client) -> None:
    yes_no = 'root ::= " yes" | " no"'
    out = complete(client, prompt="Is the sky blue? Answer:", grammar=yes_no)
    assert out["choices"][0]["text"] in (" yes", " no")
    error = error_of(client.post("/v1/completions", json={"prompt": PROMPT, "grammar": "root ::= ("}), 400)
    assert error["code"] == "invalid_grammar"
    banana = complete(client, logit_bias={" banana": 100}, logit_bias_type="tokens")["choices"][0]["text"]
    assert banana.split() == ["banana"] * 10
    (token,) = client.post("/extras/tokenize", json={"input": " banana"}).json()["tokens"]
    assert complete(client, logit_bias={str(token): 100})["choices"][0]["text"] == banana
    error_of(client.post("/v1/completions", json={"prompt": PROMPT, "logit_bias": {"banana": 1}}), 400)
    stopped = complete(client, stop=[" Paris"], max_tokens=4)["choices"][0]
    assert "Paris" not in stopped["text"]


def test_errors_map_by_type() -> None:
    cases: list[tuple[BaseException, int, str | None]] = [
        (ContextOverflowError(600, 512), 400, "context_length_exceeded"),
        (ActivationSpecError("unknown activation 'x'"), 400, "invalid_activation_spec"),
        (GrammarError("bad"), 400, "invalid_grammar"),
        (ValueError("bad"), 400, None),
        (TypeError("bad"), 400, None),
        (DecodeError("failed"), 500, "decode_error"),
        (KeyError("bug"), 500, None),
    ]
    for exc, status, code in cases:
        error = from_exception(exc)
        assert (error.status, error.code) == (status, code), exc
        assert error.body()["error"]["type"] == ("invalid_request_error" if status == 400 else "server_error")


# -- auth and errors --------------------------------------------------------------------------------


def test_api_key(base_url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 1}
    assert error_of(httpx.get(f"{base_url}/v1/models"), 401)["code"] == "invalid_api_key"
    error_of(httpx.post(f"{base_url}/v1/completions", json=body), 401)
    error_of(httpx.post(f"{base_url}/v1/completions", content=b"{not json"), 401)  # before parsing
    wrong = {"Authorization": "Bearer nope"}
    error_of(httpx.get(f"{base_url}/v1/models", headers=wrong), 401)
    error_of(httpx.post(f"{base_url}/extras/tokenize", json={"input": "x"}, headers=wrong), 401)
    right = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{base_url}/v1/models", headers=right).status_code == 200


def test_bad_requests(client: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    r = client.post("/v1/completions", content=b'{"prompt": "hi", ', headers=json_type)
    assert "JSON" in error_of(r, 400)["message"]
    error = error_of(client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": "many"}), 400)
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    error = error_of(client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": -1}), 400)
    assert error["param"] == "max_tokens"
    error_of(client.post("/v1/completions", json={"prompt": PROMPT, "temperature": "hot"}), 400)
    error_of(client.post("/v1/completions", json={"prompt": 42}), 400)
    error_of(client.post("/v1/chat/completions", json={"messages": "hello"}), 400)
    error_of(client.post("/v1/chat/completions", json={"messages": []}), 400)
    error_of(client.post("/v1/completions", json={"prompt": PROMPT, "n": 2}), 400)
    error_of(client.post("/v1/completions", json={"prompt": ["a", "b"]}), 400)
    error = error_of(client.post("/v1/completions", json={"prompt": PROMPT, "model": "gpt-4"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    error_of(client.post("/v1/chat/completions", json={"messages": CHAT, "model": "gpt-4"}), 404)
    error_of(client.get("/v1/nothing"), 404)


def test_prompt_over_the_context(client: httpx.Client) -> None:
    long_prompt = "hello " * 600  # > n_ctx=512 tokens
    for body in ({"prompt": long_prompt}, {"prompt": long_prompt, "stream": True}):
        error = error_of(client.post("/v1/completions", json={**body, "max_tokens": 4}), 400)
        assert error["code"] == "context_length_exceeded"
    messages = [{"role": "user", "content": long_prompt}]
    error = error_of(client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4}), 400)
    assert error["code"] == "context_length_exceeded"
    assert complete(client)["choices"][0]["text"]  # and the model still works


# -- concurrency ---------------------------------------------------------------------------------------


def test_a_burst_of_concurrent_requests(client: httpx.Client) -> None:
    expected = {m: complete(client, model=m)["choices"][0]["text"] for m in ("orig", "relu")}

    def one(i: int) -> tuple[str, str]:
        model = ("orig", "relu")[i % 2]
        body = {"model": model, "prompt": PROMPT, **GREEDY}
        if i % 4 < 2:
            return model, complete(client, model=model)["choices"][0]["text"]
        chunks, data = stream(client, "/v1/completions", body)
        assert data[-1] == "[DONE]"
        return model, "".join(c["choices"][0]["text"] for c in chunks)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(text == expected[model] for model, text in results)


def test_a_client_that_disconnects_mid_stream(client: httpx.Client) -> None:
    expected = complete(client, model="orig")["choices"][0]["text"]
    body = {"model": "orig", "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0,
            "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the connection is closed half-way; the next request gets the model, and the same answer
    started = time.monotonic()
    assert complete(client, model="orig")["choices"][0]["text"] == expected
    assert time.monotonic() - started < 20


def test_the_openai_client(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in oai.models.list()] == ["orig", "relu", "emb"]
    out = oai.completions.create(model="relu", prompt=PROMPT, temperature=0, max_tokens=10)
    assert out.choices[0].text
    pieces = oai.completions.create(model="relu", prompt=PROMPT, temperature=0, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == out.choices[0].text
    chat = oai.chat.completions.create(model="orig", messages=CHAT, temperature=0, max_tokens=10)
    assert chat.choices[0].message.content
    emb = oai.embeddings.create(model="emb", input="hello")  # the client asks for base64
    assert len(emb.data[0].embedding) == 576
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt=PROMPT, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="orig", prompt="hello " * 600, max_tokens=1)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()


# -- a fake model: unexpected errors, closing streams ----------------------------------------------------


class FakeStream:
    """Endless chunks, slowly; records close()."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.closed = threading.Event()
        self.sent = 0
        self.fail_after = fail_after

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise RuntimeError("the engine broke")
        time.sleep(0.02)
        self.sent += 1
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "x",
                "choices": [{"text": "x", "index": 0, "logprobs": None, "finish_reason": None}]}

    def close(self) -> None:
        self.closed.set()


class FakeLlama:
    rpc_lost = None  # on no RPC server

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []

    def create_completion(self, prompt: str, stream: bool = False, **kwargs: Any) -> Any:
        if prompt == "boom":
            raise KeyError("a bug")
        if prompt == "bad":
            raise ValueError("a bad value")
        if stream:
            self.streams.append(FakeStream(fail_after=2 if prompt == "break" else None))
            return self.streams[-1]
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "x",
                "choices": [{"text": "ok", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeLlama]]:
    llm = FakeLlama()
    settings = [ModelSettings(model="fake.gguf", model_alias="fake"),
                ModelSettings(model="fake.gguf", model_alias="other")]
    pool = ModelPool([ServedModel(settings[0], cast(Llama, llm)),
                      ServedModel(settings[1], cast(Llama, FakeLlama()))])
    with running(create_app(Settings(models=settings), pool=pool)) as url:
        yield url, llm


def test_an_unexpected_error_is_a_500_and_the_server_stays_up(fake: tuple[str, FakeLlama]) -> None:
    url, _ = fake
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": "boom"}), 500)
    assert error["type"] == "server_error"
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": "bad"}), 400)
    assert error["message"] == "a bad value"
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "fine", "model": "fake"}).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200


def test_an_error_mid_stream_is_an_event(fake: tuple[str, FakeLlama]) -> None:
    url, _ = fake
    with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "break", "stream": True}) as r:
        data = [json.loads(d) for d in events(r)]
    assert len(data) == 3 and data[-1]["error"]["type"] == "server_error"


def test_a_disconnect_closes_the_stream_and_the_next_request_waits_its_turn(
        fake: tuple[str, FakeLlama]) -> None:
    url, llm = fake
    body = {"prompt": "forever", "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()  # (kept: dropping the iterator would close the connection)
        assert next(lines).startswith("data: ")
        waiting = ThreadPoolExecutor(1).submit(httpx.post, f"{url}/v1/completions", json={"prompt": "x"},
                                               timeout=10)
        # another model is free meanwhile
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x", "model": "other"}).status_code == 200
        time.sleep(0.2)
        assert not waiting.done()  # the stream holds its model
        assert not llm.streams[-1].closed.is_set()
    assert llm.streams[-1].closed.wait(5)
    assert waiting.result().status_code == 200


def test_model_selection() -> None:
    assert select_alias(None, ["a"]) == "a"
    assert select_alias(None, ["a", "b"]) == "a"
    assert select_alias("b", ["a", "b"]) == "b"
    assert select_alias("c", ["a"]) == "a"  # one model answers any name, as llama-cpp-python's server
    with pytest.raises(APIError, match="does not exist"):
        select_alias("c", ["a", "b"])


# -- settings and the command line --------------------------------------------------------------------


def test_model_positional_and_no_repack_on_the_command_line() -> None:
    (m,) = parse_settings(["m.gguf", "--no-repack"]).models
    assert (m.model, m.use_extra_bufts) == ("m.gguf", False)
    assert m.llama_kwargs()["use_extra_bufts"] is False
    (m,) = parse_settings(["--model", "m.gguf"]).models
    assert m.use_extra_bufts is True
    assert parse_settings(["m.gguf", "--model", "m.gguf"]).models[0].model == "m.gguf"
    with pytest.raises(SystemExit):
        parse_settings(["a.gguf", "--model", "b.gguf"])


def test_settings_from_the_command_line(tmp_path: Path) -> None:
    s = parse_settings(["--model", "m.gguf", "--act", "*:relu", "--n-ctx", "256", "--port", "9000",
                        "--api_key", "k", "--embedding"])
    assert (s.port, s.api_key) == (9000, "k")
    (m,) = s.models
    assert (m.model, m.alias, m.activations, m.n_ctx) == ("m.gguf", "m.gguf", "*:relu", 256)
    assert m.embedding
    with pytest.raises(SystemExit):
        parse_settings(["--n_ctx", "lots"])
    toml = tmp_path / "models.toml"
    toml.write_text('port = 8123\n[[models]]\nmodel = "m.gguf"\nmodel_alias = "orig"\n'
                    '[[models]]\nmodel = "m.gguf"\nmodel_alias = "relu"\nactivations = "*:relu"\n')
    s = parse_settings(["--config_file", str(toml), "--port", "8124"])
    assert s.port == 8124
    assert [(m.alias, m.activations) for m in s.models] == [("orig", None), ("relu", "*:relu")]
    js = tmp_path / "models.json"
    js.write_text(json.dumps({"models": [{"model": "m.gguf"}, {"model": "m.gguf"}]}))
    with pytest.raises(SystemExit):  # two models with the same alias
        parse_settings(["--config_file", str(js)])
    js.write_text(json.dumps({"models": [{"model": "m.gguf", "n_cxt": 5}]}))
    with pytest.raises(SystemExit):  # a misspelt setting
        parse_settings(["--config_file", str(js)])
    with pytest.raises(SystemExit):  # models come from the file
        parse_settings(["--config_file", str(js), "--model", "x.gguf"])


def test_the_wiring_setting(tmp_path: Path) -> None:
    (m,) = parse_settings(["--model", "m.gguf", "--wiring", "0:skip=attn"]).models
    assert (m.wiring, m.activations) == ("0:skip=attn", None)
    assert m.llama_kwargs()["wiring"] == "0:skip=attn"
    toml = tmp_path / "models.toml"
    toml.write_text('[[models]]\nmodel = "m.gguf"\nmodel_alias = "orig"\n'
                    '[[models]]\nmodel = "m.gguf"\nmodel_alias = "pruned"\nwiring = "1-2:skip=layer"\n'
                    'activations = "*:relu"\n')
    s = parse_settings(["--config_file", str(toml)])
    assert [(m.alias, m.wiring, m.activations) for m in s.models] == [
        ("orig", None, None), ("pruned", "1-2:skip=layer", "*:relu")]
    js = tmp_path / "models.json"
    js.write_text(json.dumps({"models": [{"model": "m.gguf", "wiring": {"1-2": {"skip": "layer"}}}]}))
    assert parse_settings(["--config_file", str(js)]).models[0].wiring == {"1-2": {"skip": "layer"}}


def test_a_model_served_with_a_wiring(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    wiring = "0:skip=attn, 1:ffn_scale=0.5"
    settings = Settings(models=[ModelSettings(model=str(path), model_alias="plain", n_ctx=64),
                                ModelSettings(model=str(path), model_alias="wired", n_ctx=64, wiring=wiring)])
    app = create_app(settings)
    assert str(app.state.pool.get("wired").llama.wiring) == wiring
    with running(app) as url:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["wiring"]) for m in models] == [("plain", None), ("wired", wiring)]
        texts = [httpx.post(f"{url}/v1/completions", json={"model": m, "prompt": "hello", "max_tokens": 4,
                                                            "temperature": 0}).json()["choices"][0]["text"]
                 for m in ("plain", "wired")]
        assert texts[0] != texts[1]
    # an invalid wiring fails at load, with the reason
    with pytest.raises(WiringSpecError, match="unknown skip 'sideways'"):
        create_app(Settings(models=[ModelSettings(model=str(path), wiring="0:skip=sideways")]))
    assert server_main(["--model", str(path), "--wiring", "9:skip=layer"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "layer 9 is out of range" in err and err.count("\n") == 1


def test_llama_rewire_serve(smollm2_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_rewire.cli", "serve", "--model", str(smollm2_path), "--model_alias",
           "smol", "--act", "0-5:gelu", "--n_ctx", "128", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}")
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert [(m["id"], m["activations"]) for m in models] == [("smol", "0-5:gelu")]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    bad = subprocess.run([*cmd[:4], "--model", str(smollm2_path), "--act", "0:bogus"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "bogus" in bad.stderr

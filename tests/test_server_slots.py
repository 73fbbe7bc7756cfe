"""The server with parallel slots (``n_parallel``): concurrent requests decoded together give what
each gets alone; /health and /metrics report the slots; a disconnect frees its slot; what the slots
cannot run (steering, echo with logprobs) still runs, on the model alone; the wiring is shared."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving import running

from llama_rewire import Llama
from llama_rewire.residual import ControlVector
from llama_rewire.server import ModelSettings, Settings, create_app, parse_settings
from llama_rewire.server.schemas import SAMPLING_DEFAULTS

pytestmark = pytest.mark.real_model

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "The sun is a",
           "Cats and dogs are", "In 1492,", "The best way to learn is", "Rain falls when"]
GREEDY = {"temperature": 0, "max_tokens": 16}
# what the server samples a GREEDY request with (llama-cpp-python's server defaults for the rest)
AS_SERVED = {**SAMPLING_DEFAULTS, **GREEDY}


@pytest.fixture(scope="module")
def steer_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    root = tmp_path_factory.mktemp("steer")
    with Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False) as llm:
        rng = np.random.default_rng(0)
        vectors = {il: rng.normal(size=llm.n_embd()).astype(np.float32) for il in range(8, 16)}
    ControlVector(vectors, model_hint="smollm2").save(root / "noise.gguf")
    return root


@pytest.fixture(scope="module")
def url(smollm2_path: Path, steer_dir: Path) -> Iterator[str]:
    common = {"model": str(smollm2_path), "n_ctx": 512, "n_threads": 2}
    settings = Settings(steering_dir=str(steer_dir), models=[
        ModelSettings(**common, model_alias="par", n_parallel=4),
        ModelSettings(**common, model_alias="relu", n_parallel=2, activations="*:relu"),
    ])
    with running(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def alone(smollm2_path: Path) -> Iterator[Llama]:
    with Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False) as llm:
        yield llm


def text_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def streamed(client: httpx.Client, body: dict[str, Any]) -> str:
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1] if json.loads(d)["choices"])


def wait_idle(client: httpx.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        health: dict[str, Any] = client.get("/health").json()
        if health["slots_processing"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def metrics_of(text: str, alias: str) -> dict[str, float]:
    """One model's series of a /metrics text, by name."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(rf'^(llama_rewire_\w+)\{{model="{alias}"\}} (\S+)$', text, re.M)}


def test_concurrent_requests_get_what_each_gets_alone(client: httpx.Client, alone: Llama) -> None:
    want = [alone.create_completion(p, **AS_SERVED)["choices"][0]["text"] for p in PROMPTS]

    def one(i: int) -> str:
        body = {"model": "par", "prompt": PROMPTS[i], **GREEDY}
        return streamed(client, body) if i % 2 else text_of(client.post("/v1/completions", json=body))

    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        got = list(ex.map(one, range(len(PROMPTS))))
    assert got == want
    chat = [{"role": "user", "content": "Say hello."}]
    r = client.post("/v1/chat/completions", json={"model": "par", "messages": chat, **GREEDY})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == \
        alone.create_chat_completion(chat, **AS_SERVED)["choices"][0]["message"]["content"]


def test_health_and_metrics_report_the_slots(client: httpx.Client) -> None:
    health = wait_idle(client)
    assert health["status"] == "ok"
    assert health["models"]["par"] == {"n_parallel": 4, "slots_idle": 4, "slots_processing": 0, "queue": 0}
    assert health["slots_idle"] == 6
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(client.get("/health").json()["models"]["par"])
            time.sleep(0.01)

    w = threading.Thread(target=watch)
    w.start()
    with ThreadPoolExecutor(6) as ex:
        list(ex.map(lambda p: client.post("/v1/completions", json={"model": "par", "prompt": p,
                                                                   "temperature": 0, "max_tokens": 24}),
                    PROMPTS[:6]))
    stop.set()
    w.join()
    assert max(s["slots_processing"] for s in seen) >= 2  # several requests ran at once
    assert all(s["slots_processing"] <= 4 for s in seen)
    text = client.get("/metrics").text
    values = metrics_of(text, "par")
    assert values["llama_rewire_requests_total"] >= 6
    assert values["llama_rewire_tokens_predicted_total"] >= 6
    assert values["llama_rewire_prompt_tokens_total"] > 0
    assert values["llama_rewire_n_parallel"] == 4
    assert values["llama_rewire_slots_processing"] == 0 and values["llama_rewire_queue_length"] == 0
    assert "# TYPE llama_rewire_requests_total counter" in text


def test_a_disconnect_frees_its_slot(client: httpx.Client, alone: Llama) -> None:
    for _ in range(3):
        body = {"model": "par", "prompt": "Count to one thousand: 1, 2,", "max_tokens": 400,
                "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
    health = wait_idle(client)
    assert health["models"]["par"]["slots_processing"] == 0
    assert text_of(client.post("/v1/completions", json={"model": "par", "prompt": PROMPTS[0], **GREEDY})) \
        == alone.create_completion(PROMPTS[0], **AS_SERVED)["choices"][0]["text"]


def test_a_non_streamed_request_whose_client_leaves_frees_its_slot(url: str, client: httpx.Client) -> None:
    cancelled = "llama_rewire_requests_cancelled_total"
    before = metrics_of(client.get("/metrics").text, "par")[cancelled]
    # 480 tokens take seconds; the client gives up after a fraction of one
    body = {"model": "par", "prompt": "Count to one thousand: 1, 2,", "max_tokens": 480, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(0.3, connect=5.0))
    health = wait_idle(client)
    assert health["models"]["par"]["slots_processing"] == 0
    # stopped when the client left, not run to max_tokens: the slots count it as cancelled
    assert metrics_of(client.get("/metrics").text, "par")[cancelled] == before + 1


def test_a_prompt_over_the_slot_window_is_a_400(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"model": "par", "prompt": list(range(1, 600)), "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = client.post("/v1/completions", json={"model": "par", "prompt": PROMPTS[1], "max_tokens": 10**9,
                                             "temperature": 0})
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 512


def test_steered_and_echo_requests_run_on_the_model_alone(client: httpx.Client, alone: Llama) -> None:
    plain = alone.create_completion(PROMPTS[2], **AS_SERVED)["choices"][0]["text"]

    def steered() -> str:
        return text_of(client.post("/v1/completions", json={
            "model": "par", "prompt": PROMPTS[2], **GREEDY, "steer": {"vector": "noise.gguf", "alpha": 8}}))

    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(steered)] + [
            ex.submit(lambda: text_of(client.post("/v1/completions", json={
                "model": "par", "prompt": PROMPTS[2], **GREEDY}))) for _ in range(3)]
        results = [f.result() for f in futures]
    assert results[0] != plain and results[1:] == [plain] * 3
    r = client.post("/v1/completions", json={"model": "par", "prompt": PROMPTS[0], "echo": True,
                                             "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith(PROMPTS[0])


def test_the_wiring_is_shared_by_the_slots(client: httpx.Client, smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False, activations="*:relu") as relu:
        want = [relu.create_completion(p, **AS_SERVED)["choices"][0]["text"] for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda p: text_of(client.post(
            "/v1/completions", json={"model": "relu", "prompt": p, **GREEDY})), PROMPTS[:4]))
    assert got == want


def test_n_parallel_on_the_command_line() -> None:
    assert parse_settings(["--model", "m.gguf", "--n_parallel", "8"]).models[0].n_parallel == 8
    assert parse_settings(["m.gguf", "-np", "3"]).models[0].n_parallel == 3
    with pytest.raises(SystemExit):
        parse_settings(["m.gguf", "--n_parallel", "0"])

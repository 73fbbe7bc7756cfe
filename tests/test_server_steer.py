"""Per-request steering on the server: ``"steer": {"vector": NAME, "alpha": A}`` with vectors from
``--steering-dir``. A steered request changes its own output and no other request's; a vector is
named inside the directory only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from test_server import error_of, running, stream

from llama_rewire.residual import ControlVector
from llama_rewire.server import ModelSettings, Settings, create_app, parse_settings

pytestmark = pytest.mark.real_model

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_tokens": 12}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
N_EMBD, N_LAYER = 576, 30  # SmolLM2-135M
STEER = {"vector": "random.gguf", "alpha": 6.0}


def random_vector(n_embd: int, layers: range, seed: int = 0) -> ControlVector:
    rng = np.random.default_rng(seed)
    return ControlVector({il: rng.standard_normal(n_embd).astype(np.float32) for il in layers}, "llama")


@pytest.fixture(scope="module")
def steering_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steering")
    d = root / "vectors"
    d.mkdir()
    random_vector(N_EMBD, range(1, N_LAYER)).save(d / "random.gguf")
    (d / "sub").mkdir()
    random_vector(N_EMBD, range(1, N_LAYER), seed=1).save(d / "sub" / "other.gguf")
    random_vector(64, range(1, 3)).save(d / "narrow.gguf")  # another model's width
    (d / "notes.gguf").write_text("not a GGUF file\n")
    random_vector(N_EMBD, range(1, N_LAYER)).save(root / "outside.gguf")
    os.symlink(root / "outside.gguf", d / "link.gguf")  # a link that leads out of the directory
    return d


@pytest.fixture(scope="module")
def client(smollm2_path: Path, steering_dir: Path) -> Iterator[httpx.Client]:
    settings = Settings(steering_dir=str(steering_dir),
                        models=[ModelSettings(model=str(smollm2_path), model_alias="smol", n_ctx=256)])
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


def complete(client: httpx.Client, **body: Any) -> str:
    r = client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY, **body})
    assert r.status_code == 200, r.text
    return cast(str, r.json()["choices"][0]["text"])


def chat(client: httpx.Client, **body: Any) -> str:
    r = client.post("/v1/chat/completions", json={"messages": CHAT, **GREEDY, **body})
    assert r.status_code == 200, r.text
    return cast(str, r.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def baseline(client: httpx.Client) -> dict[str, str]:
    """The unsteered outputs, taken before any steered request reaches the server."""
    return {"completion": complete(client), "chat": chat(client)}


def test_a_steered_request_changes_its_own_output_only(client: httpx.Client,
                                                        baseline: dict[str, str]) -> None:
    steered = complete(client, steer=STEER)
    assert steered != baseline["completion"]
    assert complete(client) == baseline["completion"]
    assert complete(client, steer=STEER) == steered  # greedy: the same steering, the same text
    assert chat(client, steer=STEER) != baseline["chat"]
    assert chat(client) == baseline["chat"]
    # alpha 0 adds nothing; another vector (in a subdirectory) steers elsewhere
    assert complete(client, steer={**STEER, "alpha": 0.0}) == baseline["completion"]
    other = complete(client, steer={"vector": "sub/other.gguf", "alpha": 6.0})
    assert other not in (steered, baseline["completion"])
    assert complete(client) == baseline["completion"]


def test_layers_and_tokens(client: httpx.Client, baseline: dict[str, str]) -> None:
    few = complete(client, steer={**STEER, "layers": [10, 11, 12]})
    assert few not in (baseline["completion"], complete(client, steer=STEER))
    prompt_only = complete(client, steer={**STEER, "tokens": "prompt"})
    generated_only = complete(client, steer={**STEER, "tokens": "generated"})
    assert baseline["completion"] not in (prompt_only, generated_only)
    assert complete(client) == baseline["completion"]


def test_a_steered_stream(client: httpx.Client, baseline: dict[str, str]) -> None:
    steered = complete(client, steer=STEER)
    chunks, data = stream(client, "/v1/completions", {"prompt": PROMPT, **GREEDY, "steer": STEER})
    assert data[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks) == steered
    assert complete(client) == baseline["completion"]
    whole = client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY, "steer": STEER}).json()
    chunks, _ = stream(client, "/v1/completions", {"prompt": PROMPT, **GREEDY, "steer": STEER,
                                                   "stream_options": {"include_usage": True}})
    assert chunks[-1]["usage"] == whole["usage"]  # the steered iterator's own usage comes through
    # a client that leaves mid-stream: the steering goes with it
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "temperature": 0, "max_tokens": 200,
                                                        "stream": True, "steer": STEER}) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    assert complete(client) == baseline["completion"]


def test_concurrent_steered_and_unsteered_requests(client: httpx.Client, baseline: dict[str, str]) -> None:
    steered = complete(client, steer=STEER)

    def one(i: int) -> tuple[bool, str]:
        return i % 2 == 0, complete(client, **({"steer": STEER} if i % 2 == 0 else {}))

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(12)))
    assert all(text == (steered if is_steered else baseline["completion"]) for is_steered, text in results)


def test_a_failed_steered_request_leaves_no_steering(client: httpx.Client, baseline: dict[str, str]) -> None:
    r = client.post("/v1/completions", json={"prompt": "word " * 400, **GREEDY, "steer": STEER})
    assert error_of(r, 400)["code"] == "context_length_exceeded"
    assert complete(client) == baseline["completion"]


def test_the_openai_client_sends_it_in_extra_body(client: httpx.Client, baseline: dict[str, str]) -> None:
    openai = pytest.importorskip("openai")
    oai = openai.OpenAI(base_url=f"{str(client.base_url).rstrip('/')}/v1", api_key="none")
    out = oai.completions.create(model="smol", prompt=PROMPT, temperature=0, max_tokens=12,
                                 extra_body={"steer": STEER})
    assert out.choices[0].text == complete(client, steer=STEER) != baseline["completion"]


def test_the_steering_directory_is_listed(client: httpx.Client) -> None:
    listed = client.get("/extras/steering").json()
    assert listed["enabled"] is True
    assert {"random.gguf", "sub/other.gguf", "narrow.gguf"} <= set(listed["data"])


@pytest.mark.parametrize(("name", "says"), [
    ("../outside.gguf", "not a path out of it"),
    ("sub/../../outside.gguf", "not a path out of it"),
    ("/etc/passwd", "not a path out of it"),
    ("..\\outside.gguf", "not a path out of it"),
    ("link.gguf", "leads outside the steering directory"),
    ("missing.gguf", "no such control vector"),
    ("sub", "no such control vector"),
    ("", "give the file name"),
    ("notes.gguf", "not a GGUF file"),
])
def test_a_bad_vector_name_is_a_400(client: httpx.Client, name: str, says: str) -> None:
    for path, body in (("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": CHAT})):
        r = client.post(path, json={**body, **GREEDY, "steer": {"vector": name, "alpha": 4.0}})
        error = error_of(r, 400)
        assert error["param"] == "steer.vector" and says in error["message"], error
        assert "/tmp" not in error["message"] and str(Path.home()) not in error["message"]


def test_bad_steering_fields_are_a_400(client: httpx.Client, baseline: dict[str, str]) -> None:
    def post(steer: Any) -> httpx.Response:
        return client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY, "steer": steer})

    error = error_of(post({"vector": "narrow.gguf", "alpha": 4.0}), 400)
    assert error["param"] == "steer" and "expected rows of 576 values" in error["message"]
    error = error_of(post({**STEER, "layers": [99]}), 400)
    assert error["param"] == "steer" and "99" in error["message"]
    error = error_of(post({**STEER, "tokens": "some"}), 400)
    assert error["param"] == "steer.tokens"
    error = error_of(post({**STEER, "alfa": 2}), 400)
    assert error["param"] == "steer.alfa"
    error = error_of(post({"alpha": 2}), 400)
    assert error["param"] == "steer.vector"
    error = error_of(post("random.gguf"), 400)
    assert error["param"] == "steer"
    body = json.dumps({"prompt": PROMPT, **GREEDY, "steer": STEER}).replace("6.0", "NaN")
    r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert error_of(r, 400)["param"] == "steer.alpha"
    assert complete(client) == baseline["completion"]


def test_a_server_without_a_steering_directory(tiny: Any, tmp_path: Path) -> None:
    path, _ = tiny("llama")
    with running(create_app(Settings(models=[ModelSettings(model=str(path), n_ctx=64)]))) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2, "steer": STEER})
        error = error_of(r, 400)
        assert error["param"] == "steer" and "--steering-dir" in error["message"]
        assert httpx.get(f"{url}/extras/steering").json() == {"object": "list", "enabled": False, "data": []}
    assert parse_settings(["--steering-dir", str(tmp_path)]).steering_dir == str(tmp_path)
    with pytest.raises(SystemExit):
        parse_settings(["--steering-dir", str(tmp_path / "nope")])

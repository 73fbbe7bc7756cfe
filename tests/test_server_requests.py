"""Bad and odd requests to the server: each gets a 4xx with a clear OpenAI-shaped error, or the answer the
server is designed to give (a 2xx), never a 5xx; and the server keeps serving after every one.

The server runs on a loopback port; with parallel slots available, every test runs twice: once on the
model's own sequence and once on two slots, whose requests take a different path through the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from serving import running

from llama_rewire.server import ModelSettings, Settings, create_app

pytestmark = pytest.mark.real_model

N_CTX = 256  # llama.cpp pads the window to a multiple of 256: use one, so that it is the window
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
COMPLETIONS = "/v1/completions"
CHATS = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
PARALLEL = [1, 2]


@pytest.fixture(scope="module", params=PARALLEL, ids=lambda n: f"n_parallel={n}")
def client(smollm2_path: Path, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    slots = {"n_parallel": request.param} if request.param != 1 else {}
    settings = Settings(models=[ModelSettings(model=str(smollm2_path), model_alias="smol", n_ctx=N_CTX,
                                              n_threads=2, seed=1234, **slots)])
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def token(client: httpx.Client) -> int:
    """A plain token id, for prompts given as token ids."""
    r = client.post("/extras/tokenize", json={"input": " hello"})
    assert r.status_code == 200, r.text
    return int(r.json()["tokens"][-1])


@pytest.fixture(scope="module")
def greedy_text(client: httpx.Client) -> str:
    return completion_text(client, {"prompt": PROMPT, "max_tokens": 4, "temperature": 0})


def completion_text(client: httpx.Client, body: dict[str, Any]) -> str:
    r = client.post(COMPLETIONS, json=body)
    assert r.status_code == 200, r.text
    return cast(str, r.json()["choices"][0]["text"])


def still_serving(client: httpx.Client) -> None:
    """A valid request after a bad one gets its answer."""
    r = client.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"]


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"].strip()
    assert error["type"] == "invalid_request_error"
    return cast(dict[str, Any], error)


def post(client: httpx.Client, path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, content=content, headers=JSON)


# -- bad requests: a 4xx -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request that must get ``status``, with an error naming ``param`` (its start), carrying ``code``,
    or whose message says ``says``."""

    path: str
    body: Any = None
    raw: bytes | None = None
    status: int = 400
    param: str | None = None
    code: str | None = None
    says: str | None = None


def _nested(depth: int) -> bytes:
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"


BAD = {
    # the body
    "malformed_json": Bad(COMPLETIONS, raw=b'{"prompt": "hi", ', says="Invalid JSON"),
    "truncated_json": Bad(COMPLETIONS, raw=b'{"prompt": "hi"', says="Invalid JSON"),
    "not_a_json_object": Bad(COMPLETIONS, raw=b"[1, 2]", says="must be a JSON object"),
    "json_null": Bad(COMPLETIONS, raw=b"null", says="must be a JSON object"),
    "empty_body": Bad(COMPLETIONS, raw=b"", says="must be a JSON object"),
    # FastAPI's own message ("There was an error parsing the body"): a 400, if not a helpful one
    "non_utf8_bytes": Bad(COMPLETIONS, raw=b'{"prompt": "caf\xe9 \xff\xfe"}'),
    "deeply_nested_json": Bad(COMPLETIONS, raw=_nested(100_000)),
    # wrong types
    "prompt_a_number": Bad(COMPLETIONS, {"prompt": 42}, param="prompt"),
    "prompt_an_object": Bad(COMPLETIONS, {"prompt": {"text": "hi"}}, param="prompt"),
    "prompt_nested_lists": Bad(COMPLETIONS, {"prompt": [[1, 2]]}, param="prompt"),
    "max_tokens_a_string": Bad(COMPLETIONS, {"prompt": PROMPT, "max_tokens": "many"}, param="max_tokens"),
    "max_tokens_a_fraction": Bad(COMPLETIONS, {"prompt": PROMPT, "max_tokens": 2.5}, param="max_tokens"),
    "temperature_a_list": Bad(COMPLETIONS, {"prompt": PROMPT, "temperature": [0.5]}, param="temperature"),
    "temperature_a_string": Bad(COMPLETIONS, {"prompt": PROMPT, "temperature": "hot"}, param="temperature"),
    "stop_a_number": Bad(COMPLETIONS, {"prompt": PROMPT, "stop": 5}, param="stop"),
    "seed_a_string": Bad(COMPLETIONS, {"prompt": PROMPT, "seed": "x"}, param="seed"),
    "stream_options_a_number": Bad(COMPLETIONS, {"prompt": PROMPT, "stream": True, "stream_options": 5},
                                   param="stream_options"),
    "model_a_number": Bad(COMPLETIONS, {"prompt": PROMPT, "model": 5}, param="model"),
    # values out of range
    "negative_max_tokens": Bad(COMPLETIONS, {"prompt": PROMPT, "max_tokens": -1}, param="max_tokens"),
    "negative_max_completion_tokens": Bad(CHATS, {"messages": CHAT, "max_completion_tokens": -1},
                                          param="max_completion_tokens"),
    "logprobs_over_20": Bad(COMPLETIONS, {"prompt": PROMPT, "logprobs": 21}, param="logprobs"),
    "top_logprobs_over_20": Bad(CHATS, {"messages": CHAT, "logprobs": True, "top_logprobs": 21},
                                param="top_logprobs"),
    "mirostat_mode_7": Bad(COMPLETIONS, {"prompt": PROMPT, "mirostat_mode": 7, "max_tokens": 1},
                           says="mirostat_mode"),
    "top_k_over_int32": Bad(COMPLETIONS, {"prompt": PROMPT, "top_k": 2**40, "max_tokens": 1}, says="top_k"),
    "temperature_over_float32": Bad(COMPLETIONS, {"prompt": PROMPT, "temperature": 1e300, "max_tokens": 1},
                                    says="temperature"),
    "temperature_nan": Bad(COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 1, "temperature": NaN}',
                           says="temperature"),
    "top_p_infinite": Bad(COMPLETIONS, raw=b'{"prompt": "hi", "max_tokens": 1, "top_p": Infinity}',
                          says="top_p"),
    "logit_bias_not_a_token_id": Bad(COMPLETIONS, {"prompt": PROMPT, "logit_bias": {"banana": 1}},
                                     param="logit_bias"),
    "logit_bias_token_out_of_range": Bad(COMPLETIONS, {"prompt": PROMPT, "logit_bias": {"999999999": 1}},
                                         says="out of range"),
    # what this server does not do
    "n_2": Bad(COMPLETIONS, {"prompt": PROMPT, "n": 2}, param="n"),
    "n_0": Bad(COMPLETIONS, {"prompt": PROMPT, "n": 0}, param="n"),
    "best_of_2": Bad(COMPLETIONS, {"prompt": PROMPT, "best_of": 2}, param="best_of"),
    "chat_n_2": Bad(CHATS, {"messages": CHAT, "n": 2}, param="n"),
    "several_prompts": Bad(COMPLETIONS, {"prompt": ["one", "two"]}, param="prompt"),
    "suffix": Bad(COMPLETIONS, {"prompt": PROMPT, "suffix": "x"}, says="suffix"),
    "echo_with_logprobs": Bad(COMPLETIONS, {"prompt": PROMPT, "echo": True, "logprobs": 1}, says="echo"),
    "steering_without_a_steering_dir": Bad(COMPLETIONS, {"prompt": PROMPT, "steer": {"vector": "x"}},
                                           param="steer"),
    "invalid_grammar": Bad(COMPLETIONS, {"prompt": PROMPT, "grammar": "root ::= ("}, param="grammar",
                           code="invalid_grammar"),
    # prompts
    "empty_token_list": Bad(COMPLETIONS, {"prompt": []}, says="empty"),
    "token_id_out_of_range": Bad(COMPLETIONS, {"prompt": [10**9]}, says="out of range"),
    "negative_token_id": Bad(COMPLETIONS, {"prompt": [-1]}, says="out of range"),
    "lone_surrogate_in_prompt": Bad(COMPLETIONS, {"prompt": "hi \ud800 there"}, param="prompt",
                                    says="not valid text"),
    "prompt_over_the_context": Bad(COMPLETIONS, {"prompt": "hello " * 300, "max_tokens": 2}, param="prompt",
                                   code="context_length_exceeded"),
    "token_prompt_filling_the_context": Bad(COMPLETIONS, {"prompt": [28] * N_CTX, "max_tokens": 1},
                                            code="context_length_exceeded"),
    "a_2_mib_prompt": Bad(COMPLETIONS, {"prompt": "hello " * 350_000, "max_tokens": 1},
                          code="context_length_exceeded"),
    # chat messages
    "empty_messages": Bad(CHATS, {"messages": []}, param="messages"),
    "messages_a_string": Bad(CHATS, {"messages": "hello"}, param="messages"),
    "messages_missing": Bad(CHATS, {"prompt": PROMPT}, param="messages"),
    "message_without_role": Bad(CHATS, {"messages": [{"content": "hi"}]}, param="messages.0.role"),
    "role_a_number": Bad(CHATS, {"messages": [{"role": 3, "content": "hi"}]}, param="messages.0.role"),
    "content_a_number": Bad(CHATS, {"messages": [{"role": "user", "content": 3}]},
                            param="messages.0.content"),
    "message_without_content": Bad(CHATS, {"messages": [{"role": "user"}], "max_tokens": 1},
                                   param="messages"),
    "image_content_part": Bad(CHATS, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]},
        param="messages", code="invalid_chat_format"),
    "lone_surrogate_in_a_message": Bad(CHATS, {"messages": [{"role": "user", "content": "hi \ud800"}]},
                                       param="messages", says="not valid text"),
    "tools_without_a_function": Bad(CHATS, {"messages": CHAT, "tools": [{"x": 1}]}, says="tools"),
    "unknown_response_format": Bad(CHATS, {"messages": CHAT, "response_format": {"type": "banana"}},
                                   says="response_format"),
    "chat_over_the_context": Bad(CHATS, {"messages": [{"role": "user", "content": "hello " * 300}],
                                         "max_tokens": 2}, param="messages", code="context_length_exceeded"),
}

# refused by the model call rather than by the schema: streamed, they must still be an HTTP error
# (not a 200 stream carrying an error event)
CHECKED_BY_THE_MODEL = [
    "temperature_nan", "top_k_over_int32", "mirostat_mode_7", "token_id_out_of_range", "empty_token_list",
    "lone_surrogate_in_prompt", "suffix", "invalid_grammar", "prompt_over_the_context",
    "token_prompt_filling_the_context", "message_without_content", "lone_surrogate_in_a_message",
    "chat_over_the_context",
]


def check_bad(client: httpx.Client, case: Bad, stream: bool = False) -> None:
    if stream:
        if case.raw is not None:
            raw = case.raw.replace(b'{"prompt"', b'{"stream": true, "prompt"', 1)
            r = post(client, case.path, raw=raw)
        else:
            r = post(client, case.path, {**case.body, "stream": True})
    else:
        r = post(client, case.path, case.body, case.raw)
    error = error_of(r, case.status)
    if case.param is not None:
        assert error["param"] is not None and error["param"].startswith(case.param), error
    if case.code is not None:
        assert error["code"] == case.code, error
    if case.says is not None:
        assert case.says in error["message"], error
    still_serving(client)


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_request_is_a_4xx(client: httpx.Client, name: str) -> None:
    check_bad(client, BAD[name])


@pytest.mark.parametrize("name", CHECKED_BY_THE_MODEL)
def test_a_bad_streamed_request_is_a_4xx_before_the_stream(client: httpx.Client, name: str) -> None:
    check_bad(client, BAD[name], stream=True)


# -- odd requests with a designed answer: a 2xx --------------------------------------------------------


def test_any_model_name_selects_the_only_model(client: httpx.Client, greedy_text: str) -> None:
    # as llama-cpp-python's server: a one-model server answers whatever model a request names
    r = client.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "model": "gpt-4"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smol" and r.json()["choices"][0]["text"] == greedy_text


def test_unknown_fields_are_ignored(client: httpx.Client, greedy_text: str) -> None:
    # schemas.py: "Unknown fields are ignored, as OpenAI-compatible servers do"
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "frobnicate": {"x": [1, 2]}, "banana": None}
    assert completion_text(client, body) == greedy_text
    body = {"messages": [{"role": "user", "content": "Hi", "mood": "cheerful"}], "max_tokens": 2,
            "temperature": 0, "frobnicate": 1}
    r = client.post(CHATS, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    still_serving(client)


@pytest.mark.parametrize("max_tokens", [10**9, 2**70, 0, None], ids=["1e9", "2**70", "0", "null"])
def test_max_tokens_beyond_the_context_is_capped_at_it(client: httpx.Client, token: int,
                                                       max_tokens: int | None) -> None:
    # schemas.py: "0 or null: up to the end of the context"; more than fits is capped the same way
    room = 4
    body = {"prompt": [token] * (N_CTX - room), "max_tokens": max_tokens, "temperature": 0}
    r = client.post(COMPLETIONS, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    usage = out["usage"]
    assert usage["prompt_tokens"] == N_CTX - room
    assert 1 <= usage["completion_tokens"] <= room
    assert usage["total_tokens"] <= N_CTX
    if out["choices"][0]["finish_reason"] == "length":
        assert usage["total_tokens"] == N_CTX
    still_serving(client)


def test_a_prompt_one_token_short_of_the_context_gets_one_token(client: httpx.Client, token: int) -> None:
    r = client.post(COMPLETIONS, json={"prompt": [token] * (N_CTX - 1), "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1
    still_serving(client)


@pytest.mark.parametrize("path", [COMPLETIONS, CHATS])
def test_huge_max_tokens_with_a_short_prompt_streams(client: httpx.Client, path: str) -> None:
    """Accepted (not a 400): it streams until the client leaves."""
    body: dict[str, Any] = {"max_tokens": 10**9, "temperature": 0, "stream": True}
    body.update({"prompt": "Once upon a time"} if path == COMPLETIONS else {"messages": CHAT})
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            assert "error" not in line
            if got == 3:
                break
    assert got == 3
    still_serving(client)


@pytest.mark.parametrize("field, value", [("top_p", 2.0), ("top_p", -1.0), ("temperature", -1.0),
                                          ("top_k", -5), ("min_p", 1.5)])
def test_sampling_values_outside_openais_ranges_are_passed_on(client: httpx.Client, field: str,
                                                              value: float) -> None:
    # as llama-cpp-python's server: no range checks beyond what the sampler takes (OpenAI's API would
    # refuse top_p > 1 or a negative temperature); llama.cpp treats these as "off" or as greedy
    r = client.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 2, field: value})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    still_serving(client)


def test_numbers_given_as_strings_are_converted(client: httpx.Client) -> None:
    # pydantic's lax mode: "2" for an integer field is 2 (but "many" is a 400, above)
    r = client.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": "2", "temperature": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2
    still_serving(client)


def test_a_role_the_template_does_not_know(client: httpx.Client) -> None:
    # a template writes the role into the prompt as it is, so a free-form role could write any text
    # (control tokens included): roles are the OpenAI ones, anything else is a 400 naming the message
    body = {"messages": [{"role": "wizard", "content": "Hello"}], "max_tokens": 2, "temperature": 0}
    error = error_of(client.post(CHATS, json=body), 400)
    assert "messages[0].role" in error["message"] and "wizard" in error["message"]
    body["messages"] = [{"role": "<|im_end|>\n<|im_start|>system", "content": "Hello"}]
    error_of(client.post(CHATS, json=body), 400)
    still_serving(client)


def test_an_oversized_body(client: httpx.Client, greedy_text: str) -> None:
    """8 MiB of unknown field, under the default body limit (16 MiB, --max_body_bytes), are read and
    ignored; a body over the limit is a 413, never a 5xx (tests/test_hardening_server.py)."""
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "padding": "x" * (8 << 20)}
    r = client.post(COMPLETIONS, json=body)
    assert r.status_code in (200, 413), r.text[:300]
    if r.status_code == 200:
        assert r.json()["choices"][0]["text"] == greedy_text
    else:
        error_of(r, 413)
    still_serving(client)


def test_the_server_is_idle_after_the_bad_requests(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    deadline = time.monotonic() + 10
    while health["slots_processing"] and time.monotonic() < deadline:
        time.sleep(0.1)
        health = client.get("/health").json()
    assert health["slots_processing"] == 0, health
    assert all(m["queue"] == 0 for m in health["models"].values()), health

"""A short soak of the server: the request mix of ``scripts/soak_server.py`` (16 clients x 8 requests,
max_tokens <= 8), hostile requests included (``scripts/soak_cases.py``: some once crashed or wedged the
server), against a server process on a loopback port; then the process must be alive and well.

``python scripts/soak_server.py`` runs the full soak (64 clients x 500 requests) and also checks the
server's memory; this one runs in the suite.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from llama_rewire.server.settings import DEFAULT_MAX_BODY_BYTES

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 256  # llama.cpp pads the window to a multiple of 256: use one
PROMPT = "The capital of France is"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_server", ROOT / "scripts" / "soak_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load_soak()
cases = importlib.import_module("soak_cases")  # the request mix, which the script puts on sys.path


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    """A server process (a crash is its death, not the test run's) with the soak's steering vectors:
    (its URL, its Popen, its log)."""
    tmp = tmp_path_factory.mktemp("soak")
    steering = tmp / "steering"
    steering.mkdir()
    soak.write_steering_vectors(steering, smollm2_path)
    port = soak.free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = soak.start_server(str(smollm2_path), port, alias="smol", n_ctx=N_CTX, threads=2, n_parallel=2,
                                 extra=["--seed", "1234", "--steering_dir", str(steering)], log=log)
        try:
            assert soak.wait_until_up(proc, url, 180), log_path.read_text(errors="replace")[-3000:]
            yield url, proc, log_path
        finally:
            soak.stop_server(proc)


def greedy(client: httpx.Client) -> str:
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert isinstance(text, str) and text.strip()
    return text


def test_the_mix_is_seeded_and_has_every_kind() -> None:
    ctx = soak.Context(n_ctx=N_CTX, token=28, max_tokens=8, model=None, max_body_bytes=None, steering=True,
                       host_check=True, chat_base_tokens=30, n_models=1)

    def plan(seed: int, n: int = 500, hostile_rate: float = 0.03) -> list[Any]:
        rng = random.Random(f"{seed}:0")
        return [soak.make_case(rng, 0, i, ctx, disconnect_rate=0.05, malformed_rate=0.05,
                               hostile_rate=hostile_rate) for i in range(n)]

    first = plan(0)
    assert first == plan(0)
    assert first != plan(1)
    kinds = {case.kind for case in first}
    assert {"completion", "chat", "completion_stream", "chat_stream"} <= kinds
    assert any(kind.endswith("_disconnect") for kind in kinds)
    assert any(kind in soak.malformed_kinds(ctx) for kind in kinds)
    assert any(kind in soak.hostile_kinds(ctx) for kind in kinds)
    assert all(case.body["max_tokens"] <= max(32, ctx.max_tokens)
               for case in first if case.expect in ("ok", "disconnect") and case.group != "hostile")
    # with a higher rate, every hostile kind comes up; none is over the server's default body limit (a
    # 413 would not reach the check it probes), and each says what it must get
    hostile = [case for case in plan(0, 1000, 0.5) if case.group == "hostile"]
    assert {case.kind for case in hostile} == set(soak.hostile_kinds(ctx))
    for case in hostile:
        size = len(case.content) if case.content is not None else len(json.dumps(case.body))
        assert size < DEFAULT_MAX_BODY_BYTES, case.kind
        assert case.expect in ("4xx", "ok", "ok_or_4xx"), case.kind


def test_hostile_kinds_follow_what_the_server_offers() -> None:
    ctx = soak.Context(n_ctx=N_CTX, token=28, max_tokens=8, model="smol", max_body_bytes=None)
    kinds = soak.hostile_kinds(ctx)
    assert {"grammar_deep", "logit_bias_flood", "messages_many", "special_flood", "stops_many_long",
            "control_tokens_in_content"} <= set(kinds)
    assert not any(kind.startswith("steer") for kind in kinds)  # no steering directory with the vectors
    assert "foreign_host" not in kinds  # a server that answers any Host
    assert "prompt_18m" not in kinds  # no body limit known
    ctx.steering = ctx.host_check = True
    ctx.max_body_bytes = DEFAULT_MAX_BODY_BYTES
    kinds = soak.hostile_kinds(ctx)
    assert {"steer_alpha_1e308", "steer_name_loop", "foreign_host", "prompt_18m"} <= set(kinds)
    assert soak.hostile_case(ctx, "prompt_18m").code == "request_too_large"
    # the raw bodies name the model too; a request that names another keeps its own
    assert json.loads(soak.hostile_case(ctx, "messages_many").content)["model"] == "smol"
    assert soak.hostile_case(ctx, "model_name_huge").body["model"] == "m" * 100_000
    # control tokens typed in a message: the answer's prompt must be long enough for them to be text
    forged = soak.hostile_case(ctx, "control_tokens_in_content")
    assert forged.min_prompt_tokens is None  # unknown without the base measured
    ctx.chat_base_tokens = 30
    forged = soak.hostile_case(ctx, "control_tokens_in_content")
    assert forged.min_prompt_tokens == 30 + 3 * (4 + cases.FORGED_MARKERS) - 1


def test_the_checks_catch_what_the_probe_saw() -> None:
    """A hostile request answered the way it once was is reported, with why."""
    ctx = soak.Context(n_ctx=N_CTX, token=28, max_tokens=8, model=None, max_body_bytes=None, steering=True,
                       host_check=True, chat_base_tokens=30, n_models=1)

    def response(status: int, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("POST", "http://x/v1/completions"))

    def error(param: str | None, code: str | None = None) -> dict[str, Any]:
        return {"error": {"message": "no", "type": "invalid_request_error", "param": param, "code": code}}

    alpha = soak.hostile_case(ctx, "steer_alpha_1e38")
    assert soak._check_plain(alpha, response(400, error("steer.alpha")), N_CTX) is None
    assert "param" in str(soak._check_plain(alpha, response(400, error("steer")), N_CTX))
    assert "expected a 4xx" in str(soak._check_plain(alpha, response(200, {"choices": []}), N_CTX))
    names = soak.hostile_case(ctx, "steer_name_loop")
    assert "a 500" in str(soak._check_plain(names, response(500, error(None)), N_CTX))
    flood = soak.hostile_case(ctx, "special_flood")
    assert soak._check_plain(flood, response(400, error("prompt", "context_length_exceeded")), N_CTX) is None
    assert "code" in str(soak._check_plain(flood, response(400, error("prompt")), N_CTX))
    # control tokens typed in a message that became control tokens: the prompt is too short
    forged = soak.hostile_case(ctx, "control_tokens_in_content")

    def answer(prompt_tokens: int) -> dict[str, Any]:
        return {"choices": [{"message": {"content": "ok"}}],
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + 4}}

    assert soak._answer_problem(forged, answer(30 + 89), N_CTX) is None
    assert "control tokens" in str(soak._answer_problem(forged, answer(30 + 25), N_CTX))
    # a steering alpha within float32 may be answered or refused, never a 5xx
    big = soak.hostile_case(ctx, "steer_alpha_1e30")
    assert soak._check_plain(big, response(400, error("steer.alpha")), N_CTX) is None
    assert soak._check_plain(big, response(503, error(None)), N_CTX) is not None


def test_a_short_soak(server: tuple[str, Any, Path]) -> None:
    base_url, proc, log_path = server
    with httpx.Client(base_url=base_url, timeout=120) as client:
        before = greedy(client)
        # the RSS goal is loose (the full soak's is 5%), but rejected bodies that stay in memory (100 MiB
        # each, as they once did) still fail it
        config = soak.SoakConfig(clients=16, requests=8, seed=0, n_ctx=N_CTX, max_tokens=8,
                                 disconnect_rate=0.1, malformed_rate=0.15, hostile_rate=0.15, timeout=120,
                                 max_seconds=240, idle_timeout=30, monitor_interval=1.0, steering=True,
                                 rss_goal=25.0, max_body_bytes=DEFAULT_MAX_BODY_BYTES)
        report = soak.run_soak(base_url, config, pid=proc.pid, alive=lambda: proc.poll() is None,
                               log_path=log_path)
        seen = "\n".join(f"{e['kind']}: {e['problem']}\n    {e['request']}" for e in report.examples)
        assert report.server_alive, f"the server died: exit status {proc.poll()}\n{seen}"
        assert report.ran == report.planned == 128
        assert report.unexpected_5xx == 0, seen
        assert report.malformed_not_4xx == 0, seen
        assert report.unexpected == 0, seen
        assert (report.connection_errors, report.timeouts) == (0, 0), seen
        assert report.log_tracebacks == 0
        # the seeded mix did send bad and hostile requests and closed streams half-way
        assert report.malformed >= 8
        assert report.hostile >= 8
        every = soak.Context(N_CTX, 0, 8, None, DEFAULT_MAX_BODY_BYTES, steering=True, host_check=True)
        sent = {kind for kind in report.kinds if kind in soak.hostile_kinds(every)}
        assert sent == set(soak.hostile_kinds(every))  # the warm-up sends each kind once
        assert report.warmup_ran == len(cases.warmup_cases(every, malformed=True, hostile=True))
        assert report.rss_before_warmup_kib and report.rss_after_warmup_kib
        assert sum(n for kind, n in report.kinds.items() if kind.endswith("_disconnect")) >= 4
        assert report.statuses.get("400", 0) >= 4
        assert report.goals["RSS growth < 25.0%"], report.rss_series

        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert report.slots_idle_at_end, report.health_at_end
        assert health["slots_processing"] == 0
        assert all((m["slots_processing"], m["queue"]) == (0, 0) for m in health["models"].values())
        assert health["slots_idle"] == sum(m["n_parallel"] for m in health["models"].values())
        # the server still answers, and the same
        assert greedy(client) == before

        # the page the full soak's figures are recorded in
        page = soak.markdown(report, ["--clients", "16", "--requests", "8"])
        assert page.startswith("# Server soak\n")
        assert "`python scripts/soak_server.py --clients 16 --requests 8`" in page
        assert f"16 clients x 8 requests = 128 planned, {report.ran} ran" in page
        assert page.rstrip().endswith("```") and "\nPASS\n" in page

"""A short soak of the server: the request mix of ``scripts/soak_server.py`` (16 clients x 8 requests,
max_tokens <= 8) against a server on a loopback port, then the server must still be well.

``python scripts/soak_server.py`` runs the full soak (64 clients x 500 requests) on a server process and
also checks its memory; this one runs in the suite.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from serving import running

from llama_rewire.server import ModelSettings, Settings, create_app

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


def _slots() -> dict[str, int]:
    return {"n_parallel": 2}


@pytest.fixture(scope="module")
def base_url(smollm2_path: Path) -> Iterator[str]:
    settings = Settings(models=[ModelSettings(model=str(smollm2_path), model_alias="smol", n_ctx=N_CTX,
                                              n_threads=2, seed=1234, **_slots())])
    with running(create_app(settings)) as url:
        yield url


def greedy(client: httpx.Client) -> str:
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert isinstance(text, str) and text.strip()
    return text


def test_the_mix_is_seeded_and_has_every_kind() -> None:
    ctx = soak.Context(n_ctx=N_CTX, token=28, max_tokens=8, model=None, max_body_bytes=None)

    def plan(seed: int) -> list[Any]:
        rng = random.Random(f"{seed}:0")
        return [soak.make_case(rng, 0, i, ctx, disconnect_rate=0.05, malformed_rate=0.05) for i in range(500)]

    first = plan(0)
    assert first == plan(0)
    assert first != plan(1)
    kinds = {case.kind for case in first}
    assert {"completion", "chat", "completion_stream", "chat_stream"} <= kinds
    assert any(kind.endswith("_disconnect") for kind in kinds)
    assert any(kind in soak.malformed_kinds(ctx) for kind in kinds)
    assert all(case.body["max_tokens"] <= max(32, ctx.max_tokens)
               for case in first if case.expect in ("ok", "disconnect"))


def test_a_short_soak(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        before = greedy(client)
        config = soak.SoakConfig(clients=16, requests=8, seed=0, n_ctx=N_CTX, max_tokens=8,
                                 disconnect_rate=0.1, malformed_rate=0.15, timeout=120, max_seconds=240,
                                 idle_timeout=30, monitor_interval=1.0)
        report = soak.run_soak(base_url, config)
        seen = "\n".join(f"{e['kind']}: {e['problem']}\n    {e['request']}" for e in report.examples)
        assert report.ran == report.planned == 128
        assert report.unexpected_5xx == 0, seen
        assert report.malformed_not_4xx == 0, seen
        assert report.unexpected == 0, seen
        assert (report.connection_errors, report.timeouts) == (0, 0), seen
        # the seeded mix did send bad requests and closed streams half-way
        assert report.malformed >= 8
        assert sum(n for kind, n in report.kinds.items() if kind.endswith("_disconnect")) >= 4
        assert report.statuses.get("400", 0) >= 4

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

"""Soak the OpenAI-compatible server: K concurrent clients, R requests each, then check it is still well.

    python scripts/soak_server.py                                # 64 clients x 500 requests (the full soak)
    python scripts/soak_server.py --clients 16 --requests 20     # a short run
    python scripts/soak_server.py --n_parallel 8 --out benchmarks/RESULTS-soak.md   # the recorded run
    python scripts/soak_server.py --n_parallel 4 --json soak.json
    python scripts/soak_server.py --url http://127.0.0.1:8000 --pid 1234   # a server already running

The server (``python -m llama_rewire.server``, SmolLM2 by default) is started on a free loopback port and
always stopped at the end. Each client is a thread with its own httpx connection, sending a mix drawn
with a fixed seed: completions and chat completions, streamed or not, small ``max_tokens`` and short
unique prompts; ``--disconnect_rate`` of the requests close their stream after one or two events, and
``--malformed_rate`` are bad requests (bad JSON, wrong types, n=2, a prompt over the context, an
unknown model where several are served, ...) that must get a 4xx, or edge cases with a designed answer
(max_tokens=10**9 is capped at the context or refused with a 400; unknown fields are ignored; any model
name on a one-model server). ``--hostile_rate`` are hostile requests
(scripts/soak_cases.py: a grammar nested 50,000 deep, megabytes of logit_bias, prompt, messages or special
tokens, hundreds of long stop strings, steering beyond float32 or by bad names, a forged Host, ...) that
must get a 4xx with a clear error, or, legitimate but adversarial (control tokens typed in a message), a
normal answer. The server started here gets a steering directory with the soak's vectors; for a server
already running, ``--steering_dir`` names its directory (the soak writes its vectors there), else the
steering kinds are left out.

Goals (the exit status is 1 when one fails, 2 when the server does not start):
  no 5xx; every response as expected; no connection errors or timeouts; all requests ran in time;
  the server's RSS after the last requests within --rss_goal % of its RSS after the first 100 (a warm-up of
  one request of each kind, one at a time, comes first: what the server allocates once, for its largest
  batch or its first steering vector, is then in place, and the growth measures what accumulates);
  every slot idle at the end (once /health reports slots); /metrics has the required series (once it
  exists); the same greedy answer after the soak as before; the server alive, its log free of tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_cases import (  # the request mix, next to this script
    Case,
    Context,
    hostile_case,
    hostile_kinds,
    make_case,
    malformed_kinds,
    warmup_cases,
    write_steering_vectors,
)

__all__ = ["Case", "Context", "hostile_case", "hostile_kinds", "make_case", "malformed_kinds", "run_soak",
           "write_steering_vectors"]

REQUIRED_METRICS = ("llama_rewire_requests_total", "llama_rewire_prompt_tokens_total",
                    "llama_rewire_tokens_predicted_total", "llama_rewire_slots_processing",
                    "llama_rewire_queue_length")
GREEDY_PROMPT = "The capital of France is"
EXAMPLES_KEPT = 20


@dataclass
class SoakConfig:
    clients: int = 64
    requests: int = 500
    seed: int = 0
    n_ctx: int = 512  # the server's context window as it runs: the edge cases are sized by it
    max_tokens: int = 16
    disconnect_rate: float = 0.05
    malformed_rate: float = 0.05
    hostile_rate: float = 0.03
    timeout: float = 300.0  # seconds one request may take (it may wait for a slot)
    max_seconds: float = 7200.0  # no request starts after this
    idle_timeout: float = 60.0  # how long to wait for every slot to be idle at the end
    max_body_bytes: int | None = None  # the server's body size limit, if it has one
    rss_goal: float = 5.0  # percent
    rss_first_at: int = 100  # the first RSS sample: after this many requests
    monitor_interval: float = 2.0
    model: str | None = None  # the alias requests name (None: the server's first model)
    n_parallel: int | None = None  # the server's slots, as reported (None: its default)
    steering: bool = False  # the server's steering directory holds the soak's vectors (soak_cases)
    warmup: bool = True  # one request of each kind, one at a time, before the soak (soak_cases.warmup_cases)


@dataclass
class Outcome:
    status: int | None  # None: no response
    problem: str | None = None  # why the response was not the expected one
    failure: str | None = None  # "connection" or "timeout" when no response came
    seconds: float = 0.0


@dataclass
class SoakReport:
    config: dict[str, Any]
    planned: int = 0
    ran: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    unexpected_5xx: int = 0
    unexpected: int = 0  # responses not as expected, 5xx included
    malformed: int = 0
    malformed_not_4xx: int = 0  # malformed or hostile requests due a 4xx that did not get one
    hostile: int = 0
    kind_problems: dict[str, int] = field(default_factory=dict)  # responses not as expected, by kind
    kind_max_seconds: dict[str, float] = field(default_factory=dict)  # the slowest request of each kind
    connection_errors: int = 0
    timeouts: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    latency_p50: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None
    rss_first_kib: int | None = None
    rss_last_kib: int | None = None
    rss_max_kib: int | None = None
    rss_growth_pct: float | None = None
    rss_series: list[tuple[int, int]] = field(default_factory=list)  # (requests done, KiB)
    warmup_ran: int = 0  # requests sent one at a time before the soak (checked as the others)
    rss_before_warmup_kib: int | None = None
    rss_after_warmup_kib: int | None = None
    server_cpu_s: float | None = None  # the server's CPU time during the soak
    health_max_processing: int | None = None
    health_max_queue: int | None = None
    health_errors: int = 0
    slots_reported: bool = False
    slots_idle_at_end: bool | None = None
    slots_idle_after_s: float | None = None
    health_at_end: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    metrics_missing: list[str] | None = None
    greedy_before: str | None = None
    greedy_after: str | None = None
    server_alive: bool | None = None
    log_tracebacks: int | None = None
    goals: dict[str, bool | None] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(ok is not False for ok in self.goals.values())


# -- running one request ----------------------------------------------------------------------------------


def _error_problem(response: httpx.Response, code: str | None, param: str | None = None) -> str | None:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"a {response.status_code} without an OpenAI error body: {response.text[:200]!r}"
    if not isinstance(error, dict) or not error.get("message"):
        return f"a {response.status_code} with no error message: {response.text[:200]!r}"
    if code is not None and error.get("code") != code:
        return f"error code {error.get('code')!r}, expected {code!r}: {error.get('message')!r:.300}"
    if param is not None and error.get("param") != param:
        return f"error param {error.get('param')!r}, expected {param!r}: {error.get('message')!r:.300}"
    return None


def _answer_problem(case: Case, data: Any, n_ctx: int) -> str | None:
    """What is wrong with a non-streamed 200 answer, if anything."""
    try:
        choice = data["choices"][0]
        usage = data["usage"]
        text = choice["message"]["content"] if case.path.endswith("/chat/completions") else choice["text"]
    except (KeyError, IndexError, TypeError):
        return f"a 200 without choices/usage: {json.dumps(data)[:200]}"
    if not isinstance(text, (str, type(None))):
        return f"the answer's text is a {type(text).__name__}"
    if usage["total_tokens"] > n_ctx:
        return f"total_tokens {usage['total_tokens']} > n_ctx {n_ctx}"
    if case.min_prompt_tokens is not None and usage["prompt_tokens"] < case.min_prompt_tokens:
        return (f"prompt_tokens {usage['prompt_tokens']} < {case.min_prompt_tokens}: text in the request "
                "was read as control tokens")
    return None


def _events(response: httpx.Response, limit: int) -> list[str]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append(line[len("data: "):])
            if len(out) > limit:
                break
    return out


def _stream_problem(case: Case, events: list[str], limit: int, n_ctx: int) -> str | None:
    if len(events) > limit:
        return f"more than {limit} events"
    if not events or events[-1] != "[DONE]":
        return f"the stream did not end with [DONE] ({len(events)} events)"
    chunks = []
    for e in events[:-1]:
        try:
            chunks.append(json.loads(e))
        except ValueError:
            return f"an event that is not JSON: {e[:200]!r}"
    for chunk in chunks:
        if "error" in chunk:
            return f"an error event: {json.dumps(chunk)[:300]}"
    usage = next((ch["usage"] for ch in chunks if isinstance(ch.get("usage"), dict)), None)
    if usage is not None and usage.get("total_tokens", 0) > n_ctx:
        return f"total_tokens {usage['total_tokens']} > n_ctx {n_ctx}"
    if case.expect == "capped" and usage is None:
        return "no usage chunk (stream_options.include_usage was set)"
    return None


def run_case(http: httpx.Client, case: Case, n_ctx: int, rng: random.Random) -> Outcome:
    started = time.monotonic()
    limit = n_ctx + 8  # events a stream may send: one per token, plus role, usage and [DONE]
    try:
        if case.content is not None:
            headers = {"content-type": "application/json", **(case.headers or {})}
            r = http.post(case.path, content=case.content, headers=headers)
            outcome = Outcome(r.status_code, _check_plain(case, r, n_ctx))
        elif case.stream:
            with http.stream("POST", case.path, json=case.body, headers=case.headers) as r:
                if r.status_code != 200:
                    r.read()
                    outcome = Outcome(r.status_code, _check_plain(case, r, n_ctx))
                elif case.expect == "disconnect":
                    wanted = rng.randint(1, 2)
                    got = 0
                    for line in r.iter_lines():  # then close the response half-way
                        got += line.startswith("data: ")
                        if got >= wanted:
                            break
                    outcome = Outcome(200, None if got else "a stream with no events")
                else:
                    outcome = Outcome(200, _stream_problem(case, _events(r, limit), limit, n_ctx))
        else:
            r = http.post(case.path, json=case.body, headers=case.headers)
            outcome = Outcome(r.status_code, _check_plain(case, r, n_ctx))
    except httpx.TimeoutException as e:
        outcome = Outcome(None, f"timed out: {type(e).__name__}", failure="timeout")
    except httpx.TransportError as e:
        outcome = Outcome(None, f"connection error: {type(e).__name__}: {e}", failure="connection")
    outcome.seconds = time.monotonic() - started
    return outcome


def _check_plain(case: Case, r: httpx.Response, n_ctx: int) -> str | None:
    """The problem with a response read whole (a non-200 stream included)."""
    status = r.status_code
    if status >= 500:
        return f"a {status}: {r.text[:300]!r}"
    if case.expect == "4xx":
        if not 400 <= status < 500:
            return f"a {status}, expected a 4xx: {r.text[:200]!r}"
        return _error_problem(r, case.code, case.param)
    if (case.expect == "capped" and status == 400) or (case.expect == "ok_or_4xx" and 400 <= status < 500):
        return _error_problem(r, None)
    if status != 200:
        return f"a {status}, expected a 200: {r.text[:200]!r}"
    try:
        data = r.json()
    except ValueError:
        return f"a 200 that is not JSON: {r.text[:200]!r}"
    return _answer_problem(case, data, n_ctx)


# -- the server's state -----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None if it is gone or /proc has no such field)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slot_counts(health: dict[str, Any]) -> tuple[int, int] | None:
    """(slots processing, requests queued) over all models; None while /health does not report slots."""
    if "slots_processing" not in health:
        return None
    processing = int(health["slots_processing"])
    queued = 0
    for model in (health.get("models") or {}).values():
        processing = max(processing, int(model.get("slots_processing", 0)))
        queued += int(model.get("queue", 0))
    return processing, queued


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def greedy(http: httpx.Client, model: str | None) -> str | None:
    body = {"prompt": GREEDY_PROMPT, "max_tokens": 8, "temperature": 0, **({"model": model} if model else {})}
    try:
        r = http.post("/v1/completions", json=body)
    except httpx.TransportError:
        return None
    return str(r.json()["choices"][0]["text"]) if r.status_code == 200 else None


def plain_token(http: httpx.Client, model: str | None) -> int:
    """A token id for token-list prompts: the last token of ' hello'."""
    body = {"input": " hello", **({"model": model} if model else {})}
    r = http.post("/extras/tokenize", json=body)
    r.raise_for_status()
    return int(r.json()["tokens"][-1])


def chat_prompt_tokens(http: httpx.Client, model: str | None) -> int | None:
    """usage.prompt_tokens of a chat whose one message is "x" (None if the server does not answer it)."""
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "temperature": 0,
            **({"model": model} if model else {})}
    r = http.post("/v1/chat/completions", json=body)
    return int(r.json()["usage"]["prompt_tokens"]) if r.status_code == 200 else None


def served_models(http: httpx.Client) -> int:
    """How many models the server serves (GET /v1/models)."""
    r = http.get("/v1/models")
    r.raise_for_status()
    return len(r.json()["data"])


def _loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


# -- the soak -----------------------------------------------------------------------------------------


class _Tally:
    """The outcomes so far; shared by the client threads."""

    def __init__(self, pid: int | None, rss_first_at: int) -> None:
        self.lock = threading.Lock()
        self.pid = pid
        self.rss_first_at = rss_first_at
        self.done = self.warmup = 0
        self.statuses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.unexpected = self.unexpected_5xx = self.malformed = self.malformed_not_4xx = self.hostile = 0
        self.kind_problems: Counter[str] = Counter()
        self.kind_max_seconds: dict[str, float] = {}
        self.connection_errors = self.timeouts = 0
        self.examples: list[dict[str, Any]] = []
        self.rss_first: int | None = None
        self.rss_series: list[tuple[int, int]] = []

    def add(self, case: Case, outcome: Outcome, client: int, index: int, *, warmup: bool = False) -> None:
        """Count an outcome; a warm-up request is checked and counted as the others are, but it is not
        one of the soak's planned requests (``done``)."""
        with self.lock:
            self.done += not warmup
            self.warmup += warmup
            self.kinds[case.kind] += 1
            status = str(outcome.status) if outcome.status is not None else outcome.failure or "none"
            self.statuses[status] += 1
            self.latencies.append(outcome.seconds)
            slowest = self.kind_max_seconds.get(case.kind, 0.0)
            self.kind_max_seconds[case.kind] = max(slowest, round(outcome.seconds, 3))
            if case.group == "hostile":
                self.hostile += 1
            elif case.group == "malformed":
                self.malformed += 1
            if case.expect == "4xx" and not (outcome.status is not None and 400 <= outcome.status < 500):
                self.malformed_not_4xx += 1
            if outcome.failure == "timeout":
                self.timeouts += 1
            elif outcome.failure == "connection":
                self.connection_errors += 1
            elif outcome.status is not None and outcome.status >= 500:
                self.unexpected_5xx += 1
            if outcome.problem is not None:
                self.kind_problems[case.kind] += 1
                if outcome.failure is None:
                    self.unexpected += 1
                if len(self.examples) < EXAMPLES_KEPT:
                    self.examples.append({"client": client, "index": index, "kind": case.kind,
                                          "request": case.describe(), "status": outcome.status,
                                          "problem": outcome.problem})
            done = self.done
        if self.pid is not None and not warmup and done == self.rss_first_at:
            rss = rss_kib(self.pid)
            with self.lock:
                self.rss_first = rss
                if rss is not None:
                    self.rss_series.append((done, rss))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _monitor(base_url: str, pid: int | None, tally: _Tally, report: SoakReport, stop: threading.Event,
             interval: float) -> None:
    """Samples /health and the RSS until stopped."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        while not stop.wait(interval):
            try:
                health = http.get("/health").json()
            except (httpx.TransportError, ValueError):
                report.health_errors += 1
                continue
            counts = slot_counts(health)
            if counts is not None:
                report.health_max_processing = max(report.health_max_processing or 0, counts[0])
                report.health_max_queue = max(report.health_max_queue or 0, counts[1])
            if pid is not None and (rss := rss_kib(pid)) is not None:
                with tally.lock:
                    tally.rss_series.append((tally.done, rss))


def _wait_idle(http: httpx.Client, report: SoakReport, timeout: float) -> None:
    """Until every slot is idle and nothing is queued (bounded by ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            health = http.get("/health").json()
        except (httpx.TransportError, ValueError):
            health = None
        if health is not None:
            report.health_at_end = health
            counts = slot_counts(health)
            if counts is None:  # this server does not report slots
                return
            report.slots_reported = True
            if counts == (0, 0):
                report.slots_idle_at_end = True
                report.slots_idle_after_s = round(time.monotonic() - started, 2)
                return
        if time.monotonic() - started > timeout:
            report.slots_idle_at_end = False
            return
        time.sleep(0.2)


def run_soak(base_url: str, config: SoakConfig, pid: int | None = None,
             alive: Callable[[], bool] | None = None, log_path: Path | None = None) -> SoakReport:
    """Soak the server at ``base_url`` (its process ``pid``, if known, for the RSS) and report."""
    report = SoakReport(config=asdict(config), planned=config.clients * config.requests)
    http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(config.timeout, connect=10))
    try:
        ctx = Context(config.n_ctx, plain_token(http, config.model), config.max_tokens, config.model,
                      config.max_body_bytes, steering=config.steering, host_check=_loopback(base_url),
                      chat_base_tokens=chat_prompt_tokens(http, config.model), n_models=served_models(http))
        if config.hostile_rate > 0:
            for kind in hostile_kinds(ctx):  # build the big bodies now, not while the clients wait
                hostile_case(ctx, kind)
        report.greedy_before = greedy(http, config.model)
        first_at = max(1, min(config.rss_first_at, report.planned // 2))
        tally = _Tally(pid, first_at)
        if config.warmup:
            report.rss_before_warmup_kib = rss_kib(pid) if pid is not None else None
            warmup_rng = random.Random(f"{config.seed}:warmup")
            for index, case in enumerate(warmup_cases(ctx, malformed=config.malformed_rate > 0,
                                                      hostile=config.hostile_rate > 0)):
                tally.add(case, run_case(http, case, config.n_ctx, warmup_rng), -1, index, warmup=True)
            report.warmup_ran = tally.warmup
            report.rss_after_warmup_kib = rss_kib(pid) if pid is not None else None
        stop = threading.Event()
        cpu_before = cpu_seconds(pid) if pid is not None else None
        deadline = time.monotonic() + config.max_seconds
        started = time.monotonic()

        def client_loop(client: int) -> None:
            rng = random.Random(f"{config.seed}:{client}")
            timeout = httpx.Timeout(config.timeout, connect=10)
            with httpx.Client(base_url=base_url, timeout=timeout) as own:
                for index in range(config.requests):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    case = make_case(rng, client, index, ctx, disconnect_rate=config.disconnect_rate,
                                     malformed_rate=config.malformed_rate, hostile_rate=config.hostile_rate)
                    tally.add(case, run_case(own, case, config.n_ctx, rng), client, index)

        monitor = threading.Thread(target=_monitor, daemon=True,
                                   args=(base_url, pid, tally, report, stop, config.monitor_interval))
        monitor.start()
        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True)
                   for i in range(config.clients)]
        for t in threads:
            t.start()
        # each request is bounded by its timeout, so the clients end by then
        join_by = deadline + config.timeout + 30
        for t in threads:
            t.join(max(0.0, join_by - time.monotonic()))
        stop.set()
        monitor.join(config.monitor_interval + 15)
        report.seconds = round(time.monotonic() - started, 2)
        stuck = sum(t.is_alive() for t in threads)

        with tally.lock:
            report.ran = tally.done
            report.statuses = dict(sorted(tally.statuses.items()))
            report.kinds = dict(sorted(tally.kinds.items()))
            for name in ("unexpected", "unexpected_5xx", "malformed", "malformed_not_4xx", "hostile",
                         "connection_errors", "timeouts", "examples"):
                setattr(report, name, getattr(tally, name))
            report.kind_problems = dict(sorted(tally.kind_problems.items()))
            report.kind_max_seconds = dict(sorted(tally.kind_max_seconds.items(), key=lambda kv: -kv[1]))
            latencies = list(tally.latencies)
        report.latency_p50 = _percentile(latencies, 0.5)
        report.latency_p99 = _percentile(latencies, 0.99)
        report.latency_max = round(max(latencies), 3) if latencies else None
        if pid is not None:
            cpu_after = cpu_seconds(pid)
            if cpu_before is not None and cpu_after is not None:
                report.server_cpu_s = round(cpu_after - cpu_before, 2)
            report.rss_first_kib = tally.rss_first
            report.rss_last_kib = rss_kib(pid)  # after the last requests
            if report.rss_last_kib is not None:
                tally.rss_series.append((report.ran, report.rss_last_kib))
            report.rss_series = tally.rss_series
            report.rss_max_kib = max((kib for _, kib in tally.rss_series), default=None)
            if report.rss_first_kib and report.rss_last_kib:
                growth = 100.0 * (report.rss_last_kib - report.rss_first_kib) / report.rss_first_kib
                report.rss_growth_pct = round(growth, 2)

        _wait_idle(http, report, config.idle_timeout)
        try:
            r = http.get("/metrics")
            if r.status_code == 200:
                report.metrics = parse_metrics(r.text)
                names = {key.partition("{")[0] for key in report.metrics}
                names |= {line.split()[2] for line in r.text.splitlines() if line.startswith("# TYPE ")}
                report.metrics_missing = [m for m in REQUIRED_METRICS if m not in names]
        except httpx.TransportError:
            pass
        report.greedy_after = greedy(http, config.model)
    finally:
        http.close()
    report.server_alive = alive() if alive is not None else None
    if log_path is not None and log_path.exists():
        log_text = log_path.read_text(errors="replace")
        report.log_tracebacks = log_text.count("Traceback (most recent call last)")

    g = report.goals
    g["no 5xx"] = report.unexpected_5xx == 0
    g["every response as expected"] = report.unexpected == 0
    g["malformed and hostile requests got a 4xx"] = report.malformed_not_4xx == 0
    g["no connection errors or timeouts"] = report.connection_errors == 0 and report.timeouts == 0
    g["all requests ran in time"] = report.ran == report.planned and stuck == 0
    g[f"RSS growth < {config.rss_goal}%"] = (None if report.rss_growth_pct is None
                                             else report.rss_growth_pct < config.rss_goal)
    g["every slot idle at the end"] = report.slots_idle_at_end  # None: /health reports no slots
    g["/metrics has the required series"] = (None if report.metrics_missing is None
                                             else not report.metrics_missing)
    g["same greedy answer after the soak"] = (report.greedy_before is not None
                                              and report.greedy_after == report.greedy_before)
    g["server alive"] = report.server_alive
    g["no tracebacks in the server log"] = (None if report.log_tracebacks is None
                                            else report.log_tracebacks == 0)
    return report


# -- the server process -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, port: int, *, alias: str, n_ctx: int, threads: int, n_parallel: int | None,
                 extra: list[str], log: Any) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "llama_rewire.server", model, "--model_alias", alias, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
    if n_parallel is not None:
        cmd += ["--n_parallel", str(n_parallel)]
    return subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen[bytes], base_url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the summary ------------------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def summary(report: SoakReport) -> str:
    c = report.config
    rate = report.ran / report.seconds if report.seconds else 0.0
    lines = [
        f"soak: {c['clients']} clients x {c['requests']} requests = {report.planned} planned, "
        f"{report.ran} ran in {report.seconds:.1f} s ({rate:.1f} requests/s)"
        + (f", after {report.warmup_ran} warm-up requests (one of each kind, one at a time)"
           if report.warmup_ran else ""),
        "status codes: " + ", ".join(f"{k}: {v}" for k, v in report.statuses.items()),
        "kinds: " + ", ".join(f"{k} {v}" for k, v in report.kinds.items()),
        f"latency: p50 {report.latency_p50} s, p99 {report.latency_p99} s, max {report.latency_max} s; "
        f"server CPU time {report.server_cpu_s} s",
        "slowest kinds (their slowest request): " + ", ".join(
            f"{k} {v} s" for k, v in list(report.kind_max_seconds.items())[:6]),
        f"malformed/edge requests: {report.malformed}; hostile requests: {report.hostile}; "
        f"{report.malformed_not_4xx} of those due a 4xx did not get one",
        f"unexpected 5xx: {report.unexpected_5xx}; unexpected responses: {report.unexpected}; "
        f"connection errors: {report.connection_errors}; timeouts: {report.timeouts}",
    ]
    if report.kind_problems:
        lines.append("not as expected, by kind: " + ", ".join(f"{k} {v}/{report.kinds.get(k, 0)}"
                                                              for k, v in report.kind_problems.items()))
    if report.rss_first_kib is not None or report.rss_last_kib is not None:
        first_at = max(1, min(c["rss_first_at"], report.planned // 2))
        lines.append(f"server RSS: {_mib(report.rss_first_kib)} after the first {first_at} requests, "
                     f"{_mib(report.rss_last_kib)} after the last (growth {report.rss_growth_pct}%), "
                     f"max {_mib(report.rss_max_kib)}"
                     + (f"; before the warm-up {_mib(report.rss_before_warmup_kib)}, after it "
                        f"{_mib(report.rss_after_warmup_kib)}" if report.rss_before_warmup_kib else ""))
    if report.slots_reported:
        state = ("all idle after " + f"{report.slots_idle_after_s} s" if report.slots_idle_at_end
                 else f"NOT idle after {c['idle_timeout']} s: {json.dumps(report.health_at_end)}")
        lines.append(f"slots: {state}; most seen processing {report.health_max_processing}, "
                     f"longest queue {report.health_max_queue}")
    else:
        lines.append("slots: /health reports none")
    if report.health_errors:
        lines.append(f"/health did not answer {report.health_errors} times during the run")
    if report.metrics is not None:
        shown = {k: v for k, v in report.metrics.items() if k.partition("{")[0] in REQUIRED_METRICS}
        lines.append("metrics: " + ", ".join(f"{k} {v:g}" for k, v in shown.items()))
        if report.metrics_missing:
            lines.append("metrics missing: " + ", ".join(report.metrics_missing))
    lines.append(f"greedy answer: before {report.greedy_before!r}, after {report.greedy_after!r}")
    if report.log_tracebacks is not None:
        lines.append(f"tracebacks in the server log: {report.log_tracebacks}")
    for ex in report.examples:
        lines.append(f"  ! client {ex['client']} request {ex['index']} ({ex['kind']}): {ex['problem']}\n"
                     f"      {ex['request']}")
    lines.append("goals:")
    for name, ok in report.goals.items():
        lines.append(f"  {'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def markdown(report: SoakReport, argv: list[str], finished: float | None = None) -> str:
    """The report as a page for the benchmarks folder: when (the run ended at ``finished``, a time.time();
    default now), where, the command, the summary and the server's RSS along the run."""
    from llama_rewire import system_info

    cpu = system_info()["cpu_model"]
    end = time.time() if finished is None else finished
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end - report.seconds))
    step = max(1, len(report.rss_series) // 12)
    series = report.rss_series[::step]
    if report.rss_series and series[-1] != report.rss_series[-1]:
        series.append(report.rss_series[-1])
    rss = ", ".join(f"{done}: {_mib(kib)}" for done, kib in series) or "n/a"
    return "\n".join([
        "# Server soak", "",
        "Written by `scripts/soak_server.py --out`; do not edit by hand.", "",
        f"- Date: {started}",
        f"- Machine: {cpu}, {os.cpu_count()} logical cores; {platform.platform()}",
        "- Command: `python scripts/soak_server.py " + " ".join(shlex.quote(a) for a in argv) + "`",
        f"- Server RSS after N requests (N: RSS): {rss}", "",
        "```", summary(report), "```", "",
    ])


# -- the command line -------------------------------------------------------------------------------------


def _flag(name: str) -> list[str]:
    return [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SoakConfig()
    p.add_argument("--clients", type=int, default=d.clients, help="concurrent clients (threads)")
    p.add_argument("--requests", type=int, default=d.requests, help="requests per client")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the request mix")
    p.add_argument(*_flag("max_tokens"), type=int, default=d.max_tokens,
                   help="largest max_tokens of a request")
    p.add_argument(*_flag("disconnect_rate"), type=float, default=d.disconnect_rate)
    p.add_argument(*_flag("malformed_rate"), type=float, default=d.malformed_rate)
    p.add_argument(*_flag("hostile_rate"), type=float, default=d.hostile_rate,
                   help="the share of hostile requests (scripts/soak_cases.py)")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds one request may take")
    p.add_argument(*_flag("max_seconds"), type=float, default=d.max_seconds,
                   help="no request starts after this many seconds")
    p.add_argument(*_flag("idle_timeout"), type=float, default=d.idle_timeout)
    p.add_argument(*_flag("max_body_bytes"), type=int, default=None,
                   help="the server's request body limit, if it has one: a bigger body must get a 4xx")
    p.add_argument(*_flag("rss_goal"), type=float, default=d.rss_goal, help="largest RSS growth, percent")
    p.add_argument(*_flag("no_warmup"), action="store_true",
                   help="start the soak without first sending one request of each kind")
    p.add_argument("--model", default="smollm2", help="a known model name or a GGUF file")
    p.add_argument(*_flag("n_parallel"), type=int, default=None, help="the server's slots (default: its own)")
    p.add_argument(*_flag("n_ctx"), type=int, default=d.n_ctx,
                   help="the server's context window (llama.cpp pads it to a multiple of 256)")
    p.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    p.add_argument(*_flag("server_args"), default="", help="more server options, as one shell-quoted string")
    p.add_argument("--url", default=None, help="soak this running server instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's process, for its RSS")
    p.add_argument(*_flag("steering_dir"), type=Path, default=None,
                   help="with --url: the server's --steering_dir; the soak writes its vectors there (for the "
                        "model --model names) and sends steered requests")
    p.add_argument(*_flag("startup_timeout"), type=float, default=180.0)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--out", type=Path, default=None, help="write the report as markdown here")
    args = p.parse_args(argv)

    # llama.cpp pads the context window to a multiple of 256 tokens
    window = -(-args.n_ctx // 256) * 256
    config = SoakConfig(clients=args.clients, requests=args.requests, seed=args.seed, n_ctx=window,
                        max_tokens=args.max_tokens, disconnect_rate=args.disconnect_rate,
                        malformed_rate=args.malformed_rate, hostile_rate=args.hostile_rate,
                        timeout=args.timeout, max_seconds=args.max_seconds, idle_timeout=args.idle_timeout,
                        max_body_bytes=args.max_body_bytes, rss_goal=args.rss_goal,
                        n_parallel=args.n_parallel, warmup=not args.no_warmup)
    from llama_rewire.models import resolve

    if args.url is not None:
        pid = args.pid
        if args.steering_dir is not None:
            write_steering_vectors(args.steering_dir, resolve(args.model))
            config.steering = True
        report = run_soak(args.url.rstrip("/"), config, pid=pid,
                          alive=(lambda: Path(f"/proc/{pid}").exists()) if pid else None)
    else:
        from llama_rewire.server.settings import DEFAULT_MAX_BODY_BYTES

        model = str(resolve(args.model))
        if config.max_body_bytes is None and "max_body_bytes" not in args.server_args.replace("-", "_"):
            config.max_body_bytes = DEFAULT_MAX_BODY_BYTES  # the server's own limit
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(tmp) / "server.log"
            steering_dir = Path(tmp) / "steering"
            steering_dir.mkdir()
            write_steering_vectors(steering_dir, model)
            config.steering = True
            extra = ["--steering_dir", str(steering_dir), *shlex.split(args.server_args)]
            with log_path.open("wb") as log:
                proc = start_server(model, port, alias=Path(args.model).stem, n_ctx=args.n_ctx,
                                    threads=args.threads, n_parallel=args.n_parallel, extra=extra, log=log)
                try:
                    if not wait_until_up(proc, base_url, args.startup_timeout):
                        print(f"the server did not come up; its log:\n{_tail(log_path)}", file=sys.stderr)
                        return 2
                    print(f"server pid {proc.pid} on {base_url} (n_parallel {args.n_parallel or 'default'}, "
                          f"n_ctx {args.n_ctx}); soaking...", flush=True)
                    report = run_soak(base_url, config, pid=proc.pid, alive=lambda: proc.poll() is None,
                                      log_path=log_path)
                    if proc.poll() is not None:
                        print(f"the server died during the soak: exit status {proc.returncode} (a negative "
                              "status is the signal that killed it)", flush=True)
                finally:
                    stop_server(proc)
            if report.log_tracebacks or not report.server_alive:
                print(f"server log (tail):\n{_tail(log_path, 60)}")
    print(summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if args.out is not None:
        args.out.write_text(markdown(report, sys.argv[1:] if argv is None else argv))
    return 0 if report.passed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

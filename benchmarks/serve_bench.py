"""Throughput and latency of OpenAI-compatible HTTP servers under concurrent clients, over loopback:
llama-rewire's server, llama.cpp's llama-server and llama-cpp-python's server, on the same model.

    python benchmarks/serve_bench.py setup                 # build llama-server, the llama-cpp-python venv
    python benchmarks/serve_bench.py run [--quick]         # measure, write benchmarks/RESULTS-serve.md
    python benchmarks/serve_bench.py run --ours-baseline   # ours without --n_parallel: one request at a time

For each model, server and number of concurrent clients C, the server is started here as a subprocess on
127.0.0.1 (a free port), waited for (GET /health, else /v1/models), warmed up, measured, and stopped.
Each of the C clients is a thread with its own httpx.Client that sends its requests one after the other:
/v1/completions, streamed (SSE), temperature 0, ``max_tokens`` 128, a prompt of 128-512 tokens that no
other request shares (numbered sentences of random words, the same prompts for every server). A
repetition's tokens/s is the sum of the servers' ``usage.completion_tokens`` over its wall time; time to
first token (TTFT) is from sending a request to the first chunk with text. A server that reports no
usage has its text chunks counted instead (the report says so).

Only the standard library and httpx are used here; the servers run in their own environments: ours with
this interpreter (``python -m llama_rewire.cli serve``), llama-cpp-python's in the virtual environment
that ``setup`` builds (scripts/peers.py), llama-server from the same patched llama.cpp tree as ours.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (machine info and the noise meter; it puts scripts/ on sys.path)
import peers  # noqa: E402

# --- the servers' settings --------------------------------------------------------------------------
# The flag that gives our server its parallel slots. It is new: a server that rejects it is reported
# as such, and --ours-baseline runs ours without it (one request at a time).
OURS_PARALLEL_FLAG = "--n_parallel"
N_CTX_SLOT = 2048  # tokens of context per slot, in every server
N_BATCH = 512  # n_batch = n_ubatch: our server's default and llama-cpp-python's
DEFAULT_VENV = HERE / ".venv-lcpp"
DEFAULT_BUILD = peers.DEFAULT_TOOLS_BUILD
DEFAULT_MODELS = ("smollm2",)
SERVERS = ("ours", "ours-baseline", "llama-server", "lcpp")
DEFAULT_SERVERS = ("ours", "llama-server", "lcpp")
LABELS = {"ours": "llama-rewire", "ours-baseline": "llama-rewire (no --n_parallel)",
          "llama-server": "llama-server", "lcpp": "llama-cpp-python"}  # fmt: skip
OURS = ("ours", "ours-baseline")
PEERS = ("llama-server", "lcpp")

# --- the load ---------------------------------------------------------------------------------------
DEFAULT_CONCURRENCY = (1, 4, 8, 16)
QUICK_CONCURRENCY = (1, 4)
PROMPT_TOKENS = (128, 512)  # each prompt's length is drawn from this range (estimated; usage measures it)
WARMUP_PROMPT_TOKENS = (32, 64)
MAX_TOKENS, QUICK_MAX_TOKENS = 128, 32
WARMUP_MAX_TOKENS = 8
REQUESTS_PER_CLIENT = 2  # per repetition
REPS = 3
SEED = 20260301

# --- bounds -----------------------------------------------------------------------------------------
READY_TIMEOUT_S = 300.0  # from the server's start to its first ready answer (the model loads meanwhile)
REQUEST_TIMEOUT_S = 300.0  # one request, from sending it to its last chunk (queued ones wait long)
RUN_DEADLINE_S = 600.0  # one repetition (or warm-up): no request starts after it, running ones are cut
STOP_TIMEOUT_S = 15.0  # from SIGTERM to SIGKILL
CONNECT_TIMEOUT_S = 10.0
POLL_S = 0.25


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_models_module() -> ModuleType:
    """llama_rewire.models by file path: it uses only the standard library, so neither the package nor
    its extension is imported into this process."""
    path = ROOT / "src" / "llama_rewire" / "models.py"
    spec = importlib.util.spec_from_file_location("llama_rewire_models", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- prompts

_WORDS = (
    "apple river stone cloud garden window silver morning candle forest bridge yellow market winter "
    "engine paper little mountain orange quiet ocean teacher basket music village letter purple summer "
    "island copper honest kitchen ladder meadow needle pocket rabbit saddle timber velvet wagon anchor "
    "bottle castle desert feather gentle harbor jacket lantern mirror nickel pepper rocket shadow tunnel "
    "valley whistle blanket cotton dragon eagle falcon glacier hammer jungle kettle lemon marble noodle "
    "orchard parrot quarter ribbon sponge tomato umbrella violin walnut zebra bright cold dark early "
    "fast green heavy narrow open proud rapid soft tall warm wide young brave calm clever eager fierce "
    "happy jolly kind lively nice plain rare sharp tidy vast wild runs walks sings reads writes builds "
    "carries finds opens paints plants pulls pushes sells throws wakes watches counts draws drinks "
    "eats flies grows jumps keeps laughs moves rests swims turns visits waits the a one every some "
    "under over near behind beside after before during across through"
)
WORDS = tuple(_WORDS.split())


def estimate_tokens(text: str) -> int:
    """About what a BPE tokenizer makes of the text below: a token per word, digit and punctuation."""
    return len(text.split()) + sum(c.isdigit() or c in ".:," for c in text)


def make_prompt(seed: int, key: str, tokens: tuple[int, int] = PROMPT_TOKENS) -> str:
    """A deterministic prompt for key, of a length drawn from `tokens` (estimated): numbered sentences of
    random words, ending with the next number so that the model goes on writing. No two keys share more
    than a few leading tokens."""
    rng = random.Random(f"{seed}:{key}")
    target = rng.randint(*tokens)
    parts: list[str] = []
    n = rng.randint(1, 900)
    used = 0
    while used < target:
        words = rng.choices(WORDS, k=rng.randint(5, 14))
        sentence = f"{n}: {' '.join(words).capitalize()}."
        parts.append(sentence)
        used += estimate_tokens(sentence)
        n += 1
    return " ".join(parts) + f" {n}:"


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(key: str, model: str, c: str, n_ctx_total: str, port: str,
                   args: argparse.Namespace) -> list[str]:  # fmt: skip
    """The command line that starts server `key` for C concurrent clients (strings, so that the report can
    show it with placeholders)."""
    t = str(args.threads)
    host = ["--host", "127.0.0.1", "--port", port]
    if key in OURS:
        cmd = [args.ours_python, "-m", "llama_rewire.cli", "serve", model, "--n_ctx", str(N_CTX_SLOT),
               "--n_threads", t, "--n_batch", str(N_BATCH), *host]  # fmt: skip
        return cmd if key == "ours-baseline" else [*cmd, OURS_PARALLEL_FLAG, c]
    if key == "llama-server":
        return [
            args.llama_server, "-m", model,
            "-np", c, "-c", n_ctx_total,  # C slots of N_CTX_SLOT each
            "--no-kv-unified",  # one KV stream per slot (the default only when -np is given; auto is unified)
            "-t", t, "-tb", t, "-b", str(N_BATCH), "-ub", str(N_BATCH),
            "-fa", "off",  # the default is auto; ours and llama-cpp-python default to no flash attention
            "-ngl", "0", "--fit", "off",  # CPU only, and the context exactly as asked
            "--cache-ram", "0",  # no host-memory prompt cache: the prompts are never reused
            "--no-webui", *host,
        ]  # fmt: skip
    if key == "lcpp":
        return [args.lcpp_python, "-m", "llama_cpp.server", "--model", model, "--n_ctx", str(N_CTX_SLOT),
                "--n_threads", t, "--n_threads_batch", t, "--n_batch", str(N_BATCH),
                "--n_ubatch", str(N_BATCH),
                "--interrupt_requests", "False",  # the default True: a new request stops the one streaming
                *host]  # fmt: skip
    raise ValueError(key)


def restarts_per_c(key: str) -> bool:
    """Whether the server's command line depends on C (its slots); others serve every C in one process."""
    return key in ("ours", "llama-server")


class ServerError(RuntimeError):
    pass


class Server:
    """A server subprocess with its log in a file; stop() always reaps it (terminate, then kill)."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
        self.rss_kb = 0
        self.cpu_s = 0.0
        self.returncode: int | None = None
        with log_path.open("wb") as out:
            # its own session: a Ctrl-C reaches this process only, which then stops the server
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, start_new_session=True)  # fmt: skip

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds until GET /health (or, where it is missing, /v1/models) answers 200."""
        start = time.monotonic()
        paths = ["/health", "/v1/models"]
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while time.monotonic() - start < timeout:
                if self.proc.poll() is not None:
                    raise ServerError(f"exited with {self.proc.returncode} before it was ready:\n"
                                      + self.log_tail())  # fmt: skip
                try:
                    r = client.get(paths[0])
                    if r.status_code == 200:
                        return time.monotonic() - start
                    if r.status_code == 404 and len(paths) > 1:
                        paths.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        raise ServerError(f"not ready after {timeout:.0f} s:\n" + self.log_tail())

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT_S; records the exit status, peak RSS and CPU time."""
        if self.proc.returncode is not None:  # exited by itself, reaped by poll()
            self.returncode = self.proc.returncode
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                _, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        self.proc.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.rss_kb = bench.rss_kb(usage)
        self.cpu_s = usage.ru_utime + usage.ru_stime


def describe_start_failure(key: str, error: ServerError) -> str:
    text = str(error)
    first = next((line.strip() for line in text.splitlines()[1:] if "error" in line.lower()), "")
    if key == "ours" and OURS_PARALLEL_FLAG.lstrip("-") in first:
        return (f"our server rejects {OURS_PARALLEL_FLAG} ({first}); `--ours-baseline` measures it "
                "without (one request at a time)")  # fmt: skip
    return text.splitlines()[0] + (f": {first}" if first else "")


# --------------------------------------------------------------------------- clients


@dataclass
class Request:
    key: str  # the prompt's key
    ok: bool = False
    error: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text_chunks: int = 0  # chunks with text: the completion tokens where a server reports no usage
    ttft_s: float | None = None
    latency_s: float = 0.0
    finish_reason: str | None = None
    timings: dict[str, Any] | None = None  # llama-server's own, in its last chunk
    retries: int = 0  # sent again after a kept-alive connection was lost before any answer
    status: int | None = None  # the HTTP status, once the answer's headers came

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.text_chunks


def stream_completion(client: httpx.Client, body: dict[str, Any], req: Request, deadline: float) -> None:
    """POST /v1/completions with stream=true and fill req from its SSE chunks; never raises. A request
    that a kept-alive connection loses before any answer is sent again once, on a new connection: the
    race every HTTP client meets when a server closes an idle connection (llama-server does so often)."""
    start = time.monotonic()
    try:
        for attempt in range(2):
            budget = min(REQUEST_TIMEOUT_S, deadline - time.monotonic())
            if budget <= 0:
                req.error = "deadline passed before it was sent"
                return
            timeout = httpx.Timeout(budget, connect=min(CONNECT_TIMEOUT_S, budget))
            try:
                with client.stream("POST", "/v1/completions", json=body, timeout=timeout) as r:
                    req.status = r.status_code
                    read_stream(r, req, start, min(deadline, start + REQUEST_TIMEOUT_S))
                return
            except httpx.RemoteProtocolError:
                if attempt or req.status is not None:
                    raise
                req.retries += 1
    except (httpx.HTTPError, json.JSONDecodeError, ValueError) as e:
        req.error = f"{type(e).__name__}: {e}"[:200]
    finally:
        req.latency_s = time.monotonic() - start


def read_stream(r: httpx.Response, req: Request, start: float, deadline: float) -> None:
    if r.status_code != 200:
        req.error = f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:200]}"
        return
    done = False
    # read to the end of the body, past [DONE]: a response left unread would close the connection
    for line in r.iter_lines():
        if time.monotonic() > deadline:
            req.error = "timed out while streaming"
            return
        if done or not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        read_chunk(json.loads(data), req, start)
    if not done and req.finish_reason is None:
        req.error = "stream ended without [DONE] or a finish_reason"
        return
    req.ok = True


def read_chunk(chunk: dict[str, Any], req: Request, start: float) -> None:
    if "error" in chunk:
        raise ValueError(f"error chunk: {json.dumps(chunk['error'])[:160]}")
    for choice in chunk.get("choices") or ():
        if choice.get("text"):
            req.text_chunks += 1
            if req.ttft_s is None:
                req.ttft_s = time.monotonic() - start
        if choice.get("finish_reason"):
            req.finish_reason = choice["finish_reason"]
    usage = chunk.get("usage")
    if isinstance(usage, dict):  # ours and llama-server: a last chunk; llama-server adds its timings
        req.prompt_tokens = usage.get("prompt_tokens", req.prompt_tokens)
        req.completion_tokens = usage.get("completion_tokens", req.completion_tokens)
    if isinstance(chunk.get("timings"), dict):
        req.timings = chunk["timings"]


@dataclass
class Run:
    model: str
    server: str
    c: int
    rep: int  # 0: the warm-up
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    requests: list[Request] = field(default_factory=list)

    @property
    def good(self) -> list[Request]:
        return [r for r in self.requests if r.ok]

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.good) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.good) / self.wall_s if self.wall_s > 0 else 0.0


def run_load(url: str, run: Run, prompts: list[list[tuple[str, str]]], max_tokens: int,
             deadline_s: float) -> Run:  # fmt: skip
    """One thread per client, each with its own connection, sending its (key, prompt) pairs one after the
    other; they start together (a barrier) and the wall time ends with the last one."""
    barrier = threading.Barrier(len(prompts) + 1)
    deadline = [0.0]
    results: list[list[Request]] = [[] for _ in prompts]

    def client_main(i: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=url, trust_env=False, limits=limits) as client:
            barrier.wait()
            for key, prompt in prompts[i]:
                req = Request(key=key)
                results[i].append(req)
                body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip
                stream_completion(client, body, req, deadline[0])

    threads = [threading.Thread(target=client_main, args=(i,), daemon=True) for i in range(len(prompts))]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    deadline[0] = time.monotonic() + deadline_s
    start = time.monotonic()
    barrier.wait()
    for t in threads:
        t.join(max(deadline[0] - time.monotonic(), 0.0) + CONNECT_TIMEOUT_S)
    run.wall_s = time.monotonic() - start
    run.client_cpu_s = time.process_time() - cpu0
    if any(t.is_alive() for t in threads):
        log(f"  warning: {sum(t.is_alive() for t in threads)} client threads still running past the deadline")
    run.requests = [req for reqs in results for req in reqs]
    return run


def prompts_of(seed: int, keys: list[list[str]],
               tokens: tuple[int, int] = PROMPT_TOKENS) -> list[list[tuple[str, str]]]:  # fmt: skip
    return [[(key, make_prompt(seed, key, tokens)) for key in client] for client in keys]


def run_prompts(seed: int, c: int, rep: int, per_client: int) -> list[list[tuple[str, str]]]:
    """The prompts of one run, made before it starts: keys unique per (C, repetition, client, request),
    the same for every server and model."""
    return prompts_of(seed, [[f"c{c}/r{rep}/k{k}/j{j}" for j in range(per_client)] for k in range(c)])


# --------------------------------------------------------------------------- a server's measurements


@dataclass
class Start:
    """One start of one server: the C values it served, or why it could not."""

    model: str
    server: str
    cs: list[int]
    cmd: list[str]
    ready_s: float | None = None
    error: str = ""
    returncode: int | None = None
    rss_kb: int = 0
    cpu_s: float = 0.0


def bench_server(key: str, model_name: str, model: Path, args: argparse.Namespace, log_dir: Path,
                 runs: list[Run], starts: list[Start]) -> None:  # fmt: skip
    """Measure server `key` at every C, starting it once per C (or once for all, where its command line
    does not depend on C)."""
    groups = [[c] for c in args.concurrency] if restarts_per_c(key) else [list(args.concurrency)]
    for cs in groups:
        port = free_port()
        cmd = server_command(key, str(model), str(cs[0]), str(cs[0] * N_CTX_SLOT), str(port), args)
        start = Start(model_name, key, cs, cmd)
        starts.append(start)
        log_path = log_dir / f"{model_name}-{key}-c{'-'.join(map(str, cs))}.log"
        log(f"{model_name} / {LABELS[key]} / C={','.join(map(str, cs))}: {shlex.join(cmd)}")
        try:
            server = Server(cmd, log_path)
        except OSError as e:
            start.error = f"cannot start: {e}"
            log(f"  {LABELS[key]}: {start.error}")
            continue
        try:
            start.ready_s = server.wait_ready(args.ready_timeout)
            log(f"  ready in {start.ready_s:.1f} s")
            for c in cs:
                warm = run_load(server.url, Run(model_name, key, c, 0),
                                prompts_of(args.seed, [[f"warmup/c{c}/k{k}"] for k in range(c)],
                                           WARMUP_PROMPT_TOKENS),
                                WARMUP_MAX_TOKENS, args.run_timeout)  # fmt: skip
                if not warm.good:
                    raise ServerError("every warm-up request failed: " + warm.requests[0].error)
                for rep in range(1, args.reps + 1):
                    run = run_load(server.url, Run(model_name, key, c, rep),
                                   run_prompts(args.seed, c, rep, args.requests_per_client), args.max_tokens,
                                   args.run_timeout)  # fmt: skip
                    runs.append(run)
                    errors = len(run.requests) - len(run.good)
                    log(f"  C={c} rep {rep}: {run.tokens_per_s:.1f} tok/s, {run.requests_per_s:.2f} req/s, "
                        f"{errors} errors, {run.wall_s:.1f} s")  # fmt: skip
                    if errors:
                        log("    first error: " + next(r.error for r in run.requests if not r.ok))
                    if server.proc.poll() is not None:
                        raise ServerError(f"exited with {server.proc.returncode} during the run:\n"
                                          + server.log_tail())  # fmt: skip
        except ServerError as e:
            start.error = describe_start_failure(key, e)
            log(f"  {LABELS[key]}: {start.error}")
            if len(str(e).splitlines()) > 1:
                log("  log tail:\n" + "\n".join("    " + line for line in str(e).splitlines()[1:]))
        finally:
            server.stop()
            start.returncode, start.rss_kb, start.cpu_s = server.returncode, server.rss_kb, server.cpu_s


# --------------------------------------------------------------------------- report


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0-1) by linear interpolation between order statistics."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Cell:
    """One (model, server, C): the repetitions pooled."""

    tok_s: list[float]
    req_s: list[float]
    ttft: list[float]
    errors: int
    requests: int
    usage: bool  # every good request's completion tokens came from the server's usage


def cell(runs: list[Run]) -> Cell:
    good = [r for run in runs for r in run.good]
    return Cell(tok_s=[run.tokens_per_s for run in runs], req_s=[run.requests_per_s for run in runs],
                ttft=[r.ttft_s for r in good if r.ttft_s is not None],
                errors=sum(len(run.requests) - len(run.good) for run in runs),
                requests=sum(len(run.requests) for run in runs),
                usage=all(r.completion_tokens is not None for r in good))  # fmt: skip


def fmt_rate(xs: Sequence[float], digits: int) -> str:
    """The median, and where there are several, ± half the min-max range in percent of it."""
    if not xs:
        return "-"
    m = bench.median(xs)
    if len(xs) == 1 or m <= 0:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ±{(max(xs) - min(xs)) / 2 / m * 100:.0f}%"


def fmt_ratio(num: list[float], den: list[float]) -> str:
    if not num or not den:
        return "-"
    d = bench.median(den)
    return f"{bench.median(num) / d:.2f}" if d > 0 else "-"


def model_section(model_name: str, model: Path, servers: list[str], runs: list[Run], starts: list[Start],
                  args: argparse.Namespace) -> list[str]:  # fmt: skip
    mine = [r for r in runs if r.model == model_name]
    cells = {(s, c): cell([r for r in mine if r.server == s and r.c == c])
             for s in servers for c in args.concurrency}  # fmt: skip
    size = model.stat().st_size / (1 << 20) if model.exists() else 0.0
    lines = [f"## {model_name} (`{model.name}`, {size:.0f} MiB)", ""]
    head = ["C"]
    for s in servers:
        head += [f"{LABELS[s]} tok/s", "req/s", "TTFT p50 / p95 (s)", "errors"]
    ratios = [(o, p) for o in servers if o in OURS for p in servers if p in PEERS]
    head += [f"{'ours' if o == 'ours' else 'ours (baseline)'} / {LABELS[p]} tok/s" for o, p in ratios]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c in args.concurrency:
        row = [str(c)]
        for s in servers:
            x = cells[s, c]
            if not x.requests:
                row += ["-", "-", "-", "-"]
                continue
            star = "" if x.usage else "*"
            row += [fmt_rate(x.tok_s, 1) + star, fmt_rate(x.req_s, 2),
                    f"{percentile(x.ttft, 0.5):.2f} / {percentile(x.ttft, 0.95):.2f}" if x.ttft else "-",
                    f"{x.errors}/{x.requests}"]  # fmt: skip
        row += [fmt_ratio(cells[o, c].tok_s, cells[p, c].tok_s) for o, p in ratios]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    good = [req for run in mine if run.rep > 0 for req in run.good]
    prompt = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    done = [r.tokens for r in good]
    if prompt:
        lines.append(f"Prompt tokens (usage.prompt_tokens): min {min(prompt)}, median "
                     f"{statistics.median(prompt):.0f}, max {max(prompt)}.")  # fmt: skip
    if done:
        stopped = sum(r.finish_reason == "stop" for r in good)
        lines.append(f"Completion tokens per request: min {min(done)}, median {statistics.median(done):.0f}, "
                     f"max {max(done)}; {stopped} of {len(good)} requests stopped before max_tokens.")
    if any(not cells[s, c].usage for s in servers for c in args.concurrency if cells[s, c].requests):
        lines.append("\\* no usage in the stream: completion tokens counted as chunks with text.")
    for st in starts:
        if st.model == model_name:
            notes = f"peak RSS {st.rss_kb / 1024:.0f} MiB, CPU {st.cpu_s:.0f} s" if st.rss_kb else ""
            if st.error:
                lines.append(f"- {LABELS[st.server]}, C={','.join(map(str, st.cs))}: **not measured**: "
                             f"{st.error}")  # fmt: skip
            elif notes:
                lines.append(f"- {LABELS[st.server]}, C={','.join(map(str, st.cs))}: ready in "
                             f"{st.ready_s:.1f} s, {notes}")  # fmt: skip
    lines.append("")
    return lines


def command_template(key: str, args: argparse.Namespace) -> str:
    """The server's command line with placeholders, paths under the checkout made relative."""
    cmd = server_command(key, "MODEL", "C", f"C*{N_CTX_SLOT}", "PORT", args)
    short = ["python" if part == sys.executable else part.replace(str(ROOT) + os.sep, "") for part in cmd]
    return " ".join(short)


def report(sections: list[str], servers: list[str], args: argparse.Namespace, started: str,
           noise: tuple[str, str], client_cores: float) -> str:  # fmt: skip
    mem = bench.mem_total_gib()
    lines = [
        "# Serving benchmarks",
        "",
        "Written by `benchmarks/serve_bench.py run`; do not edit by hand."
        + (" **A `--quick` smoke run: not a measurement.**" if args.quick else ""),
        "",
        f"- Date: {started}",
        f"- Machine: {bench.cpu_model()}, {os.cpu_count()} logical cores"
        + (f", {mem:.0f} GiB RAM" if mem else "") + f"; {platform.platform()}",
        f"- Other processes' CPU use: before the run (3 s) {noise[0]}; during the run {noise[1]}. The load "
        f"generator (this process, C threads) used {client_cores:.1%} of a core on average while measuring.",
        f"- Threads: {args.threads} per server (n_threads = n_threads_batch); n_batch = n_ubatch = "
        f"{N_BATCH}; {N_CTX_SLOT} tokens of context per slot; no flash attention; CPU only",
        f"- llama.cpp {bench.llama_cpp_commit()} (vendored, patched) for llama-rewire and llama-server; "
        f"llama-cpp-python {args.lcpp_version or '(not measured)'} built from its sdist with patches/0003",
        f"- Load: C concurrent clients (threads, one HTTP connection each) each send "
        f"{args.requests_per_client} requests one after the other per repetition: `/v1/completions`, "
        "streamed, temperature 0, "
        f"max_tokens {args.max_tokens}, a prompt of {PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]} tokens (estimated "
        f"when made; measured below) that no other request shares, the same prompts for every server. A "
        f"warm-up of C requests ({WARMUP_PROMPT_TOKENS[0]}-{WARMUP_PROMPT_TOKENS[1]} tokens, max_tokens "
        f"{WARMUP_MAX_TOKENS}) first, then {args.reps} "
        + ("repetition." if args.reps == 1 else "repetitions."),
        "- tok/s: the completion tokens of a repetition's good requests (the servers' `usage`) over its wall "
        "time, median of the repetitions (±: half their min-max range); req/s likewise. TTFT: from sending "
        "a request to its first chunk with text, p50 and p95 over every request of the repetitions. "
        "errors: failed requests / requests. The ratios are of the median tok/s.",
        "- Servers (MODEL, PORT, C filled in; each started for each C where its command line has C, else "
        "once for all):",
        *(f"  - {LABELS[s]}: `{command_template(s, args)}`" for s in servers),
        "",
    ]  # fmt: skip
    lines += sections
    flags = ["--quick"] if args.quick else []
    flags += [f"-c {' '.join(map(str, args.concurrency))}", f"--reps {args.reps}",
              f"--max-tokens {args.max_tokens}", f"--requests-per-client {args.requests_per_client}"]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "pip install -e .                         # llama-rewire, with its server's packages",
        "python benchmarks/serve_bench.py setup   # build/bench/bin/llama-server, benchmarks/.venv-lcpp",
        f"python benchmarks/serve_bench.py run -t {args.threads} {' '.join(flags)} "
        f"--servers {' '.join(servers)} --models {' '.join(args.models)}",
        "```",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands


def setup(args: argparse.Namespace) -> int:
    if not args.skip_llama_server:
        print("llama-server:", peers.build_tool("llama-server", args.build_dir))
    if not args.skip_lcpp:
        print("llama-cpp-python (with its server):", peers.build_lcpp_server(args.venv))
    return 0


def resolve_peers(args: argparse.Namespace, servers: list[str]) -> list[str]:
    """Find the peers' binaries; a peer that is not there is left out, with a note."""
    keep = []
    for s in servers:
        if s == "llama-server" and args.llama_server is None:
            found = peers.tool_path(DEFAULT_BUILD, "llama-server")
            args.llama_server = str(found) if found else None
        if s == "lcpp" and args.lcpp_python is None:
            python = peers.venv_python(DEFAULT_VENV)
            args.lcpp_python = str(python) if python.exists() else None
        if (s == "llama-server" and not args.llama_server) or (s == "lcpp" and not args.lcpp_python):
            log(f"note: {LABELS[s]} not found, left out (see `python benchmarks/serve_bench.py setup`)")
            continue
        keep.append(s)
    args.lcpp_version = bench.lcpp_version(args.lcpp_python) if "lcpp" in keep else None
    return keep


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that every server is stopped on the way out


def run(args: argparse.Namespace) -> int:
    # --quick changes the defaults; a value given explicitly wins
    if args.concurrency is None:
        args.concurrency = list(QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
    if args.reps is None:
        args.reps = 1 if args.quick else REPS
    if args.max_tokens is None:
        args.max_tokens = QUICK_MAX_TOKENS if args.quick else MAX_TOKENS
    servers = list(dict.fromkeys(args.servers))
    if args.ours_baseline:
        servers = [("ours-baseline" if s == "ours" else s) for s in servers]
        servers = list(dict.fromkeys(servers))
    servers = resolve_peers(args, servers)
    models = load_models_module()
    paths = {name: Path(models.resolve(name)) for name in args.models}
    signal.signal(signal.SIGTERM, on_sigterm)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    idle = bench.CpuMeter()
    time.sleep(3)
    before = bench.describe_noise(idle.others())
    log(f"other processes before the run: {before}")
    meter = bench.CpuMeter()
    runs: list[Run] = []
    starts: list[Start] = []
    with log_directory(args.log_dir) as log_dir:
        try:
            for name, path in paths.items():
                for s in servers:
                    bench_server(s, name, path, args, log_dir, runs, starts)
        except KeyboardInterrupt:
            log("interrupted: every server was stopped; writing what was measured")
    during = bench.describe_noise(meter.others())
    log(f"other processes during the run: {during}")
    measured = [r for r in runs if r.rep > 0]
    wall = sum(r.wall_s for r in measured)
    client_cores = sum(r.client_cpu_s for r in measured) / wall if wall else 0.0
    sections = [line for name, path in paths.items()
                for line in model_section(name, path, servers, runs, starts, args)]  # fmt: skip
    text = report(sections, servers, args, started, (before, during), client_cores)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    if args.json:
        raw = {"started": started, "threads": args.threads, "servers": servers,
               "starts": [asdict(s) for s in starts], "runs": [asdict(r) for r in runs]}  # fmt: skip
        Path(args.json).write_text(json.dumps(raw, indent=1))
        log(f"wrote {args.json}")
    return 0 if not any(s.error for s in starts) else 1


@contextlib.contextmanager
def log_directory(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="build llama-server and the llama-cpp-python venv with its server")
    p.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD, help="CMake build directory")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtual environment for llama-cpp-python")
    p.add_argument("--skip-llama-server", action="store_true", help="do not build llama-server")
    p.add_argument("--skip-lcpp", action="store_true", help="do not build the llama-cpp-python venv")
    p.set_defaults(func=setup)

    p = sub.add_parser("run", help="measure, print the report and write it to --out")
    p.add_argument("-t", "--threads", type=int, default=2, help="threads of every server (2)")
    p.add_argument("-c", "--concurrency", type=int, nargs="+", default=None,
                   help=f"numbers of concurrent clients ({' '.join(map(str, DEFAULT_CONCURRENCY))})")
    p.add_argument("--reps", type=int, default=None, help=f"repetitions ({REPS})")
    p.add_argument("--requests-per-client", type=int, default=REQUESTS_PER_CLIENT,
                   help=f"requests each client sends per repetition ({REQUESTS_PER_CLIENT})")  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=None, help=f"per request ({MAX_TOKENS})")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: C={','.join(map(str, QUICK_CONCURRENCY))}, 1 repetition, "
                        f"max_tokens {QUICK_MAX_TOKENS}")  # fmt: skip
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   help="names for llama_rewire.models.resolve (smollm2, gemma3-270m), or GGUF files")
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(DEFAULT_SERVERS),
                   help=f"which servers ({' '.join(DEFAULT_SERVERS)})")  # fmt: skip
    p.add_argument("--ours-baseline", action="store_true",
                   help=f"run ours without {OURS_PARALLEL_FLAG}: today's one-request-at-a-time server")
    p.add_argument("--ours-python", default=sys.executable, help="the Python that runs our server (this one)")
    p.add_argument("--lcpp-python", help=f"a Python with llama-cpp-python's server ({DEFAULT_VENV.name})")
    p.add_argument("--llama-server", help="the llama-server binary (build/bench/bin)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the prompts")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                   help=f"seconds a server may take to start ({READY_TIMEOUT_S:.0f})")  # fmt: skip
    p.add_argument("--run-timeout", type=float, default=RUN_DEADLINE_S,
                   help=f"deadline of one repetition, in seconds ({RUN_DEADLINE_S:.0f})")  # fmt: skip
    p.add_argument("--log-dir", help="keep the servers' logs here (default: a temporary directory)")
    p.add_argument("--out", default=str(HERE / "RESULTS-serve.md"), help="markdown output ('' for none)")
    p.add_argument("--json", help="also write the raw data (every request) here")
    p.set_defaults(func=run)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

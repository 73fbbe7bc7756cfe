"""Speed of llama-rewire next to llama-cpp-python and llama.cpp's own llama-bench, on the same model.

    python benchmarks/bench.py setup                 # build llama-bench, create the llama-cpp-python venv
    python benchmarks/bench.py run [-t 2] [--reps 5] [--runs 3]  # measure, print, write benchmarks/RESULTS.md

For each model and one thread count it measures prompt processing (pp: tokens/s over a 512-token prompt)
and generation (tg: tokens/s over 128 greedy tokens), the median of ``--reps`` rounds, for: llama-rewire
with no override (also generating with llama-bench's loop: random tokens, nothing sampled), with an
override that keeps a fused GLU kernel, with composed activations (mish, relu2); llama-cpp-python 0.3.36
(its own virtual environment, built by ``setup`` from its sdist with patches/0003 applied: the stock
release dies with SIGILL on CPUs with AMX); and llama-bench built from the same patched llama.cpp tree
(the native ceiling). llama-rewire, llama-cpp-python and llama-bench also run with the weights as stored
(``use_extra_bufts=False``, ``--repack 0``) next to their default, which repacks them at load time for
the CPU's fastest kernels (AMX tiles, CPU_REPACK). Each configuration runs in its own process
(bench_worker.py, or llama-bench), whose peak RSS is reported; this process imports neither numpy nor a
model, as a child's peak RSS counts its parent's. It also measures the machine's read bandwidth (the
decode ceiling is bandwidth / weight bytes, as every weight is read once per token), how a generated
token's time splits between each Python library's ``Llama.eval`` (llama_decode) and the rest (sampling,
the Python loop), and the time from ``set_activations`` to the end of the first decode after it, next to
loading a new model. Each ratio a target names is the median over rounds, with a distribution-free
confidence interval for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "scripts"))

import peers  # noqa: E402

WORKER = HERE / "bench_worker.py"
DEFAULT_VENV = HERE / ".venv-lcpp"
DEFAULT_BUILD = ROOT / "build" / "bench"
LCPP_REQUIREMENT = "llama-cpp-python==0.3.36 (with patches/0003)"
DEFAULT_MODELS = ("smollm2", "gemma3-270m")
COMPOSED = ("mish", "relu2")
N_PROMPT, N_GEN, N_BATCH = 512, 128, 512

# (numerator, denominator, metric, goal): the targets, as the median of the per-round ratios
TARGETS: tuple[tuple[str, str, str, float | None], ...] = (
    ("none", "lcpp", "tg", 1.00),
    ("none", "llama-bench", "tg", 0.97),
    ("loop", "llama-bench", "tg", None),  # no goal: what is left once the workloads are the same
    # no goal: the loop row's pp is the no-override configuration again, in another process; how far
    # this A/A ratio strays from 1 is the noise of a comparison between two processes
    ("loop", "none", "pp", None),
    ("none", "lcpp", "pp", 0.98),
    ("none", "llama-bench", "pp", 0.98),
    ("fused", "none", "pp", 0.97),
    ("fused", "none", "tg", 0.97),
    *((c, "none", m, 0.93) for c in COMPOSED for m in ("pp", "tg")),
    # no goal: weights repacked at load time (AMX tiles, CPU_REPACK) against weights used as stored
    *((k, f"{k}-plain", m, None) for k in ("none", "lcpp", "llama-bench") for m in ("pp", "tg")),
    *(("none-plain", "llama-bench-plain", m, None) for m in ("pp", "tg")),
    # no goal: a quarter of the layers skipped (skip=layer) drops their matmuls from the graph
    *(("skip", "none", m, None) for m in ("pp", "tg")),
    # the residual stream: a control vector added after every layer on every token costs <= 2% of decode;
    # a capture of resid_post on every layer <= 10% of a plain eval of the same prompt
    ("steer", "none", "tg", 0.98),
    ("steer", "none", "pp", None),
    ("capture", "none", "pp", 0.90),
    # no goal: a capture needs the last layer's every row; had it asked llama.cpp for every position as
    # an output, it would compute every position's logits too, as logits_all does
    ("logits", "none", "pp", None),
    ("capture", "logits", "pp", None),
    # no goal: the capture configuration generates with no edit: an A/A row for tg
    ("capture", "none", "tg", None),
    # the portable wheel (ggml's CPU backend for every instruction-set level, the best picked at import)
    # against this build from source for this CPU (--portable-python)
    ("portable", "none", "pp", 0.97),
    ("portable", "none", "tg", 0.97),
)
# (numerator, denominator, metric) rows that compare a configuration with itself in another process
AA_ROWS = {("loop", "none", "pp"), ("capture", "none", "tg")}
RESIDUAL = ("steer", "capture", "logits")
SWITCH_GOAL_MS = 20.0
BUSY_CORES = 0.2  # other processes' average use of the cores above which a run is flagged as noisy


# --------------------------------------------------------------------------- setup


def setup(args: argparse.Namespace) -> int:
    if not args.skip_llama_bench:
        print("llama-bench:", peers.build_tool("llama-bench", args.build_dir, args.cmake_arg))
    if not args.skip_lcpp:
        # built from the pinned sdist with patches/0003 applied: the stock 0.3.36 dies with SIGILL on AMX CPUs
        print("llama-cpp-python:", peers.build_lcpp(args.venv))
    return 0


# --------------------------------------------------------------------------- measuring

PAUSE_S = 0.1  # between runs: lets the previous process's OpenMP threads stop spinning
# After llama-bench's process exits: with a fixed order, the configuration that always ran right after it
# measured 3-4% slower than a copy of itself placed elsewhere. The order is shuffled every pass as well.
PAUSE_EXIT_S = 1.0
ORDER_SEED = 20261123


@dataclass
class Config:
    key: str  # none, loop, fused, a composed name, skip, lcpp, llama-bench
    label: str  # its row in the table
    short: str  # its name in the ratios
    cmd: list[str]  # `bench_worker.py serve ...`, or llama-bench for one run of each test
    native: bool = False  # llama-bench: one process per run


@dataclass
class Samples:
    pp: list[float] = field(default_factory=list)  # tokens/s, one per round (the median of its runs)
    tg: list[float] = field(default_factory=list)
    rss_kb: int = 0


def rss_kb(usage: Any) -> int:
    """ru_maxrss in KiB (Linux reports KiB, macOS bytes)."""
    return int(usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss)


def run_child(cmd: Sequence[str]) -> tuple[str, int]:
    """Run cmd; return its stdout and its peak RSS (KiB). Raises with its stderr if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(failure(cmd, proc.returncode, err))
        return out.read().decode(), rss_kb(usage)


def failure(cmd: Sequence[str], code: int | None, err: IO[bytes]) -> str:
    err.seek(0)
    tail = err.read().decode(errors="replace").strip().splitlines()[-20:]
    return f"{shlex.join(str(c) for c in cmd)} failed ({code}):\n" + "\n".join(tail)


class Worker:
    """A `bench_worker.py serve` process: loaded and warmed up once, then asked for one run at a time."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close or kill)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, cwd=ROOT, text=True
        )
        self._answer()  # {"ready": true}, after the warm-up

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise RuntimeError(failure(self.cmd, self.proc.wait(), self.err))

    def ask(self, what: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return float(self._answer()[what])

    def close(self) -> int:
        """Stop the process; its peak RSS in KiB."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            raise RuntimeError(failure(self.cmd, self.proc.returncode, self.err))
        self.err.close()
        return rss_kb(usage)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def parse_llama_bench(stdout: str) -> tuple[list[float], list[float]]:
    """The pp and tg samples (tokens/s) of `llama-bench -o json`."""
    pp: list[float] = []
    tg: list[float] = []
    for test in json.loads(stdout):
        if test["n_prompt"] > 0 and test["n_gen"] == 0:
            pp += [float(x) for x in test["samples_ts"]]
        elif test["n_gen"] > 0 and test["n_prompt"] == 0:
            tg += [float(x) for x in test["samples_ts"]]
    return pp, tg


def worker_json(*args: str) -> dict[str, Any]:
    """Run a bench_worker.py subcommand under this Python; its JSON result."""
    stdout, _ = run_child([sys.executable, str(WORKER), *args])
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def read_bandwidth(threads: int) -> float:
    """The machine's read bandwidth in GB/s (measured in a child: see bench_worker.bandwidth)."""
    return float(worker_json("bandwidth", "--threads", str(threads))["gbps"])


@dataclass
class ModelInfo:
    name: str
    path: Path
    description: str
    size: int  # weight bytes (llama_model_size): what each generated token reads
    n_params: int
    native_act: str
    n_layer: int
    weight_buffers: dict[str, int]  # where llama-rewire's default load (use_extra_bufts) puts the weights
    devices: list[dict[str, str]]  # llama_rewire.system_info()["devices"]: the backends' devices here


def model_info(name: str, threads: int) -> ModelInfo:
    """Fetch the model (llama_rewire.models.fetch) and describe it, in a child process."""
    d = worker_json("info", "--model", name, "--threads", str(threads))
    return ModelInfo(name=name, path=Path(d["path"]), description=d["description"], size=int(d["size"]),
                     n_params=int(d["n_params"]), native_act=d["native_act"], n_layer=int(d["n_layer"]),
                     weight_buffers=dict(d["weight_buffers"]), devices=list(d["devices"]))  # fmt: skip


def fused_override(native_act: str) -> str:
    """An override that maps to another fused GLU op: SwiGLU -> GeGLU, anything else -> SwiGLU."""
    return "*:gelu" if native_act == "silu" else "*:silu"


def skip_quarter(n_layer: int) -> str:
    """skip=layer on a quarter of the layers: the ones just before the last."""
    q = max(1, n_layer // 4)
    return f"{n_layer - 1 - q}-{n_layer - 2}:skip=layer"


def configs(info: ModelInfo, args: argparse.Namespace) -> list[Config]:
    t, model = str(args.threads), str(info.path)
    serve = [str(WORKER), "serve", "--model", model, "--threads", t, "--tg-method", args.tg_method,
             *offload(args)]
    rewire = [sys.executable, *serve, "--backend", "rewire"]
    fused = fused_override(info.native_act)
    out = [
        Config("none", "llama-rewire, no override", "no override", rewire),
        # the same, generating as llama-bench does (random tokens, nothing sampled): the runtime alone
        Config(
            "loop",
            "llama-rewire, no override, llama-bench's generation loop",
            "no override, llama-bench's loop",
            [*rewire, "--tg-method", "decode"],
        ),
        Config("fused", f"llama-rewire, `{fused}` (fused GLU)", f"`{fused}`", [*rewire, "--act", fused]),
    ]
    out += [Config(c, f"llama-rewire, `*:{c}` (composed)", f"`*:{c}`", [*rewire, "--act", f"*:{c}"])
            for c in COMPOSED]  # fmt: skip
    skip = skip_quarter(info.n_layer)
    out.append(Config("skip", f"llama-rewire, `{skip}` (a quarter of the layers skipped)", f"`{skip}`",
                      [*rewire, "--act", skip]))  # fmt: skip
    out += [
        Config("steer", "llama-rewire, a control vector on every layer and token (`set_steering`)",
               "steering every layer", [*rewire, "--edit", "steer"]),
        Config("capture", "llama-rewire, pp: `capture` of `resid_post` on every layer (tg: no edit)",
               "capture of resid_post", [*rewire, "--edit", "capture"]),
        Config("logits", "llama-rewire, pp: eval keeping every position's logits (`logits_all`)",
               "eval with logits_all", [*rewire, "--logits-all"]),
    ]
    if args.repack_rows:
        out.append(Config("none-plain", "llama-rewire, no override, weights as stored (--no-repack)",
                          "no override, no repack", [*rewire, "--no-repack"]))  # fmt: skip
    if args.lcpp_python:
        label = f"llama-cpp-python {args.lcpp_version}"
        lcpp = [args.lcpp_python, *serve, "--backend", "lcpp"]
        out.append(Config("lcpp", label, "llama-cpp-python", lcpp))
        if args.repack_rows:
            out.append(Config("lcpp-plain", f"{label}, weights as stored", "llama-cpp-python, no repack",
                              [*lcpp, "--no-repack"]))  # fmt: skip
    if args.portable_python:
        portable = [args.portable_python, *serve, "--backend", "rewire"]
        out.append(Config("portable", "llama-rewire, the portable wheel (CPU variant picked at import)",
                          "portable wheel", portable))  # fmt: skip
    if args.llama_bench:
        cmd = [args.llama_bench, "-m", model, "-p", str(N_PROMPT), "-n", str(N_GEN), "-b", str(N_BATCH),
               "-ub", str(N_BATCH), "-t", t, "-r", "1", "-fa", "0", "-ngl", bench_ngl(args.n_gpu_layers),
               "-o", "json"]  # fmt: skip
        same = "same llama.cpp, same offload" if args.n_gpu_layers else "same llama.cpp"
        out.append(Config("llama-bench", f"llama-bench ({same})", "llama-bench", cmd, native=True))
        if args.repack_rows:
            out.append(Config("llama-bench-plain", "llama-bench, weights as stored (--repack 0)",
                              "llama-bench, no repack", [*cmd, "--repack", "0"], native=True))  # fmt: skip
    if args.only:
        unknown = set(args.only) - {c.key for c in out}
        if unknown:
            raise SystemExit(f"--only: no configuration {', '.join(sorted(unknown))} (there are "
                             f"{', '.join(c.key for c in out)})")
        out = [c for c in out if c.key == "none" or c.key in args.only]
    return out


def offload(args: argparse.Namespace) -> list[str]:
    """The worker's offload option (nothing for a CPU-only run)."""
    return ["--n-gpu-layers", str(args.n_gpu_layers)] if args.n_gpu_layers else []


def bench_ngl(n_gpu_layers: int) -> str:
    """llama-bench's -ngl for n_gpu_layers (it has no -1: any count above the model's layers offloads
    them all and the output)."""
    return str(n_gpu_layers if n_gpu_layers >= 0 else 999)


def measure_switch(info: ModelInfo, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    return worker_json("switch", "--backend", "rewire", "--model", str(info.path), "--threads",
                       str(args.threads), "--reps", str(max(args.reps, 5)), "--act", spec,
                       *offload(args))  # fmt: skip


def measure_split(info: ModelInfo, c: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Where a generated token's time goes, for the Python configuration c (its own interpreter)."""
    python, backend = c.cmd[0], c.cmd[c.cmd.index("--backend") + 1]
    stdout, _ = run_child([python, str(WORKER), "split", "--backend", backend, "--model", str(info.path),
                           "--threads", str(args.threads), "--reps", str(max(args.reps, 5)),
                           *offload(args)])  # fmt: skip
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure_resid(info: ModelInfo, args: argparse.Namespace) -> dict[str, Any]:
    """Steering and capture against their plain counterparts, in pairs within one process."""
    return worker_json("resid", "--backend", "rewire", "--model", str(info.path), "--threads",
                       str(args.threads), "--reps", str(args.pairs),
                       "--tg-method", args.tg_method, *offload(args))  # fmt: skip


@dataclass
class ModelResult:
    info: ModelInfo
    configs: list[Config]
    samples: dict[str, Samples]
    switch: dict[str, dict[str, Any]]
    split: dict[str, dict[str, Any]]  # config key -> bench_worker split (ms per generated token)
    resid: dict[str, list[float]] = field(default_factory=dict)  # bench_worker resid (tokens/s, paired)


class CpuMeter:
    """CPU time used by other processes than this one and its children since the meter started
    (Linux: /proc/stat), and the time stolen by the hypervisor: the noise in the numbers."""

    def __init__(self) -> None:
        self.wall0, self.own0, self.machine0 = time.monotonic(), self.own(), self.machine()

    @staticmethod
    def own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    @staticmethod
    def machine() -> tuple[float, float] | None:
        """(busy, stolen) CPU seconds since boot, all CPUs."""
        try:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
            )
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        return (user + nice + system + irq + softirq) / hz, steal / hz

    def others(self) -> tuple[float, float] | None:
        """(average number of cores other processes kept busy, stolen share of the CPU time)."""
        now = self.machine()
        if now is None or self.machine0 is None:
            return None
        wall = max(time.monotonic() - self.wall0, 1e-9)
        busy = now[0] - self.machine0[0] - (self.own() - self.own0)
        stolen = (now[1] - self.machine0[1]) / (wall * (os.cpu_count() or 1))
        return max(busy, 0.0) / wall, stolen


def describe_noise(others: tuple[float, float] | None) -> str:
    if others is None:
        return "unknown"
    flag = " (**busy: redo on a quiet machine**)" if others[0] > BUSY_CORES else ""
    return f"{others[0]:.2f} cores on average{flag}, CPU steal {others[1]:.1%}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_model(info: ModelInfo, args: argparse.Namespace) -> ModelResult:
    """`reps` rounds. A round starts a new process for every configuration (as llama-bench is one), then
    makes `runs` passes over the configurations, each running pp then tg once, in a seeded random order
    drawn for every pass; a configuration's value for the round is the median of its runs. The speed of
    this machine drifts by 10-20% over tens of seconds, so runs of different configurations are kept
    close in time, and the ratios the targets name are taken within a round."""
    todo = configs(info, args)
    samples = {c.key: Samples() for c in todo}
    for r in range(args.reps):
        log(f"  [{info.name}] round {r + 1}/{args.reps}")
        order = list(todo)
        workers: dict[str, Worker] = {}
        runs: dict[str, tuple[list[float], list[float]]] = {c.key: ([], []) for c in todo}
        try:
            for c in order:
                if not c.native:
                    workers[c.key] = Worker(c.cmd)
            for p in range(args.runs):
                random.Random(ORDER_SEED + args.runs * r + p).shuffle(order)
                for c in order:
                    time.sleep(PAUSE_S)
                    pp, tg = runs[c.key]
                    if c.native:
                        stdout, kb = run_child(c.cmd)
                        time.sleep(PAUSE_EXIT_S)
                        pp_ts, tg_ts = parse_llama_bench(stdout)
                        pp += pp_ts
                        tg += tg_ts
                        samples[c.key].rss_kb = max(samples[c.key].rss_kb, kb)
                    else:
                        pp.append(workers[c.key].ask("pp"))
                        tg.append(workers[c.key].ask("tg"))
            for key in list(workers):
                kb = workers.pop(key).close()
                samples[key].rss_kb = max(samples[key].rss_kb, kb)
        finally:
            for w in workers.values():
                w.kill()
        for key, (pp, tg) in runs.items():
            samples[key].pp.append(median(pp))
            samples[key].tg.append(median(tg))
    split: dict[str, dict[str, Any]] = {}
    switch: dict[str, dict[str, Any]] = {}
    resid: dict[str, list[float]] = {}
    if args.pairs > 0 and any(c.key in ("steer", "capture") for c in todo):
        log(f"  [{info.name}] steering and capture, paired in one process ({args.pairs} pairs)")
        resid = measure_resid(info, args)
    if args.only:  # a run of a few rows: no split or switch measurements
        return ModelResult(info, todo, samples, switch, split, resid)
    for c in todo:
        if c.key in ("none", "lcpp"):
            log(f"  [{info.name}] time per generated token: {c.label}")
            split[c.key] = measure_split(info, c, args)
    for spec in (fused_override(info.native_act), f"*:{COMPOSED[0]}"):
        log(f"  [{info.name}] changing the wiring: {spec}")
        switch[spec] = measure_switch(info, spec, args)
    return ModelResult(info, todo, samples, switch, split, resid)


# --------------------------------------------------------------------------- reporting


def describe_repack(buffers: dict[str, int]) -> str:
    """Which of the weights the default load repacks here (the 'weights as stored' rows keep them all)."""
    repacked = {k: v for k, v in buffers.items() if k in ("AMX", "CPU_REPACK")}
    if not repacked:
        return ("Repacked at load on this CPU: none (no extra buffer type takes these tensors here), so the "
                "'weights as stored' rows run the same kernels as the default ones.")
    parts = ", ".join(f"{v / 1e6:.1f} MB of tensors into {k}" for k, v in repacked.items())
    return f"Repacked at load on this CPU: {parts} (a copy beside the mapped file)."


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_rate(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    m = median(xs)
    spread = (max(xs) - min(xs)) / 2 / m * 100 if len(xs) > 1 else 0.0
    return f"{m:,.1f} ±{spread:.0f}%"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def llama_cpp_commit() -> str:
    text = (ROOT / "scripts" / "llama_vendor.py").read_text()
    found = re.search(r'^LLAMA_CPP_COMMIT = "(\w+)"', text, re.M)
    return found.group(1) if found else "?"


CI_LEVEL = 0.90


def median_ci(xs: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: the order statistics x(k) and x(n+1-k)
    with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at least level (k = 1, the
    whole range, when n is too small for that). Returns (low, high, coverage)."""
    s = sorted(xs)
    n = len(s)

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / float(2**n)

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return s[k - 1], s[n - k], coverage(k)


def ratio_rows(res: ModelResult) -> list[str]:
    """The targets, each as the median over rounds of (numerator / denominator) within a round, with a
    confidence interval for that median."""
    rows = [
        "| ratio of per-round speeds | median | confidence interval | goal | met |",
        "|---|---:|---:|---:|:---:|",
    ]
    short = {c.key: c.short for c in res.configs}
    coverage = float("nan")
    for num, den, metric, goal in TARGETS:
        if num not in res.samples or den not in res.samples:
            continue
        pairs = zip(getattr(res.samples[num], metric), getattr(res.samples[den], metric))
        ratios = [a / b for a, b in pairs]
        if not ratios:
            continue
        ratio = median(ratios)
        low, high, coverage = median_ci(ratios)
        if goal is None:
            met = "-"
        elif ratio >= goal:
            met = "yes"
        else:
            met = "**no** (goal inside the interval)" if high >= goal else "**no**"
        want = "-" if goal is None else f"≥ {goal:.2f}"
        name = f"{metric}: {short[num]} / {short[den]}"
        if (num, den, metric) in AA_ROWS:
            name = f"{metric}: {short['none']} / itself in another process (A/A)"
        rows.append(f"| {name} | {ratio:.3f} | {low:.3f} - {high:.3f} | {want} | {met} |")
    n = min((len(s.tg) for s in res.samples.values()), default=0)
    rows += [
        "",
        f"Confidence interval: for the median of the per-round ratio, from the order statistics of the "
        f"{n} rounds ({coverage:.0%} coverage; distribution-free). A goal inside it is not told apart "
        "from the measured median by this many rounds on this machine. The A/A row compares the "
        "no-override configuration with itself, run in two processes: its distance from 1 is the "
        "noise of a comparison between processes.",
    ]
    return rows


RESID_PAIRS = (
    ("tg", "tg_steer", "tg_plain", "a control vector on every layer and token / none", 0.98),
    ("pp", "pp_capture", "pp_plain", "`capture` of `resid_post` on every layer / plain `eval`", 0.90),
)


def resid_rows(res: ModelResult) -> list[str]:
    """The paired measurement: the ratio within each pair, its median and a confidence interval."""
    if not res.resid:
        return []
    n = len(res.resid["tg_plain"])
    rows = [
        f"Paired in one process ({n} pairs, each in a seeded random order; the ratio is taken within a "
        "pair, so the drift of the machine's speed between processes and over minutes cancels):",
        "",
        "| ratio within a pair | with (t/s) | without (t/s) | median | confidence interval | goal | met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    coverage = float("nan")
    for metric, num, den, name, goal in RESID_PAIRS:
        ratios = [a / b for a, b in zip(res.resid[num], res.resid[den])]
        ratio = median(ratios)
        low, high, coverage = median_ci(ratios)
        met = "yes" if ratio >= goal else "**no** (goal inside the interval)" if high >= goal else "**no**"
        rows.append(f"| {metric}: {name} | {fmt_rate(res.resid[num])} | {fmt_rate(res.resid[den])} "
                    f"| {ratio:.3f} | {low:.3f} - {high:.3f} | ≥ {goal:.2f} | {met} |")  # fmt: skip
    rows += ["", f"Confidence interval: for the median of the {n} per-pair ratios ({coverage:.0%} coverage)."]
    return rows


def switch_rows(res: ModelResult) -> list[str]:
    if not res.switch:
        return []
    rows = [
        "Changing the wiring, in ms (median). A decode is one token at position 0 and its argmax "
        "(`set_activations` drops the KV cache; so does a new `Llama`).",
        "",
        "| new wiring | `set_activations` | `set_activations` + first decode | decode, no change "
        f"| new `Llama` + first decode | goal: first decode < {SWITCH_GOAL_MS:.0f} ms |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for spec, sw in res.switch.items():
        first = median(sw["switch_ms"])
        met = "yes" if first < SWITCH_GOAL_MS else "**no**"
        rows.append(f"| `{spec}` ↔ default | {median(sw['set_ms']):.1f} | {first:.1f} "
                    f"| {median(sw['plain_ms']):.1f} | {median(sw['reload_ms']):.0f} | {met} |")  # fmt: skip
    return rows


def split_rows(res: ModelResult) -> list[str]:
    """Per generated token: inside Llama.eval (llama_decode) and outside it (sampling, the Python loop)."""
    if not res.split:
        return []
    rows = [
        "Where a generated token's time goes, in ms (median of runs of "
        f"{N_GEN} tokens, each library in its own process; llama-bench: its tg{N_GEN} speed).",
        "",
        "| library | per token | inside `Llama.eval` (llama_decode) | outside: sampling, Python loop "
        "| outside share |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    short = {c.key: c.label for c in res.configs}
    for key, sp in res.split.items():
        total, inside = median(sp["total_ms"]), median(sp["eval_ms"])
        outside = median([t - e for t, e in zip(sp["total_ms"], sp["eval_ms"])])
        rows.append(f"| {short[key]} | {total:.2f} | {inside:.2f} | {outside:.3f} | {outside / total:.1%} |")
    if "llama-bench" in res.samples and res.samples["llama-bench"].tg:
        per_token = 1e3 / median(res.samples["llama-bench"].tg)
        rows.append(f"| llama-bench | {per_token:.2f} | {per_token:.2f} | - | - |")
    return rows


def model_section(res: ModelResult, bandwidth: float | None) -> list[str]:
    """One model's tables. bandwidth: the CPU's read bandwidth in GB/s, for the decode ceiling (None for a
    run offloaded to a GPU, whose ceiling is the GPU's memory bandwidth, not measured here)."""
    info = res.info
    ceiling = bandwidth * 1e9 / info.size if bandwidth else float("nan")
    where = (f"Decode ceiling: {bandwidth:.1f} GB/s / {info.size / 1e6:.1f} MB per token = "
             f"**{ceiling:,.0f} tokens/s**. {describe_repack(info.weight_buffers)}" if bandwidth
             else "Offloaded to the GPU: no CPU decode ceiling.")  # fmt: skip
    lines = [
        f"### {info.description}",
        "",
        f"`{info.path.name}`: {info.size / 1e6:.1f} MB of weights, {info.n_params / 1e6:.0f} M parameters, "
        f"FFN activation `{info.native_act}`. {where}",
        "",
        f"| configuration | pp{N_PROMPT} (t/s) | tg{N_GEN} (t/s) | tg / ceiling | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in res.configs:
        s = res.samples[c.key]
        frac = f"{median(s.tg) / ceiling:.2f}" if s.tg and bandwidth else "-"
        lines.append(f"| {c.label} | {fmt_rate(s.pp)} | {fmt_rate(s.tg)} | {frac} | {s.rss_kb / 1024:.0f} |")
    return [*lines, "", *ratio_rows(res), "", *resid_rows(res), "", *split_rows(res), "", *switch_rows(res),
            ""]


def describe_offload(results: list[ModelResult], n_gpu_layers: int) -> str:
    """Where the layers ran: the CPU, or the GPU devices the backends list (a run asked to offload on a
    machine with none says so: it measured the CPU)."""
    if not n_gpu_layers:
        return "CPU only"
    gpus = sorted({f"{d['name']} ({d['description']})" for r in results for d in r.info.devices
                   if d["kind"] in ("gpu", "igpu")})  # fmt: skip
    layers = "every layer and the output" if n_gpu_layers < 0 else f"{n_gpu_layers} layers"
    if not gpus:
        return f"n_gpu_layers = {n_gpu_layers}, but this build has no GPU device: **all ran on the CPU**"
    return (f"n_gpu_layers = {n_gpu_layers} ({layers}; llama-bench `-ngl {bench_ngl(n_gpu_layers)}`) on "
            f"{', '.join(gpus)}")


def report(results: list[ModelResult], args: argparse.Namespace, bandwidth: float | None, started: str,
           noise: tuple[str, str]) -> str:  # fmt: skip
    mem = mem_total_gib()
    loop = "`generate(temperature=0)`" if args.tg_method == "generate" else "`eval` + numpy argmax"
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/bench.py run`; do not edit by hand.",
        "",
        f"- Date: {started}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores"
        + (f", {mem:.0f} GiB RAM" if mem else "") + f"; {platform.platform()}",
        f"- Other processes' CPU use: before the run (3 s) {noise[0]}; during the run {noise[1]}",
        f"- Threads: {args.threads} everywhere (n_threads = n_threads_batch); "
        f"n_batch = n_ubatch = {N_BATCH}; no flash attention; "
        f"window-sized sliding-window caches (swa_full off, as in llama-bench); "
        f"{describe_offload(results, args.n_gpu_layers)}",
        f"- llama.cpp {llama_cpp_commit()} (vendored, patched) for llama-rewire and llama-bench; "
        f"llama-cpp-python {args.lcpp_version or '(not measured)'} with its own build of the same llama.cpp, "
        "built from its sdist with patches/0003 (the stock 0.3.36 dies at its first decode on CPUs with AMX: "
        "SIGILL or SIGSEGV in its AMX matmul)",
        *([f"- Read bandwidth: {bandwidth:.1f} GB/s: best of 7 numpy sums of 1 GiB in {args.threads} threads"]
          if bandwidth else []),
        f"- pp{N_PROMPT}: one `eval` of {N_PROMPT} random tokens from an empty cache. tg{N_GEN}: {N_GEN} "
        f"single-token decodes with greedy choice ({loop} in both Python libraries; llama-bench decodes "
        "without sampling). The row \"llama-bench's generation loop\" generates as llama-bench does, "
        "through `Llama.eval`: the BOS token and then random ones from an empty cache, nothing sampled "
        "or read back; its pp is the no-override configuration measured again.",
        f"- Each cell: median of {args.reps} rounds (±: half the min-max range of the rounds). A round "
        "starts a new process for every Python configuration (loaded and warmed up), then makes "
        f"{args.runs} passes over all configurations, each running pp and tg once (llama-bench: a new "
        "process with `-r 1` each time, after its own warm-up, and a 1 s pause after it exits), in a "
        "seeded random order drawn for every pass; a round keeps the median of its runs. (With a fixed "
        "order, the configuration that always ran right after llama-bench measured 3-4% slower than a "
        "copy of itself placed elsewhere.)",
        *residual_notes(results),
        *([f"- The portable wheel: {args.portable_build}"] if args.portable_python else []),
        "",
        "## Results",
        "",
    ]  # fmt: skip
    for res in results:
        lines += model_section(res, bandwidth)
    lines += [
        "## Reproduce",
        "",
        "```sh",
        *(["pip install -e .                   # llama-rewire",
           "python benchmarks/bench.py setup   # build/bench/bin/llama-bench, benchmarks/.venv-lcpp"]
          if not args.n_gpu_layers else
          ['CMAKE_ARGS="-DGGML_CUDA=on" pip install -e .    # llama-rewire, CUDA build',
           "python benchmarks/bench.py setup --skip-lcpp --cmake-arg=-DGGML_CUDA=on   # llama-bench, CUDA"]),
        f"python benchmarks/bench.py run -t {args.threads} --reps {args.reps} --runs {args.runs}"
        + (f" --tg-method {args.tg_method}" if args.tg_method != "generate" else "")
        + (f" --only {' '.join(args.only)}" if args.only else "")
        + (f" --pairs {args.pairs}" if args.pairs != 20 else "")
        + ("" if args.repack_rows else " --no-repack-rows")
        + (" --portable-python VENV/bin/python" if args.portable_python else "")
        + (f" --n-gpu-layers {args.n_gpu_layers}" if args.n_gpu_layers else "")
        + f" --models {' '.join(Path(m).name if m.endswith('.gguf') else m for m in args.models)}",
        "```",
        "",
        "The models are fetched with `llama_rewire.models.fetch`. Run on an otherwise idle machine: "
        "with other processes on its cores, OpenMP's spin-waiting threads lose far more than their share.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def residual_notes(results: list[ModelResult]) -> list[str]:
    """What the residual-stream rows measure, when the run has them."""
    if not any(k in r.samples for r in results for k in RESIDUAL):
        return []
    return [
        "- Residual stream: \"a control vector on every layer and token\" is `set_steering` with one "
        "direction for each layer (random values; an addition costs the same whatever they are), applied "
        "at every position of pp and tg. \"capture\" measures pp as `llm.capture(tokens, "
        "taps=\"resid_post\")` over the same 512 tokens (one float32 row per layer and token copied out, "
        "`[n_layer, 512, n_embd]`); its tg is plain generation. A capture needs every row of the last "
        "layer; it keeps them without making every position an output, so only the last position's "
        "logits are computed. The `logits_all` row is a plain eval that keeps every position's logits: "
        "what a capture would cost if it got those rows by asking for every output.",
    ]


def lcpp_version(python: str) -> str:
    code = "import llama_cpp; print(llama_cpp.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def portable_build(python: str) -> str:
    """Which build that Python imports, and the CPU variant it picked (llama_rewire.system_info)."""
    code = ("import json, llama_rewire as l; i = l.system_info(); "
            "print(json.dumps([i['build'], i['cpu_variant'], sorted(i['cpu_variants'])]))")  # fmt: skip
    answer = subprocess.check_output([python, "-c", code], cwd=HERE, text=True)
    build, variant, variants = json.loads(answer)
    if build != "portable":
        raise SystemExit(f"--portable-python {python}: its llama-rewire is a {build} build")
    return (f"CPU variant `{variant}`, picked at import from its {len(variants)} "
            f"({', '.join(variants)}); wheel built with `LLAMA_REWIRE_PORTABLE=ON`, "
            "repaired by auditwheel")


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = str(HERE / ("RESULTS-gpu.md" if args.n_gpu_layers else "RESULTS.md"))
    if args.n_gpu_layers:
        # a GPU run: the weights are on the GPU (no CPU repacking to compare), and the llama-cpp-python
        # environment that setup builds is a CPU build (its row only when named)
        args.repack_rows = False
    elif args.lcpp_python is None and peers.venv_python(DEFAULT_VENV).exists():
        args.lcpp_python = str(peers.venv_python(DEFAULT_VENV))
    if args.llama_bench is None:
        found = peers.tool_path(DEFAULT_BUILD, "llama-bench")
        args.llama_bench = str(found) if found else None
    for what, value in (("llama-cpp-python", args.lcpp_python), ("llama-bench", args.llama_bench)):
        if not value:
            log(f"note: {what} not found, its row is left out (see `python benchmarks/bench.py setup`)")
    args.lcpp_version = lcpp_version(args.lcpp_python) if args.lcpp_python else None
    args.portable_build = portable_build(args.portable_python) if args.portable_python else None

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    idle = CpuMeter()
    time.sleep(3)
    before = idle.others()
    log(f"other processes before the run: {describe_noise(before)}")
    meter = CpuMeter()
    bandwidth = None if args.n_gpu_layers else read_bandwidth(args.threads)
    if bandwidth:
        log(f"read bandwidth: {bandwidth:.1f} GB/s")
    results = [bench_model(model_info(name, args.threads), args) for name in args.models]
    during = meter.others()
    log(f"other processes during the run: {describe_noise(during)}")
    text = report(results, args, bandwidth, started, (describe_noise(before), describe_noise(during)))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    if args.json:
        raw = [{"model": r.info.name, "size": r.info.size, "bandwidth_gbps": bandwidth,
                "samples": {k: vars(s) for k, s in r.samples.items()}, "switch": r.switch, "split": r.split,
                "resid": r.resid}
               for r in results]  # fmt: skip
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="build llama-bench and the llama-cpp-python venv")
    p.add_argument(
        "--build-dir", type=Path, default=DEFAULT_BUILD, help="CMake build directory for llama-bench"
    )
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtual environment for llama-cpp-python")
    p.add_argument("--skip-llama-bench", action="store_true", help="do not build llama-bench")
    p.add_argument("--skip-lcpp", action="store_true", help=f"do not install {LCPP_REQUIREMENT}")
    p.add_argument("--cmake-arg", action="append", default=[], metavar="ARG",
                   help="an extra CMake argument for llama-bench's build (repeatable), e.g. "
                        "--cmake-arg=-DGGML_CUDA=on for a GPU run")
    p.set_defaults(func=setup)

    p = sub.add_parser("run", help="measure, print the table and write it to --out")
    p.add_argument("-t", "--threads", type=int, default=2, help="threads for every configuration (2)")
    p.add_argument("--reps", type=int, default=5, help="rounds (5)")
    p.add_argument("--runs", type=int, default=3, help="runs of each configuration in a round (3)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names for models.fetch")
    p.add_argument("--no-repack-rows", dest="repack_rows", action="store_false",
                   help="leave out the rows with weights as stored (use_extra_bufts=False, --repack 0)")
    p.add_argument("--lcpp-python", help=f"a Python with llama-cpp-python ({DEFAULT_VENV.relative_to(ROOT)})")
    p.add_argument("--portable-python",
                   help="a Python with the portable wheel installed (its row is measured against this build)")
    p.add_argument("--llama-bench", help=f"the llama-bench binary ({DEFAULT_BUILD.relative_to(ROOT)}/bin)")
    p.add_argument(
        "--tg-method",
        choices=["generate", "eval"],
        default="generate",
        help="generation loop of both Python libraries: generate(temperature=0) or eval + argmax",
    )
    p.add_argument("--pairs", type=int, default=20,
                   help="steering and capture measured in pairs within one process, after the rounds (20; "
                        "0: not)")
    p.add_argument("--only", nargs="+", metavar="KEY", default=None,
                   help="measure only these configurations next to 'none' (e.g. loop steer capture "
                        "logits); skips the split and switch measurements")
    p.add_argument("--n-gpu-layers", "-ngl", type=int, default=0,
                   help="layers offloaded to the GPU backend of a GPU build (-1: all and the output; 0, the "
                        "default: CPU only), for llama-rewire and llama-bench alike; leaves out the rows of "
                        "weights as stored, and llama-cpp-python unless --lcpp-python names one")
    p.add_argument("--out", default=None,
                   help="markdown output ('' for none; default benchmarks/RESULTS.md, RESULTS-gpu.md with "
                        "--n-gpu-layers)")
    p.add_argument("--json", help="also write the raw samples here")
    p.set_defaults(func=run)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""Prompt processing and generation with a model's layers local, on one RPC server, and split across two.

    python benchmarks/rpc_bench.py                      # SmolLM2 and Gemma-3, 5 rounds; writes RESULTS-rpc.md
    python benchmarks/rpc_bench.py --models smollm2 --rounds 3 --out ''

Both servers are ``llama-rewire rpc-server`` processes on loopback, started here with OMP_WAIT_POLICY=PASSIVE
(idle OpenMP threads sleep instead of spinning, so the client and the servers do not fight over the cores).
Each round loads every configuration in this process, in a shuffled order, and measures pp512 (one eval of
512 random tokens from an empty cache) and tg128 (128 single-token evals); the ratios to the local run are
taken within a round. RPC buys capacity (a model larger than one machine's memory), not speed: on one
machine over loopback it adds a round trip per device per decode and moves each split's activations.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = ("local", "one server", "two servers")
N_PP, N_TG = 512, 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(path: Path, config: str, endpoints: list[str], threads: int) -> Any:
    from llama_rewire import Llama

    kwargs: dict[str, Any] = {"n_ctx": N_PP + N_TG + 16, "n_batch": N_PP, "n_ubatch": N_PP,
                              "n_threads": threads, "verbose": False}  # fmt: skip
    if config == "one server":
        kwargs.update(rpc_servers=endpoints[0], n_gpu_layers=-1)
    elif config == "two servers":
        kwargs.update(rpc_servers=",".join(endpoints), n_gpu_layers=-1, tensor_split=[1, 1])
    return Llama(str(path), **kwargs)


def measure(llm: Any, rng: random.Random) -> tuple[float, float]:
    """(pp tokens/s, tg tokens/s) of one run."""
    n_vocab = llm.n_vocab()
    llm.reset()
    llm.eval([rng.randrange(n_vocab) for _ in range(8)])  # warm-up
    llm.reset()
    prompt = [rng.randrange(n_vocab) for _ in range(N_PP)]
    start = time.perf_counter()
    llm.eval(prompt)
    pp = N_PP / (time.perf_counter() - start)
    llm.reset()
    llm.eval([prompt[0]])
    start = time.perf_counter()
    for i in range(N_TG):
        llm.eval([prompt[1 + i]])
    tg = N_TG / (time.perf_counter() - start)
    return pp, tg


def bench_model(name: str, rounds: int, threads: int, seed: int) -> dict[str, Any]:
    from llama_rewire.models import resolve

    path = resolve(name)
    rng = random.Random(seed)
    rows: dict[str, list[tuple[float, float]]] = {c: [] for c in CONFIGS}
    from llama_rewire import rpc

    with rpc.local_servers(2, threads=threads) as endpoints:
        for r in range(rounds):
            order = list(CONFIGS)
            rng.shuffle(order)
            for config in order:
                llm = load(path, config, endpoints, threads)
                try:
                    rows[config].append(measure(llm, rng))
                finally:
                    llm.close()
            log(f"{name} round {r + 1}: " + ", ".join(
                f"{c} pp {rows[c][-1][0]:.0f} tg {rows[c][-1][1]:.1f}" for c in CONFIGS))
    return {"name": name, "file": path.name, "rows": rows}


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def section(res: dict[str, Any]) -> list[str]:
    rows = res["rows"]
    local = rows["local"]
    out = [f"## {res['name']} (`{res['file']}`)", "",
           "| layers | pp512 tok/s | tg128 tok/s | pp / local | tg / local |", "|---|---:|---:|---:|---:|"]
    for config in CONFIGS:
        pp = [p for p, _ in rows[config]]
        tg = [t for _, t in rows[config]]
        pp_ratio = med([a[0] / b[0] for a, b in zip(rows[config], local)])
        tg_ratio = med([a[1] / b[1] for a, b in zip(rows[config], local)])
        out.append(f"| {config} | {med(pp):.1f} | {med(tg):.1f} | {pp_ratio:.3f} | {tg_ratio:.3f} |")
    return [*out, ""]


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: str) -> str:
    from llama_rewire import system_info

    cpu = system_info()["cpu_model"]
    lines = [
        "# RPC benchmarks", "",
        "Written by `benchmarks/rpc_bench.py`; do not edit by hand.", "",
        f"- Date: {started}",
        f"- Machine: {cpu}, {os.cpu_count()} logical cores; {platform.platform()}",
        f"- Threads: {args.threads} in the client and in each server; n_batch = n_ubatch = {N_PP}; CPU only",
        "- Layers: local (no RPC); one server (every layer and the output on one `llama-rewire rpc-server` "
        "on loopback, `n_gpu_layers=-1`); two servers (split 1:1, `tensor_split=[1, 1]`). The servers run "
        "with OMP_WAIT_POLICY=PASSIVE; the client with the default.",
        f"- pp512: one eval of {N_PP} random tokens from an empty cache; tg128: {N_TG} single-token evals. "
        f"Each cell: the median of {args.rounds} rounds; a round loads every configuration in a shuffled "
        "order. The ratios are medians of the per-round ratios.",
        "- RPC buys capacity, not speed: the layers still run on these same cores, one device at a time, and "
        "each decode adds a round trip per device plus the activations crossing each split.", "",
    ]
    for res in results:
        lines += section(res)
    command = " ".join(["python benchmarks/rpc_bench.py", *sys.argv[1:]])
    lines += ["## Reproduce", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2", "gemma3"], help="known model names")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "RESULTS-rpc.md"), help="markdown output ('' for none)")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = [bench_model(m, args.rounds, args.threads, args.seed) for m in args.models]
    text = report(results, args, started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed of two source trees of llama-rewire against each other (a refactoring must not slow anything).

    python benchmarks/ab_trees.py A_SRC B_SRC [--rounds 7] [--model smollm2]

``A_SRC`` and ``B_SRC`` are ``src`` folders holding a ``llama_rewire`` package with its built ``_core``.
Each round runs, in a fresh process per tree and in alternating order: prompt processing (``eval`` of a
512-token prompt from an empty cache, tokens/s), generation (``create_completion`` of 128 greedy tokens,
tokens/s: the Python path of a completion, sampling included) and the parallel slots' aggregate
(``slots.create_completions`` of 8 prompts x 32 greedy tokens on ``n_parallel=8``, generated tokens/s).
It prints, per metric, the median over rounds of B/A and of A/A' (A against itself in another process
of the same round: the noise of the comparison). Runs with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N_PROMPT, N_GEN, N_SLOTS, N_SLOT_GEN = 512, 128, 8, 32


def worker(model: str) -> dict[str, float]:
    from llama_rewire import Llama, models

    path = models.fetch(model, progress=False)
    out: dict[str, float] = {}
    with Llama(str(path), n_ctx=1024, n_batch=512, n_threads=2, verbose=False) as llm:
        text = b" ".join(b"word%d" % i for i in range(N_PROMPT))
        toks = llm.tokenize(text)[:N_PROMPT]
        llm.eval(toks[:8])  # warm-up
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        out["pp"] = len(toks) / (time.perf_counter() - t)
        llm.reset()
        llm("The quick brown fox", max_tokens=8, temperature=0.0)
        t = time.perf_counter()
        r = llm.create_completion("Once upon a time", max_tokens=N_GEN, temperature=0.0)
        out["tg"] = r["usage"]["completion_tokens"] / (time.perf_counter() - t)
    with Llama(str(path), n_ctx=256, n_parallel=N_SLOTS, n_threads=2, verbose=False) as llm:
        prompts = [f"Story number {i}: once upon a time" for i in range(N_SLOTS)]
        llm.slots.create_completions(prompts[:2], max_tokens=4, temperature=0.0)  # warm-up
        t = time.perf_counter()
        results = llm.slots.create_completions(prompts, max_tokens=N_SLOT_GEN, temperature=0.0)
        n = sum(r["usage"]["completion_tokens"] for r in results)
        out["slots"] = n / (time.perf_counter() - t)
    return out


def measure(src: str, model: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, __file__, "--worker", "--model", model], env=env,
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", nargs="?")
    p.add_argument("b", nargs="?")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model)))
        return
    ratios: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = [("A", args.a), ("B", args.b), ("A2", args.a)] if r % 2 == 0 else \
                [("B", args.b), ("A", args.a), ("A2", args.a)]
        got = {name: measure(src, args.model) for name, src in order}
        for metric in got["A"]:
            ratios.setdefault(f"{metric} B/A", []).append(got["B"][metric] / got["A"][metric])
            ratios.setdefault(f"{metric} A/A'", []).append(got["A2"][metric] / got["A"][metric])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}" for name in ("A", "B") for k, v in
                                             ((f"{name}.{m}", got[name][m]) for m in got[name])), flush=True)
    for key, values in sorted(ratios.items()):
        print(f"{key:12s} median {statistics.median(values):.3f}  "
              f"(min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()

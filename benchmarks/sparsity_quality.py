"""Calibrated sparse activations: held-out sparsity and perplexity cost at several target sparsities.

    python benchmarks/sparsity_quality.py [MODEL ...] [--ctx 256] [--targets 0.25,0.4,0.5]

For each model (default: smollm2 and gemma3-270m): calibrate the per-layer thresholds on the first half
of the packaged sample text, then on the second half (held out) measure the fraction of zeros per layer
and the perplexity (llama-perplexity's windowed method), against the unmodified model. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llama_rewire import Llama
from llama_rewire.eval import perplexity
from llama_rewire.eval.sparsity import calibrate, measure_sparsity
from llama_rewire.eval.text import sample_text
from llama_rewire.models import fetch


def run_model(name: str, targets: list[float], n_ctx: int, threads: int | None) -> list[str]:
    text = sample_text()
    calib, held_out = text[: len(text) // 2], text[len(text) // 2 :]
    rows = []
    with Llama(str(fetch(name, progress=False)), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
               observe_ffn=True, n_threads=threads, verbose=False) as llm:
        base = perplexity(llm, held_out, n_ctx)
        rows.append(f"| {name} | 0 (original) | - | {base.ppl:.2f} ± {base.ppl_stderr:.2f} | - | - |")
        for target in targets:
            start = time.perf_counter()
            cal = calibrate(llm, calib, target, n_ctx)
            seconds = time.perf_counter() - start
            zeros = measure_sparsity(llm, held_out, cal.spec(), n_ctx)
            llm.set_activations(cal.spec())
            ppl = perplexity(llm, held_out, n_ctx)
            llm.set_activations(None)
            rows.append(
                f"| {name} | {target:.2f} | {np.mean(zeros):.3f} ({np.min(zeros):.3f}-{np.max(zeros):.3f}) "
                f"| {ppl.ppl:.2f} ± {ppl.ppl_stderr:.2f} | {100 * (ppl.ppl / base.ppl - 1):+.1f}% "
                f"| {seconds:.0f} s |"
            )
            print(rows[-1], flush=True)
        rows.append(f"|  | scored tokens: {base.n_tokens} |  |  |  |  |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--targets", default="0.25,0.4,0.5")
    parser.add_argument("-t", "--threads", type=int, default=None)
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    table = [
        "| model | target sparsity | held-out sparsity: mean (min-max over layers) | held-out PPL | ΔPPL "
        "| calibration time |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models:
        table += run_model(name, targets, args.ctx, args.threads)
    print("\n".join(table))


if __name__ == "__main__":
    main()

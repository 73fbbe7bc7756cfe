"""How much a prompt's logits depend on how it was batched, with weights repacked and as stored.

    python benchmarks/batch_dependence.py [MODEL ...] [--threads N]

For each model (default: smollm2 and gemma3-270m), with ``use_extra_bufts`` on and off, and for each
prompt: the last position's logits of the prompt evaluated in one batch, against the prompt less its
last token followed by that token alone (what a cache hit on the prefix does). Prints one markdown row
per case: the largest logit difference, KL(whole || split) in nats, whether the top token is the same,
whether evaluating the prompt whole a second time is bit-identical, and which buffers hold the weights.
Not a speed figure: the answer depends on the CPU's kernels (``llama-rewire info --system``).
"""

from __future__ import annotations

import argparse

import numpy as np

from llama_rewire import Llama, system_info
from llama_rewire.models import fetch

PROMPTS = (
    "The capital of France is Paris, and the capital of Germany is Berlin. The capital of Italy is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old",
)


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - float(x.max())
        return x - np.log(np.exp(x).sum())

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def last_logits(llm: Llama, parts: list[list[int]]) -> np.ndarray:
    llm.reset()
    for part in parts:
        llm.eval(part)
    return np.array(llm.scores[llm.n_tokens - 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["smollm2", "gemma3-270m"])
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args(argv)
    info = system_info()
    print(f"CPU: {info['cpu_model']}; kernels: {info['cpu_path']}\n")
    print("| model | use_extra_bufts | tokens | max abs diff | KL | same top token | whole twice identical "
          "| weight buffers |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for name in args.models:
        path = str(fetch(name, progress=False))
        for repack in (True, False):
            with Llama(path, n_ctx=512, n_threads=args.threads, verbose=False, use_extra_bufts=repack,
                       logits_all=True) as llm:
                buffers = ", ".join(sorted(llm.weight_buffers()))
                for prompt in PROMPTS:
                    tokens = llm.tokenize(prompt.encode())
                    whole = last_logits(llm, [tokens])
                    split = last_logits(llm, [tokens[:-1], tokens[-1:]])
                    again = last_logits(llm, [tokens])
                    print(f"| {name} | {repack} | {len(tokens)} | {float(np.abs(whole - split).max()):.3f} "
                          f"| {kl(whole, split):.4f} | {whole.argmax() == split.argmax()} "
                          f"| {np.array_equal(whole, again)} | {buffers} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

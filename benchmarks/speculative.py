"""Prompt-lookup speculative decoding: generation speed with and without it, and the same greedy text.

    python benchmarks/speculative.py [MODEL ...] [--tokens 192] [--rounds 3] [--draft 2,10] [--threads N]

For each model (default: smollm2 and gemma3-270m) and each input-grounded task (copying a passage of the
packaged sample text; repeating a piece of Python source), generate greedily with a plain ``Llama`` and
with ``draft_model=LlamaPromptLookupDecoding(max_ngram_size, num_pred_tokens)``. The prompt is evaluated
once beforehand (prefix reuse), so the timings are of generation alone; each figure is the median of the
rounds. Prints a markdown table: tokens/s of both, the speed-up, the tokens produced per verifying decode,
and whether the two texts are identical.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from typing import Any

from llama_rewire import Llama, LlamaDraftModel, LlamaPromptLookupDecoding, llama_speculative
from llama_rewire.eval.text import sample_text
from llama_rewire.models import fetch


class _Counted(LlamaDraftModel):
    def __init__(self, inner: LlamaDraftModel) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner(input_ids)


def tasks() -> dict[str, str]:
    passage = sample_text()[:1400]
    source = inspect.getsource(llama_speculative.LlamaPromptLookupDecoding)[:1400]
    return {
        "copy a passage": f"Copy the text exactly.\n\nText:\n{passage}\n\nCopy:\n{passage[:40]}",
        "repeat code": f"Here is a Python class.\n\n{source}\n\nThe same class, unchanged:\n\n{source[:40]}",
    }


def timed(llm: Llama, prompt: str, n: int) -> tuple[float, str, int]:
    llm(prompt, max_tokens=1, temperature=0.0)  # the prompt is in the KV cache now
    start = time.perf_counter()
    out = llm(prompt, max_tokens=n, temperature=0.0)
    seconds = time.perf_counter() - start
    assert isinstance(out, dict)
    return seconds, out["choices"][0]["text"], out["usage"]["completion_tokens"]


def run_model(name: str, n: int, rounds: int, draft: tuple[int, int], threads: int | None) -> list[str]:
    path = str(fetch(name, progress=False))
    counted = _Counted(LlamaPromptLookupDecoding(*draft))
    plain = Llama(path, n_ctx=2048, n_threads=threads, verbose=False)
    spec = Llama(path, n_ctx=2048, n_threads=threads, verbose=False, draft_model=counted)
    rows = []
    for task, prompt in tasks().items():
        t_plain, t_spec, decodes = [], [], 0
        text_plain = text_spec = ""
        n_plain = n_spec = 0
        for _ in range(rounds):
            s, text_plain, n_plain = timed(plain, prompt, n)
            t_plain.append(s)
            counted.calls = 0
            s, text_spec, n_spec = timed(spec, prompt, n)
            t_spec.append(s)
            decodes = counted.calls
        tps_plain = n_plain / statistics.median(t_plain)
        tps_spec = n_spec / statistics.median(t_spec)
        rows.append(f"| {name} | {task} | {n_plain} | {tps_plain:.1f} | {tps_spec:.1f} | "
                    f"{tps_spec / tps_plain:.2f}x | {n_spec / max(1, decodes + 1):.1f} | "
                    f"{'yes' if text_plain == text_spec else 'no'} |")
        print(rows[-1], flush=True)
    plain.close()
    spec.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draft", default="2,10", help="max_ngram_size,num_pred_tokens")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    ngram, pred = (int(x) for x in args.draft.split(","))
    print(f"LlamaPromptLookupDecoding(max_ngram_size={ngram}, num_pred_tokens={pred}), "
          f"{args.tokens} tokens, median of {args.rounds}\n")
    print("| model | task | tokens | plain tok/s | prompt lookup tok/s | speed-up | tokens per decode "
          "| same text |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        run_model(name, args.tokens, args.rounds, (ngram, pred), args.threads)


if __name__ == "__main__":
    main()

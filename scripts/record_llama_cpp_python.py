"""Record reference greedy completions from llama-cpp-python 0.3.36.

The llama-rewire test suite checks that, with no activation override, our greedy
completions match those of stock llama.cpp as wrapped by llama-cpp-python 0.3.36. This
script produces ``tests/data/llama_cpp_python_reference.json`` from the real GGUF models
listed in ``src/llama_rewire/models.py`` (fetched from PyPI into the llama-rewire cache).

llama-cpp-python must never share a process (or a virtualenv) with llama_rewire, so run
this script from a dedicated virtualenv, from the repository root::

    python -m venv .venv-lcpp
    .venv-lcpp/bin/pip install llama-cpp-python==0.3.36
    .venv-lcpp/bin/python scripts/record_llama_cpp_python.py

(llama-cpp-python compiles llama.cpp from source on install, which takes a few minutes;
numpy comes with it.) ``models.py`` is loaded by file path, so llama_rewire itself need not
be installed in that environment.

For every model and prompt it records:

- ``prompt_tokens``: the ids ``create_completion`` evaluates (BOS added when the model's
  metadata asks for it, then the prompt tokenized with ``special=True``);
- ``greedy_tokens`` and ``text``: the ids sampled and the text returned by
  ``create_completion(prompt, max_tokens=24, temperature=0.0, top_k=1, repeat_penalty=1.0)``,
  with ``eog_token`` the end-of-generation id that stopped it early (``null`` if it ran to
  ``max_tokens``);
- ``last_logits_top5``: ``[id, logit]`` of the five largest logits at the last prompt
  position, from a plain ``eval`` of the prompt (``logits_all=False``);
- ``min_greedy_margin``: the smallest top-1 minus top-2 logit gap over the greedy steps, from
  an independent eval + argmax loop whose ids are checked to equal ``greedy_tokens``. A
  small margin means a near-tie that tiny numerical differences could flip.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import llama_cpp
import numpy as np

EXPECTED_VERSION = "0.3.36"
REPO = Path(__file__).resolve().parent.parent
MODELS_PY = REPO / "src" / "llama_rewire" / "models.py"
DEFAULT_OUTPUT = REPO / "tests" / "data" / "llama_cpp_python_reference.json"

MODEL_NAMES = ("smollm2", "gemma3-270m")
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,")
LLAMA_KWARGS: dict[str, Any] = {"n_ctx": 512, "n_threads": 2, "seed": 0, "verbose": False}
COMPLETION_KWARGS: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "repeat_penalty": 1.0, "top_k": 1}
TOP_K_LOGITS = 5
LOGIT_DECIMALS = 4
_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:\s*,\s*-?[\d.eE+-]+)*)\s*\]")


def load_models_module() -> ModuleType:
    """Import src/llama_rewire/models.py by path (llama_rewire is not installed here)."""
    spec = importlib.util.spec_from_file_location("llama_rewire_models", MODELS_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {MODELS_PY}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """Logits of the last evaluated position (the only output row when logits_all=False)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def top_logits(logits: np.ndarray, k: int = TOP_K_LOGITS) -> list[list[float | int]]:
    order = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), round(float(logits[i]), LOGIT_DECIMALS)] for i in order]


def is_eog(llm: llama_cpp.Llama, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def argmax_decode(llm: llama_cpp.Llama, prompt_tokens: list[int], max_tokens: int) -> dict[str, Any]:
    """Greedy decoding by hand: eval, take the argmax, feed it back.

    Returns the ids, the logits at the last prompt position and the smallest gap between the
    best and second-best logit over all steps (how close greedy decoding came to a tie).
    """
    llm.reset()
    llm.eval(prompt_tokens)
    first = logits = last_logits(llm)
    out: list[int] = []
    margin = float("inf")
    for _ in range(max_tokens):
        top2 = np.partition(logits, -2)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        token = int(np.argmax(logits))
        out.append(token)
        if is_eog(llm, token):
            break
        llm.eval([token])
        logits = last_logits(llm)
    return {"tokens": out, "first_logits": first, "min_margin": margin}


def completion_with_tokens(llm: llama_cpp.Llama, prompt: str) -> tuple[list[int], list[int], dict[str, Any]]:
    """Run create_completion, capturing the prompt ids and sampled ids it passes through generate()."""
    captured: dict[str, list[int]] = {"prompt": [], "sampled": []}
    original = llm.generate

    def spy(tokens: list[int], **kwargs: Any) -> Any:
        captured["prompt"] = list(tokens)
        for token in original(tokens, **kwargs):
            captured["sampled"].append(int(token))
            yield token

    llm.reset()
    llm.generate = spy  # type: ignore[method-assign]
    try:
        result = llm.create_completion(prompt, **COMPLETION_KWARGS)
    finally:
        del llm.generate
    return captured["prompt"], captured["sampled"], result


def record_case(llm: llama_cpp.Llama, prompt: str) -> dict[str, Any]:
    prompt_tokens, sampled, result = completion_with_tokens(llm, prompt)
    choice = result["choices"][0]
    eog = sampled[-1] if sampled and is_eog(llm, sampled[-1]) else None
    greedy = sampled[:-1] if eog is not None else sampled

    plain = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    if plain != prompt_tokens:
        print(f"  note: tokenize(add_bos=True, special=False) gives {plain}", file=sys.stderr)
    manual = argmax_decode(llm, prompt_tokens, COMPLETION_KWARGS["max_tokens"])
    if manual["tokens"] != sampled:
        raise RuntimeError(
            f"{prompt!r}: create_completion ids {sampled} != eval+argmax ids {manual['tokens']}"
        )
    text = llm.detokenize(greedy, prev_tokens=prompt_tokens).decode("utf-8", errors="replace")
    if text != choice["text"]:
        print(f"  note: detokenized ids {text!r} != completion text {choice['text']!r}", file=sys.stderr)

    return {
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "greedy_tokens": greedy,
        "eog_token": eog,
        "finish_reason": choice["finish_reason"],
        "text": choice["text"],
        "last_logits_top5": top_logits(manual["first_logits"]),
        "min_greedy_margin": round(manual["min_margin"], LOGIT_DECIMALS),
    }


def record_model(models: ModuleType, name: str) -> dict[str, Any]:
    path = models.fetch(name)
    llm = llama_cpp.Llama(model_path=str(path), **LLAMA_KWARGS)
    try:
        n_vocab = llm.n_vocab()
        cases = []
        for prompt in PROMPTS:
            case = record_case(llm, prompt)
            print(f"[{name}] {prompt!r} -> {case['text']!r}", file=sys.stderr)
            cases.append(case)
    finally:
        llm.close()
    spec = models.get_spec(name)
    return {"file": spec.filename, "sha256": spec.sha256, "n_vocab": n_vocab, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), help="model names (see models.py)")
    parser.add_argument(
        "--any-version", action="store_true", help=f"allow a version other than {EXPECTED_VERSION}"
    )
    args = parser.parse_args(argv)

    version = llama_cpp.__version__
    if version != EXPECTED_VERSION and not args.any_version:
        parser.error(f"llama-cpp-python {EXPECTED_VERSION} is required, found {version} (see --any-version)")

    models = load_models_module()
    data = {
        "llama_cpp_python": version,
        "settings": {"llama": LLAMA_KWARGS, "completion": COMPLETION_KWARGS},
        "models": {name: record_model(models, name) for name in args.models},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_dump(data) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _dump(data: Any) -> str:
    """Indented JSON with lists of numbers kept on one line, so the file stays short and diffable."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


if __name__ == "__main__":
    sys.exit(main())

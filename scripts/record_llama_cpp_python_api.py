"""Record what llama-cpp-python 0.3.36's high-level API returns, for the drop-in parity tests.

Run it from the virtual environment that has llama-cpp-python (never the one with llama_rewire), from
the repository root::

    benchmarks/.venv-lcpp/bin/python scripts/record_llama_cpp_python_api.py

It writes ``tests/data/llama_cpp_python_api_reference.json`` with:

- ``tokenize``: ids of ``Llama.tokenize`` on the vocab-only GGUFs of ``vendor/llama.cpp/models``, for
  several texts, with and without BOS and special-token parsing, and ``detokenize`` of those ids;
- ``chat``: greedy ``create_chat_completion`` answers of SmolLM2 (its GGUF chat template);
- ``seeded``: seeded sampled completions (temperature 0.8, default top-k/top-p/min-p) of both models;
- ``logprobs``: a greedy completion of SmolLM2 with ``logprobs=3``;
- ``embeddings``: mean-pooled embeddings of SmolLM2 (first values and norms).

With ``--names`` it writes ``tests/data/llama_cpp_python_names.json`` instead: the public names of each
module of the package (read from its sources, so ``--source DIR`` may name an unpacked sdist's
``llama_cpp`` folder instead of the installed package) and the public members of ``Llama`` (methods,
properties and the attributes ``__init__`` sets), for tests/test_dropin.py::

    python scripts/record_llama_cpp_python_api.py --names --source /path/to/llama_cpp
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:
    import llama_cpp
except ImportError:  # --names --source reads the sources only
    llama_cpp = None

REPO = Path(__file__).resolve().parent.parent
MODELS_PY = REPO / "src" / "llama_rewire" / "models.py"
VOCABS = REPO / "vendor" / "llama.cpp" / "models"
DEFAULT_OUTPUT = REPO / "tests" / "data" / "llama_cpp_python_api_reference.json"
NAMES_OUTPUT = REPO / "tests" / "data" / "llama_cpp_python_names.json"

VOCAB_NAMES = ("llama-spm", "llama-bpe", "gpt-2", "qwen2", "phi-3", "gemma-4", "falcon", "bert-bge")
TEXTS = ("Hello World", " Hello World", "Hello World</s>", "<s>hi</s>", "<|im_start|>user\nhi<|im_end|>",
         "Ünïcödé 日本語 🎉", "  multiple   spaces\n\nand newlines", "How are you ?", "")
CHATS = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}],
)
PROMPT = "The capital of France is"
KW: dict[str, Any] = {"n_ctx": 512, "n_threads": 2, "verbose": False}


def fetch(name: str) -> str:
    spec = importlib.util.spec_from_file_location("llama_rewire_models", MODELS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.fetch(name, progress=False))


def record_tokenize() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in VOCAB_NAMES:
        llm = llama_cpp.Llama(str(VOCABS / f"ggml-vocab-{name}.gguf"), vocab_only=True, verbose=False)
        cases = []
        for text in TEXTS:
            for add_bos in (True, False):
                for special in (True, False):
                    ids = llm.tokenize(text.encode(), add_bos=add_bos, special=special)
                    cases.append({"text": text, "add_bos": add_bos, "special": special, "ids": ids,
                                  "detok": llm.detokenize(ids).decode("utf-8", errors="replace"),
                                  "detok_special": llm.detokenize(ids, special=True).decode(
                                      "utf-8", errors="replace")})
        out[name] = cases
    return out


def record_models() -> dict[str, Any]:
    smol, gemma = fetch("smollm2"), fetch("gemma3-270m")
    llm = llama_cpp.Llama(smol, **KW)
    chat = [{"messages": m, "content": llm.create_chat_completion(m, max_tokens=24, temperature=0.0)[
        "choices"][0]["message"]["content"]} for m in CHATS]
    seeded: dict[str, Any] = {}
    for name, path in (("smollm2", smol), ("gemma3-270m", gemma)):
        m = llm if name == "smollm2" else llama_cpp.Llama(path, **KW)
        seeded[name] = [
            {"seed": s, "text": m(PROMPT, max_tokens=24, temperature=0.8, seed=s)["choices"][0]["text"]}
            for s in (1, 42, 1234)
        ]
    lp_llm = llama_cpp.Llama(smol, logits_all=True, **KW)
    out = lp_llm(PROMPT, max_tokens=6, temperature=0.0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    logprobs = {"text": out["choices"][0]["text"], "tokens": lp["tokens"], "text_offset": lp["text_offset"],
                "token_logprobs": [round(float(x), 3) for x in lp["token_logprobs"]],
                "top_keys": [sorted(t) for t in lp["top_logprobs"]]}
    emb_llm = llama_cpp.Llama(smol, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, **KW)
    texts = ["hello world", "Paris is the capital of France."]
    vectors = emb_llm.embed(texts)
    embeddings = {"texts": texts, "head": [[round(float(x), 4) for x in v[:8]] for v in vectors],
                  "norm": [round(float(np.linalg.norm(v)), 3) for v in vectors]}
    return {"chat": chat, "seeded": seeded, "logprobs": logprobs, "embeddings": embeddings}


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def _llama_members(tree: ast.Module) -> set[str]:
    """Llama's public methods and properties, and the public attributes its methods set on self."""
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Llama")
    members = {b.name for b in cls.body if isinstance(b, ast.FunctionDef)}
    members |= {a.attr for a in ast.walk(cls) if isinstance(a, ast.Attribute) and isinstance(a.ctx, ast.Store)
                and isinstance(a.value, ast.Name) and a.value.id == "self"}
    return {m for m in members if not m.startswith("_")}


def record_names(root: Path) -> dict[str, Any]:
    """Public names by module (``llama_cpp.llama_chat_format``, ...) and Llama's members, from sources."""
    modules: dict[str, list[str]] = {}
    llama: list[str] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("llama_cpp", *parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules[name] = sorted(_top_level_names(tree))
        if parts == ("llama",):
            llama = sorted(_llama_members(tree))
    return {"modules": modules, "Llama": llama}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--names", action="store_true", help="record the public names only")
    parser.add_argument("--source", type=Path, default=None,
                        help="with --names: the llama_cpp source folder (default: the installed package)")
    args = parser.parse_args()
    if args.names:
        if args.source is None and llama_cpp is None:
            print("llama_cpp is not installed: give --source", file=sys.stderr)
            return 1
        root = args.source or Path(llama_cpp.__file__).parent
        init = (root / "__init__.py").read_text(encoding="utf-8")
        version = next((line.split('"')[1] for line in init.splitlines()
                        if line.startswith("__version__")), "")
        if version != "0.3.36":
            print(f"llama-cpp-python 0.3.36 expected, found {version!r}", file=sys.stderr)
            return 1
        out = args.output or NAMES_OUTPUT
        out.write_text(json.dumps({"llama_cpp_python": version, **record_names(root)}, indent=1) + "\n")
        print(f"wrote {out}")
        return 0
    args.output = args.output or DEFAULT_OUTPUT
    if llama_cpp is None:
        print("llama_cpp is not installed", file=sys.stderr)
        return 1
    if llama_cpp.__version__ != "0.3.36":
        print(f"llama-cpp-python 0.3.36 expected, found {llama_cpp.__version__}", file=sys.stderr)
        return 1
    data = {"llama_cpp_python": llama_cpp.__version__, "tokenize": record_tokenize(), **record_models()}
    args.output.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run an installed llama-rewire (a wheel, not a source tree) once, and print what it did as JSON.

    python scripts/wheel_check.py [--model PATH | --fetch NAME] [--tiny PATH --tokens 1,2,3]

It prints the build and the CPU variant that ``system_info`` reports; with ``--tiny``, the logits of
every token of ``--tokens`` on that (tiny, generated) model, and with ``--rpc`` the same once more with
every layer on a local ``llama-rewire rpc-server`` (the RPC backend module); with a real model
(``--model``, or ``--fetch`` a name of ``llama_rewire.models``), a greedy chat answer with its
logprobs, then the same with every layer's FFN activation rewired (``--rewire``, default
``*:gelu``). The test of the portable wheel runs it in a fresh virtual environment and compares the
results with a numpy forward pass and with the build from source; the release's wheel builds run it
as their smoke test. It needs only the wheel and its dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import llama_rewire
from llama_rewire import Llama

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
# what the tests' tiny models are compared with numpy under: float32 KV cache, no flash attention
EXACT: dict[str, Any] = {"n_ctx": 64, "logits_all": True, "type_k": 0, "type_v": 0, "flash_attn": False,
                         "n_threads": 2, "verbose": False}  # fmt: skip


def answer(llm: Llama, max_tokens: int) -> dict[str, Any]:
    out = llm.create_chat_completion(QUESTION, max_tokens=max_tokens, temperature=0.0, logprobs=True,
                                     top_logprobs=2)  # fmt: skip
    choice = out["choices"][0]
    return {"text": choice["message"]["content"], "logprobs": choice["logprobs"]["content"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF path")
    parser.add_argument("--fetch", help="a model name for llama_rewire.models.fetch (e.g. smollm2)")
    parser.add_argument("--rewire", default="*:gelu", help="the activations of the rewired answer")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--tiny", help="a tiny GGUF whose logits to print")
    parser.add_argument("--tokens", default="1,17,200,45,3,99,128,64", help="its tokens, comma-separated")
    parser.add_argument("--rpc", action="store_true", help="also run the tiny model on a local RPC server")
    args = parser.parse_args(argv)

    info = llama_rewire.system_info()
    out: dict[str, Any] = {
        "package": llama_rewire.__file__,
        "python": sys.executable,
        **{key: info[key] for key in ("build", "cpu_variant", "cpu_variants", "cpu_path", "devices")},
    }
    if args.tiny:
        tokens = [int(t) for t in args.tokens.split(",")]
        with Llama(args.tiny, **EXACT) as llm:
            llm.eval(tokens)
            out["tiny_logits"] = [[float(x) for x in row] for row in llm.scores[: len(tokens)]]
        if args.rpc:
            from llama_rewire.rpc import local_servers

            with local_servers(1) as endpoints, Llama(args.tiny, rpc_servers=endpoints[0], n_gpu_layers=-1,
                                                      **EXACT) as llm:  # fmt: skip
                llm.eval(tokens)
                out["tiny_logits_rpc"] = [[float(x) for x in row] for row in llm.scores[: len(tokens)]]
    model = args.model
    if model is None and args.fetch:
        from llama_rewire.models import fetch

        model = str(fetch(args.fetch, progress=False))
    if model:
        with Llama(model, n_ctx=512, n_threads=2, seed=0, verbose=False) as llm:
            out["greedy"] = answer(llm, args.max_tokens)
            llm.set_activations(args.rewire)
            out["rewired"] = answer(llm, args.max_tokens)
        if out["rewired"]["text"] == out["greedy"]["text"]:
            print(f"rewiring with {args.rewire!r} did not change the answer", file=sys.stderr)
            return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``llama-rewire lens [MODEL] -p PROMPT``: the logit lens, each layer's residual stream read through the
model's final norm and output head, as a table (rows: layers, columns: the prompt's tokens, cells: the
top token and its probability) and, with ``--plot FILE``, a heat-map PNG.

Layer L's row is the model run with every layer after L left out, under the wiring given (``--wiring``,
``--act``): the last layer's row is the model's own next-token prediction at each position.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import (
    add_model_arg,
    add_wiring_args,
    layers_of,
    model_options,
    parse,
    resolve_model,
    run_guarded,
    wiring_of,
    wiring_text,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire lens", description=__doc__.split("\n\n")[0])
    add_model_arg(p)
    add_wiring_args(p, what="the wiring to read the lens under (default: the model as stored)")
    p.add_argument("-p", "--prompt", default="The capital of France is", help="the prompt (with BOS)")
    p.add_argument("--layers", default=None, metavar="SPEC",
                   help='the layers to show, e.g. "0-5,8", or --layers=-4--1 for the last four '
                        "(default: all)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="tokens kept per layer and position (default 5; the table shows the first, "
                        "--json all K)")
    p.add_argument("--width", type=int, default=10, metavar="N", help="characters per token in the table")
    p.add_argument("--plot", metavar="PNG", default=None, help="also write the heat map as a PNG")
    p.add_argument("-c", "--ctx", type=int, default=512, help="context size (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def lens_dict(lens: Any) -> dict[str, Any]:
    """A LogitLens as JSON: per layer, per position, the top tokens (id, text, probability)."""
    import numpy as np

    return {
        "tokens": list(lens.tokens),
        "token_text": list(lens.token_text),
        "layers": list(lens.layers),
        "top": [[[{"id": int(t), "text": lens.vocab[int(t)], "prob": float(np.exp(lp))}
                  for t, lp in zip(lens.ids[j, pos], lens.logprobs[j, pos])]
                 for pos in range(len(lens.tokens))]
                for j in range(len(lens.layers))],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..llama import Llama

        if args.top_k < 1:
            raise ValueError(f"--top-k must be positive, got {args.top_k}")
        if args.width < 2:
            raise ValueError(f"--width must be at least 2, got {args.width}")
        if not args.prompt:
            raise ValueError("-p: the prompt is empty")
        path = resolve_model(args.model)
        with Llama(path, n_ctx=args.ctx, n_batch=args.ctx, n_threads=args.threads, verbose=False,
                   **model_options(args)) as llm:
            wiring = wiring_of(args, llm)
            if wiring is not None:
                llm.set_wiring(wiring)
            layers = layers_of(args.layers, llm.n_layer(), "--layers")
            lens = llm.logit_lens(args.prompt, layers=layers, top_k=args.top_k)
        if args.plot:
            lens.plot(args.plot)
        if args.json:
            print(json.dumps({"model": str(path), "prompt": args.prompt, "wiring": wiring_text(args) or None,
                              **lens_dict(lens)}, indent=2, ensure_ascii=False))
            return 0
        print(f"model:  {path.name}\nprompt: {args.prompt!r}")
        if wiring is not None:
            print(f"wiring: {wiring_text(args)}")
        print("\nthe top token after each layer (rows) at each position (columns), with its probability:\n")
        print(lens.table(width=args.width))
        if args.plot:
            print(f"\nheat map written to {args.plot}")
        return 0

    return run_guarded(body)

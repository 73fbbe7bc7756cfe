"""``llama-rewire run``: the original and the rewired model complete the same prompt, side by side."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

from .common import (
    add_model_arg,
    add_wiring_args,
    model_options,
    parse,
    resolve_model,
    run_guarded,
    wiring_given,
    wiring_of,
    wiring_text,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire run", description=__doc__)
    add_model_arg(p)
    add_wiring_args(p, what="the rewiring (--wiring or --act is required)")
    p.add_argument("-p", "--prompt", default="The capital of France is", help="the prompt")
    p.add_argument("-n", "--n-predict", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--seed", type=int, default=None, help="sample with this seed (default: greedy)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature when --seed is given")
    p.add_argument("-c", "--ctx", type=int, default=512, help="context size (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def side_by_side(left: str, right: str, titles: tuple[str, str]) -> str:
    width = max(30, min(shutil.get_terminal_size((100, 24)).columns, 160) // 2 - 3)
    lcol = [line for para in left.splitlines() or [""] for line in textwrap.wrap(para, width) or [""]]
    rcol = [line for para in right.splitlines() or [""] for line in textwrap.wrap(para, width) or [""]]
    rows = [f"{titles[0]:<{width}} | {titles[1]}", f"{'-' * width}-+-{'-' * width}"]
    for i in range(max(len(lcol), len(rcol))):
        a = lcol[i] if i < len(lcol) else ""
        b = rcol[i] if i < len(rcol) else ""
        rows.append(f"{a:<{width}} | {b}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..llama import Llama

        if args.n_predict <= 0:
            raise ValueError("-n must be positive")
        if not wiring_given(args):
            raise ValueError("give the rewiring with --wiring SPEC or --act SPEC")
        sampling = (
            {"temperature": 0.0} if args.seed is None else {"temperature": args.temp, "seed": args.seed}
        )
        path = resolve_model(args.model)
        with Llama(path, n_ctx=args.ctx, n_threads=args.threads, verbose=False, **model_options(args)) as llm:
            wiring = wiring_of(args, llm)  # checked before any time is spent on the original
            assert wiring is not None
            table, canonical = wiring.act_texts(), str(wiring)
            original = llm.create_completion(args.prompt, max_tokens=args.n_predict, **sampling)
            llm.set_wiring(wiring)
            rewired = llm.create_completion(args.prompt, max_tokens=args.n_predict, **sampling)
        a = original["choices"][0]["text"]  # type: ignore[index]
        b = rewired["choices"][0]["text"]  # type: ignore[index]
        if args.json:
            print(json.dumps({"model": str(path), "prompt": args.prompt, "act": args.act, "wiring": canonical,
                              "activations": table, "original": a, "rewired": b},
                             indent=2))
            return 0
        print(f"model:  {path.name}\nprompt: {args.prompt!r}\nwiring: {wiring_text(args)}\n")
        print(side_by_side(args.prompt + a, args.prompt + b, ("original", "rewired")))
        return 0

    return run_guarded(body)

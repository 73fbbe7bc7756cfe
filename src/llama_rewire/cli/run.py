"""``llama-rewire run``: the original and the rewired model complete the same prompt, side by side.

The right column is the model under ``--wiring`` / ``--act``, steered by ``--steer vec.gguf --alpha A``
(a control vector added to the residual stream), or both; at least one of them is required.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

from .common import (
    add_model_arg,
    add_wiring_args,
    layers_of,
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
    add_wiring_args(p, what="the rewiring (this, --act or --steer is required)")
    p.add_argument("--steer", default=None, metavar="FILE",
                   help="a control-vector GGUF (llama-rewire steer build, llama.cpp, repeng) to add to the "
                        "residual stream")
    p.add_argument("--alpha", type=float, default=None,
                   help="the steering strength: alpha * vector (default 1)")
    p.add_argument("--steer-layers", default=None, metavar="SPEC",
                   help='steer only these of the vector\'s layers, e.g. "8-20" (default: all of its layers)')
    p.add_argument("--steer-tokens", choices=["all", "prompt", "generated"], default=None,
                   help="the positions steered: the prompt's, the generated ones, or all (default)")
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


def right_title(args: argparse.Namespace) -> str:
    if args.steer is None:
        return "rewired"
    steered = f"steered (alpha {args.alpha:g})"
    return f"rewired + {steered}" if wiring_given(args) else steered


def check_steer_args(args: argparse.Namespace) -> None:
    """The steering options that need no model; fills in the default alpha."""
    from ..residual.cvec import check_alpha

    if args.steer is None:
        if args.alpha is not None or args.steer_layers is not None or args.steer_tokens is not None:
            raise ValueError("--alpha, --steer-layers and --steer-tokens go with --steer FILE")
        return
    args.alpha = check_alpha(1.0 if args.alpha is None else args.alpha, "--alpha")
    args.steer_tokens = args.steer_tokens or "all"


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval.sweep import ranges_text
        from ..llama import Llama
        from ..residual import ControlVector

        if args.n_predict <= 0:
            raise ValueError("-n must be positive")
        if not wiring_given(args) and args.steer is None:
            raise ValueError("give the rewiring with --wiring SPEC or --act SPEC, or a steering vector with "
                             "--steer FILE")
        check_steer_args(args)
        vector = ControlVector.load(args.steer) if args.steer is not None else None
        sampling = (
            {"temperature": 0.0} if args.seed is None else {"temperature": args.temp, "seed": args.seed}
        )
        path = resolve_model(args.model)
        with Llama(path, n_ctx=args.ctx, n_threads=args.threads, verbose=False, **model_options(args)) as llm:
            # the wiring and the steering are checked before any time is spent on the original
            wiring = wiring_of(args, llm)
            steer: dict[str, object] | None = None
            steer_layers: list[int] | None = None
            if vector is not None:
                steer_layers = layers_of(args.steer_layers, llm.n_layer(), "--steer-layers")
                try:
                    llm.set_steering(vector, args.alpha, layers=steer_layers, tokens=args.steer_tokens)
                except ValueError as e:
                    raise ValueError(f"--steer {args.steer}: {e}") from None
                llm.set_steering(None)
                arch = llm.metadata.get("general.architecture", "")
                if vector.model_hint and arch and vector.model_hint != arch:
                    print(f"llama-rewire: note: {args.steer} was made for {vector.model_hint!r}, the model "
                          f"is {arch!r}", file=sys.stderr)
                steer = {"vector": args.steer, "alpha": args.alpha, "tokens": args.steer_tokens,
                         "layers": steer_layers if steer_layers is not None else vector.layers}
            original = llm.create_completion(args.prompt, max_tokens=args.n_predict, **sampling)
            if wiring is not None:
                llm.set_wiring(wiring)
            if vector is not None:
                llm.set_steering(vector, args.alpha, layers=steer_layers, tokens=args.steer_tokens)
            rewired = llm.create_completion(args.prompt, max_tokens=args.n_predict, **sampling)
            table = llm.wiring.act_texts()
            canonical = str(wiring) if wiring is not None else None
        a = original["choices"][0]["text"]  # type: ignore[index]
        b = rewired["choices"][0]["text"]  # type: ignore[index]
        if args.json:
            print(json.dumps({"model": str(path), "prompt": args.prompt, "act": args.act, "wiring": canonical,
                              "activations": table, "steer": steer, "original": a, "rewired": b},
                             indent=2))
            return 0
        print(f"model:  {path.name}\nprompt: {args.prompt!r}")
        if wiring is not None:
            print(f"wiring: {wiring_text(args)}")
        if steer is not None:
            layers_shown = ranges_text(steer["layers"])  # type: ignore[arg-type]
            print(f"steer:  {args.steer}, alpha {args.alpha:g}, layers {layers_shown}, "
                  f"tokens {args.steer_tokens}")
        print()
        print(side_by_side(args.prompt + a, args.prompt + b, ("original", right_title(args))))
        return 0

    return run_guarded(body)

"""``llama-rewire steer``: steering vectors as llama.cpp's control-vector GGUF files.

    llama-rewire steer build [MODEL] --positive POS.txt --negative NEG.txt [--layers 8-20] -o vec.gguf
    llama-rewire steer show vec.gguf

``build``: contrastive activation addition (CAA): for each layer, the mean over paired prompts of the
difference of the residual stream after that layer (``resid_post``), at the last token (``--read
last``) or averaged over the tokens (``--read mean``). The files hold one prompt per line; line i of one
pairs with line i of the other (blank lines are skipped). The file loads in llama.cpp
(``--control-vector``) and here (``llama-rewire run --steer``, ``Llama.set_steering``, the server's
``steer`` field). ``show``: a vector's layers, width, model hint and the norm of each layer's direction.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .common import add_model_arg, layers_of, model_options, parse, resolve_model, run_guarded

READS = ("last", "mean")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire steer", description=__doc__.split("\n\n")[0],
                                epilog="Run 'llama-rewire steer build --help' for its options.")
    sub = p.add_subparsers(dest="action", metavar="{build,show}")
    sub.required = True
    b = sub.add_parser("build", prog="llama-rewire steer build",
                       help="a steering vector from paired prompts (CAA), written as a control-vector GGUF",
                       description="Contrastive activation addition: per layer, the mean difference of the "
                                   "residual stream between paired prompts; written as llama.cpp's "
                                   "control-vector GGUF.")
    add_model_arg(b)
    b.add_argument("--positive", required=True, metavar="FILE",
                   help="prompts that show the behaviour, one per line")
    b.add_argument("--negative", required=True, metavar="FILE",
                   help="prompts that do not, one per line, paired with --positive by line")
    b.add_argument("--layers", default=None, metavar="SPEC",
                   help='the layers to build, e.g. "8-20" or "3,5,7-9" (default: 1 to the last; llama.cpp '
                        "has no layer 0)")
    b.add_argument("--read", choices=READS, default="last",
                   help="the residual stream at the last token (default) or its mean over the tokens")
    b.add_argument("-o", "--output", required=True, metavar="FILE", help="the control-vector GGUF to write")
    b.add_argument("--allow-layer0", action="store_true",
                   help="write a direction for layer 0 too (this package reads it; llama.cpp refuses it)")
    b.add_argument("-c", "--ctx", type=int, default=512, help="context size: the longest prompt (512)")
    b.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    b.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    s = sub.add_parser("show", prog="llama-rewire steer show", help="a control vector's layers and norms",
                       description="A control-vector GGUF's layers, width, model hint and per-layer norms.")
    s.add_argument("vector", metavar="FILE", help="a control-vector GGUF (ours, llama.cpp's or repeng's)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def read_prompts(path: str, option: str) -> list[str]:
    """One prompt per line, as written (blank lines skipped); a missing or empty file is a ValueError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{option} {path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{option} {path}: not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot be read: {e.strerror or e}") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{option} {path}: no prompts (one per line)")
    return prompts


def vector_summary(vector: Any, path: str) -> dict[str, Any]:
    from ..eval.sweep import ranges_text

    norms = {il: math.sqrt(float((v.astype("float64") ** 2).sum())) for il, v in vector.directions.items()}
    return {"path": path, "model_hint": vector.model_hint, "n_embd": vector.n_embd,
            "layers": vector.layers, "layer_ranges": ranges_text(vector.layers), "norms": norms}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"control vector: {summary['path']}")
    print(f"model hint:     {summary['model_hint'] or '(none)'}")
    print(f"n_embd:         {summary['n_embd']}")
    print(f"layers:         {summary['layer_ranges']} ({len(summary['layers'])})")
    print(f"\n{'layer':>5s}  {'norm':>10s}")
    for il, n in summary["norms"].items():
        print(f"{il:5d}  {n:10.4f}")


def build(args: argparse.Namespace) -> int:
    from ..eval.progress import want_progress
    from ..llama import Llama
    from ..residual import contrastive_vector

    positive = read_prompts(args.positive, "--positive")
    negative = read_prompts(args.negative, "--negative")
    if len(positive) != len(negative):
        raise ValueError(f"--positive {args.positive} has {len(positive)} prompts and --negative "
                         f"{args.negative} has {len(negative)}: they pair by line, so the counts must match")
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {args.output}: is a directory")
    if not out.parent.is_dir():
        raise ValueError(f"-o {args.output}: the directory {out.parent} does not exist")
    path = resolve_model(args.model)
    with Llama(path, n_ctx=args.ctx, n_batch=args.ctx, n_threads=args.threads, verbose=False,
               **model_options(args)) as llm:
        n_layer = llm.n_layer()
        layers = layers_of(args.layers, n_layer, "--layers")
        if layers is None:
            layers = list(range(1, n_layer)) if n_layer > 1 else [0]
        if 0 in layers and not args.allow_layer0:
            raise ValueError("--layers: layer 0 has no slot in llama.cpp's control vectors (they start at "
                             "layer 1); --allow-layer0 writes it anyway, for this package only")
        vector = contrastive_vector(llm, positive, negative, layers, read=args.read,
                                    progress=want_progress(args.json))
    vector.save(out, allow_layer0=args.allow_layer0)
    summary = {**vector_summary(vector, str(out)), "model": str(path), "pairs": len(positive),
               "read": args.read}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"model: {path.name}   pairs: {len(positive)}   read: {args.read}\n")
    print_summary(summary)
    print(f"\nwritten to {out}")
    return 0


def show(args: argparse.Namespace) -> int:
    from ..residual import ControlVector

    vector = ControlVector.load(args.vector)
    summary = vector_summary(vector, args.vector)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return run_guarded(lambda: build(args) if args.action == "build" else show(args))

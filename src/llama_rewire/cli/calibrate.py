"""``llama-rewire calibrate MODEL --sparsity 0.5 --text FILE -o profile.json``: per-layer thresholds
that zero the target fraction of each layer's activations (CATS-style), written as a rewiring profile."""

from __future__ import annotations

import argparse
import json

from .common import add_model_arg, model_options, parse, resolve_model, run_guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire calibrate", description=__doc__)
    add_model_arg(p)
    p.add_argument("--sparsity", type=float, required=True, help="target fraction of zeros, in [0, 1)")
    p.add_argument("--text", default=None, help="calibration text (default: the packaged sample text)")
    p.add_argument("-o", "--output", default=None, help="profile file to write (.json or .toml)")
    p.add_argument("--ctx", type=int, default=512, help="window size in tokens (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval.progress import want_progress
        from ..eval.sparsity import calibrate
        from ..eval.text import load_text
        from ..llama import Llama
        from ..wiring.profile import save_profile

        if not 0.0 <= args.sparsity < 1.0:
            raise ValueError(f"--sparsity must be in [0, 1), got {args.sparsity}")
        text = load_text(args.text)
        path = resolve_model(args.model)
        with Llama(str(path), n_ctx=args.ctx, n_batch=args.ctx, n_threads=args.threads, verbose=False,
                   observe_ffn=True, **model_options(args)) as llm:
            result = calibrate(llm, text, args.sparsity, args.ctx, progress=want_progress(args.json))
        out = {"model": str(path), **result.to_dict()}
        if args.output:
            save_profile(args.output, result.spec(), model=path.name, target_sparsity=result.target,
                         calibration_tokens=result.n_tokens, text=args.text or "sample")
            out["profile"] = args.output
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        print(f"model: {path.name}   target sparsity: {result.target:.2f}   tokens: {result.n_tokens}"
              + ("   (interrupted: partial calibration)" if result.interrupted else ""))
        print(f"{'layer':>5s}  {'activation':24s}")
        for il, a in enumerate(result.activations):
            print(f"{il:5d}  {a!s:24s}")
        if args.output:
            print(f"\nprofile written to {args.output}")
        return 0

    return run_guarded(body)

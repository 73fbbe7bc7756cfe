"""``llama-rewire info MODEL``: architecture, layers, and each layer's own FFN activation."""

from __future__ import annotations

import argparse
import json

from .common import add_model_arg, resolve_model, run_guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire info", description=__doc__)
    add_model_arg(p, positional=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from ..llama import Llama

        path = resolve_model(args.model)
        with Llama(path, n_ctx=64, n_batch=64, verbose=False) as llm:
            layers = llm.describe_ffn()
            info = {
                "model": str(path),
                "architecture": llm.metadata.get("general.architecture"),
                "name": llm.metadata.get("general.name"),
                "description": llm.model.desc(),
                "n_layer": llm.n_layer(),
                "n_embd": llm.n_embd(),
                "n_vocab": llm.n_vocab(),
                "n_ctx_train": llm.model.n_ctx_train(),
                "layers": layers,
            }
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        for key in ("model", "architecture", "name", "description", "n_layer", "n_embd", "n_vocab",
                    "n_ctx_train"):
            print(f"{key:13s} {info[key]}")
        print()
        print(f"{'layer':>5s}  {'activation':10s} {'form':10s} ffn")
        for row in layers:
            form = "fused GLU" if row["fused"] else "gated" if row["gated"] else "plain"
            kinds = "+".join(k for k in ("dense", "moe") if row[k]) or "-"
            clamp = "  (clamped)" if row["clamped"] else ""
            print(f"{row['layer']:5d}  {row['act'] or 'none':10s} {form:10s} {kinds}{clamp}")
        return 0

    return run_guarded(body)

"""``llama-rewire info MODEL``: architecture, layers, and each layer's own FFN activation.

``--system`` prints which kernels run on this machine (llama.cpp's system info, the CPU features ggml
detected, the buffer types weights are repacked into): alone, or before a model's information.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_model_arg, model_options, parse, resolve_model, run_guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire info", description=__doc__.split("\n\n")[0])
    add_model_arg(p)
    p.add_argument("--system", action="store_true",
                   help="the CPU features and kernels of this machine (for a bug report); "
                        "alone, no model is loaded")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..llama import Llama
        from ..system import system_info

        system = system_info() if args.system else None
        if system is not None and args.model is None:
            print(json.dumps(system, indent=2) if args.json else format_system(system))
            return 0
        path = resolve_model(args.model)
        with Llama(path, n_ctx=64, n_batch=64, verbose=False, **model_options(args)) as llm:
            layers = llm.describe_ffn()
            wiring = llm.describe_layers()
            buffers = llm.weight_buffers()
            info: dict[str, Any] = {
                "model": str(path),
                "architecture": llm.metadata.get("general.architecture"),
                "name": llm.metadata.get("general.name"),
                "description": llm.model.desc(),
                "n_layer": llm.n_layer(),
                "n_embd": llm.n_embd(),
                "n_vocab": llm.n_vocab(),
                "n_ctx_train": llm.model.n_ctx_train(),
                "weight_buffers": buffers,
                "layers": layers,
                "wiring": wiring,
            }
        if system is not None:
            info = {"system": system, **info}
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        if system is not None:
            print(format_system(system) + "\n")
        for key in ("model", "architecture", "name", "description", "n_layer", "n_embd", "n_vocab",
                    "n_ctx_train"):
            print(f"{key:13s} {info[key]}")
        where = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in buffers.items())
        print(f"{'weights':13s} {where}")
        print()
        print(f"{'layer':>5s}  {'activation':10s} {'form':10s} {'ffn scopes':16s} {'heads':>5s}  experts")
        for row, w in zip(layers, wiring):
            form = "fused GLU" if row["fused"] else "gated" if row["gated"] else "plain"
            scopes = "+".join(w["scopes"]) or "-"
            heads = str(w["n_head"]) if w["attn"] else "-"
            experts = f"{w['n_expert_used']} of {w['n_expert']}" if w["n_expert"] else "-"
            notes = [n for n, on in (("clamped", row["clamped"]), ("post-norms", w["ffn_post_norm"]),
                                     ("recurrent", w["recurrent"])) if on]
            extra = f"  ({', '.join(notes)})" if notes else ""
            print(f"{row['layer']:5d}  {row['act'] or 'none':10s} {form:10s} {scopes:16s} {heads:>5s}  "
                  f"{experts}{extra}")
        return 0

    return run_guarded(body)


def format_system(system: dict[str, Any]) -> str:
    on = [name for name, value in system["cpu_features"].items() if value not in ("", "0")]
    return "\n".join([
        f"{'cpu':13s} {system['cpu_model']} ({system['machine']})",
        f"{'cpu path':13s} {system['cpu_path']}",
        f"{'features':13s} {' '.join(on)}",
        f"{'repack into':13s} {', '.join(system['cpu_extra_buffer_types']) or 'none'}",
        f"{'gpu offload':13s} {'yes' if system['gpu_offload'] else 'no'}",
        f"{'system info':13s} {system['system_info']}",
    ])

"""``llama-rewire stats MODEL --text FILE``: per-layer FFN activation statistics (the input of each
layer's ffn_down, or the overridden activation itself), as a table and a magnitude-histogram plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (
    add_model_arg,
    add_wiring_args,
    model_options,
    parse,
    resolve_model,
    run_guarded,
    wiring_of,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire stats", description=__doc__)
    add_model_arg(p)
    p.add_argument("--text", default=None, help="text to run (default: the packaged sample text)")
    add_wiring_args(p, what="rewiring to apply first")
    p.add_argument("--kind", choices=["down_in", "act"], default="down_in",
                   help="down_in: the input of ffn_down (default); act: the overridden activation")
    p.add_argument("--eps", type=float, default=1e-3, help="report the fraction with |x| < eps")
    p.add_argument("--ctx", type=int, default=512, help="window size in tokens (default 512)")
    p.add_argument("--plot", default="ffn_stats.png",
                   help="magnitude histograms per layer, as a PNG (default ffn_stats.png; '' for none)")
    p.add_argument("-o", "--output", default=None, help="write the table as JSON")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def plot_histograms(stats: object, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..wiring.stats import FfnStats

    assert isinstance(stats, FfnStats)
    fig, ax = plt.subplots(figsize=(9, 5))
    centers = np.sqrt(stats.bin_edges[:-1] * stats.bin_edges[1:])
    cmap = plt.get_cmap("viridis")
    for il in range(stats.n_layer):
        total = max(int(stats.hist[il].sum()), 1)
        ax.plot(centers, stats.hist[il, 1:] / total, color=cmap(il / max(stats.n_layer - 1, 1)), lw=0.8,
                label=f"layer {il}" if il in (0, stats.n_layer - 1) else None)
    ax.set_xscale("log")
    ax.set_xlabel("|activation|")
    ax.set_ylabel("fraction per bin")
    ax.set_title(f"FFN activation magnitudes ({stats.kind}); exact zeros not shown")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval.progress import want_progress
        from ..eval.sparsity import observe
        from ..eval.text import load_text
        from ..llama import Llama

        if not args.eps >= 0:
            raise ValueError("--eps must be >= 0")
        text = load_text(args.text)
        path = resolve_model(args.model)
        with Llama(str(path), n_ctx=args.ctx, n_batch=args.ctx, n_threads=args.threads, verbose=False,
                   observe_ffn=True, ffn_stats_eps=args.eps, **model_options(args)) as llm:
            wiring = wiring_of(args, llm)
            if wiring is not None:
                llm.set_wiring(wiring)
            llm.reset_ffn_stats()
            n_tokens = sum(observe(llm, text, args.ctx, want_progress(args.json)))
            stats = llm.ffn_stats(args.kind)
        if stats.count.sum() == 0:
            raise ValueError(f"no '{args.kind}' tensors were observed (kind 'act' needs a composed or "
                             "thresholded --act)")
        result = {"model": str(path), "n_tokens": n_tokens, **stats.to_dict()}
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        if args.plot:
            plot_histograms(stats, args.plot)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        print(f"model: {path.name}   tokens: {n_tokens}   tensor: {args.kind}")
        print(f"{'layer':>5s} {'mean':>10s} {'std':>10s} {'zeros':>8s} {'|x|<eps':>8s}")
        for row in result["layers"]:
            print(f"{row['layer']:5d} {row['mean']:10.4f} {row['std']:10.4f} {row['zero_frac']:8.2%} "
                  f"{row['small_frac']:8.2%}")
        if args.plot:
            print(f"\nhistogram written to {args.plot}")
        return 0

    return run_guarded(body)

"""``llama-rewire compare``: the original and the rewired model on the same text, in one run.

Perplexity of both, KL(original || rewired) per scored token (mean and max), top-1 agreement, and with
-p both greedy completions of a prompt side by side.
"""

from __future__ import annotations

import argparse

from .common import parse, run_guarded, wiring_of, wiring_text
from .perplexity import add_eval_args, emit, header, open_for, show_progress


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire compare", description=__doc__.split("\n\n")[0])
    add_eval_args(p, what="the rewiring to compare with the original (--wiring or --act is required)",
                  plot_help="also write a plot of both models' PPL and the KL of "
                                                  "each window (PNG)")
    p.add_argument("-p", "--prompt", default=None, help="also show both greedy completions of this prompt")
    p.add_argument("-n", "--n-predict", type=int, default=32, help="tokens to generate for -p (default 32)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval import compare
        from ..eval.plot import plot_windows
        from .run import side_by_side

        if args.n_predict < 1:
            raise ValueError("-n must be positive")
        if args.wiring is None and args.act is None:
            raise ValueError("give the rewiring with --wiring SPEC or --act SPEC")
        llm, text = open_for(args)
        with llm:
            result = compare(llm, text, wiring_of(args, llm), args.ctx, max_windows=args.max_windows,
                             prompt=args.prompt, n_predict=args.n_predict, progress=show_progress(args))
        if args.plot:
            plot_windows(result, args.plot)
        lines = [*header(result, args.text), f"wiring:  {wiring_text(args)}", "",
                 f"{'':10s} {'PPL':>10s}  {'+/-':>9s}",
                 f"{'original':10s} {result.ppl_original:10.4f}  {result.ppl_original_stderr:9.5f}",
                 f"{'rewired':10s} {result.ppl_rewired:10.4f}  {result.ppl_rewired_stderr:9.5f}",
                 f"{'dPPL':10s} {result.delta_ppl:+10.4f}", "",
                 f"KL(original || rewired): mean {result.kl_mean:.5f}, max {result.kl_max:.4f} nats/token",
                 f"top-1 agreement:         {100 * result.top1_agreement:.2f}%"]
        if result.completions is not None and args.prompt is not None:
            lines += ["", side_by_side(args.prompt + result.completions["original"],
                                       args.prompt + result.completions["rewired"], ("original", "rewired"))]
        return emit(result, args, lines)

    return run_guarded(body)

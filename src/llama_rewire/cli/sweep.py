"""``llama-rewire sweep``: how sensitive is each layer? One change on each layer (or group) alone.

The change is an activation (``--act relu``) or any knob (``--wiring skip=layer``: which layers can I
drop? ``--wiring experts_used=1``: where does top-1 routing hurt?). For each layer i (or group of
--group K layers), run "i:CHANGE" against the original on the same windows and report dPPL, KL and top-1
agreement; --cumulative applies it to the first k layers instead.
"""

from __future__ import annotations

import argparse

from .common import parse, run_guarded
from .perplexity import add_eval_args, emit, header, open_for, show_progress


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire sweep", description=__doc__.split("\n\n")[0])
    add_eval_args(p, what="the one change applied in turn (this or --act is required): a knob, e.g. "
                            "skip=layer, experts_used=1, ffn_scale=0.5",
                  output_help="also write the result: CSV if FILE ends in .csv, else JSON",
                  plot_help="also write a plot of dPPL and KL by layer (PNG)")
    p.add_argument("--group", type=int, default=1, metavar="K", help="sweep groups of K consecutive layers")
    p.add_argument("--cumulative", action="store_true",
                   help="apply the change to the first k layers, k = 1, 2...")
    p.add_argument("--layers", default=None, help='sweep only these layers, e.g. "0-11" (default: all)')
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval import sweep
        from ..eval.plot import plot_sweep
        from ..eval.sweep import sweep_act

        if (args.act is None) == (args.wiring is None):
            raise ValueError("give the one change to sweep with --act ACT or --wiring KNOB=VALUE (one of "
                             "them)")
        entry = args.act if args.act is not None else args.wiring
        sweep_act(entry)  # a bad entry fails before the model loads
        llm, text = open_for(args)
        with llm:
            result = sweep(llm, text, entry, args.ctx, group=args.group, cumulative=args.cumulative,
                           layers=args.layers, max_windows=args.max_windows, progress=show_progress(args))
        if args.plot:
            plot_sweep(result, args.plot)
        mode = "the first k layers" if args.cumulative else f"groups of {args.group}" if args.group > 1 else \
            "each layer alone"
        lines = [*header(result, args.text), f"change:  {result.act} on {mode}", "", result.table()]
        return emit(result, args, lines)

    return run_guarded(body)

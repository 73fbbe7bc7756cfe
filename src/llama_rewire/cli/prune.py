"""``llama-rewire prune [MODEL] --budget 5%``: pick layers to skip, keeping the held-out perplexity within
the budget, and write the wiring as a profile.

The layers are ranked by a ``skip=layer`` sweep (KL against the original, least harmful first) on the
text, then added to the skipped set one by one while the held-out perplexity stays within
(1 + budget) x the original's. The pruned model's speed is measured next to the original's.
"""

from __future__ import annotations

import argparse
import json

from .common import parse, run_guarded
from .perplexity import add_eval_args, header, open_for, show_progress, write_result


def budget_of(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"--budget is a fraction or a percentage, e.g. 5% or 0.05; got {text!r}") from None
    if not 0.0 < value < 10.0:
        raise ValueError(f"--budget must be above 0 (and below 1000%), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire prune", description=__doc__.split("\n\n")[0])
    add_eval_args(p, what="(not used by prune)", output_help="also write the result as JSON",
                  plot_help="also write a plot of the ranking sweep (PNG)")
    p.add_argument("--budget", required=True, help="the held-out perplexity may rise by this much, e.g. 5%%")
    p.add_argument("--heldout", metavar="FILE", default=None,
                   help="text that decides (default: the second half of --text; the first half ranks)")
    p.add_argument("--rank-by", choices=["kl", "dppl"], default="kl",
                   help="sweep figure that orders the layers")
    p.add_argument("--profile", metavar="FILE", default="pruned.json",
                   help="where to write the pruned wiring (.json or .toml; default pruned.json)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    return p


def split_text(text: str) -> tuple[str, str]:
    """The first and the second half of a text, cut at a line break near the middle."""
    mid = len(text) // 2
    cut = text.find("\n", mid)
    cut = mid if cut < 0 else cut
    return text[:cut], text[cut:]


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval.plot import plot_sweep
        from ..eval.prune import prune
        from ..eval.text import load_text

        if args.wiring is not None or args.act is not None:
            raise ValueError("prune finds a wiring; it takes no --wiring or --act")
        budget = budget_of(args.budget)
        llm, text = open_for(args)
        rank_text, heldout = (text, load_text(args.heldout)) if args.heldout else split_text(text)
        with llm:
            result = prune(llm, rank_text, heldout, budget, args.ctx, rank_by=args.rank_by,
                           max_windows=args.max_windows, speed=not args.no_speed,
                           progress=show_progress(args))
            llm.set_wiring(result.wiring or None)
            llm.wiring.save(args.profile, model=llm.model_path.rsplit("/", 1)[-1], budget=budget,
                            ppl_original=result.ppl_original, ppl_pruned=result.ppl_pruned,
                            rank_by=args.rank_by)
        d = result.to_dict()
        d["profile"] = args.profile
        if args.output:
            write_result(d, args.output)
        if args.plot and result.sweep is not None:
            plot_sweep(result.sweep, args.plot)
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        assert result.sweep is not None
        lines = [*header(result.sweep, args.text), f"budget:  held-out PPL +{budget:.1%}", "",
                 "ranking (skip=layer, each layer alone):", result.sweep.table(), "", result.table(), "",
                 f"skipped {len(result.skipped)} of {result.n_layer} layers: {result.wiring or '(none)'}",
                 f"held-out PPL {result.ppl_original:.4f} -> {result.ppl_pruned:.4f} "
                 f"({result.ppl_pruned / result.ppl_original - 1:+.2%})"]
        if result.speed_original and result.speed_pruned:
            so, sp, up = result.speed_original, result.speed_pruned, result.speedup
            lines.append(f"speed (tokens/s): prompt {so.pp:.1f} -> {sp.pp:.1f} ({up['pp']:.2f}x), "
                         f"generation {so.tg:.1f} -> {sp.tg:.1f} ({up['tg']:.2f}x)")
        lines.append(f"profile written to {args.profile}")
        print("\n".join(lines))
        return 0

    return run_guarded(body)

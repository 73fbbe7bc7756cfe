"""``llama-rewire perplexity``: perplexity over a text in fixed windows, comparable with llama-perplexity.

The options shared by ``perplexity``, ``compare`` and ``sweep`` are defined here too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_model_arg, add_wiring_args, model_options, parse, run_guarded, wiring_of, wiring_text

if TYPE_CHECKING:
    from ..llama import Llama

# exit status of a run stopped by Ctrl-C (its partial results are still printed and written)
EXIT_INTERRUPTED = 130


def add_eval_args(p: argparse.ArgumentParser, what: str = "the wiring to run (default: the model's own)",
                  output_help: str = "also write the result as JSON",
                  plot_help: str = "also write a plot of the perplexity of each window (PNG)") -> None:
    add_model_arg(p)
    add_wiring_args(p, what=what)
    p.add_argument("--text", metavar="FILE", default=None,
                   help="UTF-8 text to evaluate (default: the sample text shipped with llama-rewire)")
    p.add_argument("-c", "--ctx", type=int, default=512,
                   help="window size in tokens; even, >= 8 (default 512, as llama-perplexity)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="evaluate only the first N windows (llama-perplexity's --chunks)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("-fa", "--flash-attn", action="store_true",
                   help="use flash attention, as llama-perplexity does by default where the backend has it "
                        "(without: its figures with -fa off)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help=output_help)
    p.add_argument("--plot", metavar="PNG", default=None, help=plot_help)


def open_for(args: argparse.Namespace) -> tuple[Llama, str]:
    """Check the options that need no model, then load the text and the model."""
    from ..eval import load, load_text
    from ..eval.windows import check_ctx

    check_ctx(args.ctx)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    if args.max_windows is not None and args.max_windows < 1:
        raise ValueError(f"--max-windows must be positive, got {args.max_windows}")
    text = load_text(args.text)
    return load(args.model, args.ctx, n_threads=args.threads, flash_attn=args.flash_attn,
                **model_options(args)), text


def show_progress(args: argparse.Namespace) -> bool:
    from ..eval.progress import want_progress

    return want_progress(quiet=args.json)


def emit(result: Any, args: argparse.Namespace, lines: list[str]) -> int:
    """Print the result (text or --json), write -o, and return the exit status."""
    d = result.to_dict()
    if args.output:
        write_result(d, args.output, getattr(result, "to_csv", None))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print("\n".join(lines))
        if args.output:
            print(f"wrote {args.output}")
        if args.plot:
            print(f"wrote {args.plot}")
    if result.interrupted:
        print(f"llama-rewire: interrupted after {result.n_windows} of {result.n_windows_total} windows; "
              "the figures cover those", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def write_result(d: dict[str, Any], path: str, to_csv: Any = None) -> None:
    """JSON, or CSV when the name ends in .csv and the result has a table."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        if to_csv is None:
            raise ValueError(f"{path}: only a sweep can be written as CSV (use a .json name)")
        p.write_text(to_csv(), encoding="utf-8")
    else:
        p.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")


def header(result: Any, text_arg: str | None) -> list[str]:
    source = text_arg if text_arg else "(sample text)"
    part = f", {result.n_windows} done" if result.interrupted else ""
    return [
        f"model:   {Path(result.model).name}",
        f"text:    {source}",
        f"windows: {result.n_windows_total} x {result.n_ctx} tokens{part}, "
        f"{result.n_tokens} tokens scored",
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire perplexity", description=__doc__.split("\n\n")[0])
    add_eval_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        from ..eval import perplexity
        from ..eval.plot import plot_windows

        llm, text = open_for(args)
        with llm:
            wiring = wiring_of(args, llm)
            if wiring is not None:
                llm.set_wiring(wiring)
            result = perplexity(llm, text, args.ctx, max_windows=args.max_windows,
                                progress=show_progress(args))
        if args.plot:
            plot_windows(result, args.plot)
        lines = header(result, args.text)
        if wiring is not None:
            lines.append(f"wiring:  {wiring_text(args)}")
        lines.append(f"\nPPL = {result.ppl:.4f} +/- {result.ppl_stderr:.5f}")
        return emit(result, args, lines)

    return run_guarded(body)

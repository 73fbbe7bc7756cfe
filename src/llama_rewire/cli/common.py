"""Options and error handling shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    """The model, as ``MODEL`` or ``-m/--model MODEL`` (read it with :func:`parse`), and ``--no-repack``."""
    help_text = "a GGUF file, or a known model name (smollm2, gemma3-270m); default: smollm2"
    parser.add_argument("model_positional", nargs="?", default=None, metavar="MODEL", help=help_text)
    parser.add_argument("-m", "--model", default=None, help="the same, as an option")
    parser.add_argument("--no-repack", action="store_true",
                        help="keep the weights as stored: no repacking into AMX / CPU_REPACK buffers "
                             "(use_extra_bufts=False)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, and merge the two ways of giving the model into ``args.model``."""
    args = parser.parse_args(argv)
    positional = getattr(args, "model_positional", None)
    if positional is not None:
        if args.model is not None and args.model != positional:
            parser.error(f"two models given: {positional!r} and -m {args.model!r}")
        args.model = positional
    return args


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Llama keyword arguments that the shared model options set."""
    return {"use_extra_bufts": not getattr(args, "no_repack", False)}


def resolve_model(model: str | None) -> Path:
    from ..models import resolve

    return resolve(model)


def run_guarded(body: Callable[[], int]) -> int:
    """Run a subcommand; a bad input becomes a one-line error and exit status 1, not a traceback."""
    try:
        return body()
    except (ValueError, RuntimeError, OSError) as e:
        print(f"llama-rewire: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llama-rewire: interrupted", file=sys.stderr)
        return 130

"""Options and error handling shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def add_model_arg(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    help_text = "a GGUF file, or a known model name (smollm2, gemma3-270m); default: smollm2"
    if positional:
        parser.add_argument("model", nargs="?", default=None, help=help_text)
    else:
        parser.add_argument("-m", "--model", default=None, help=help_text)


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

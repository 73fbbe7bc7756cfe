"""Options and error handling shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..llama import Llama
    from ..wiring.spec import Wiring

WIRING_EXAMPLE = '"*:gelu, 0-3:ffn_scale=0.5, 20:skip=ffn, 5:heads_off=[0,3]"'


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


def add_wiring_args(parser: argparse.ArgumentParser, *, what: str = "the wiring to run") -> None:
    """``--wiring SPEC`` and ``--act SPEC`` (read them with :func:`wiring_of`)."""
    parser.add_argument("--wiring", default=None, metavar="SPEC",
                        help=f"{what}: a wiring spec, e.g. {WIRING_EXAMPLE}, or a profile file")
    parser.add_argument("--act", default=None, metavar="SPEC",
                        help='activations, e.g. "0-11:relu, *:gelu" (with --wiring: they replace its '
                             "activations)")


def wiring_given(args: argparse.Namespace) -> bool:
    return args.wiring is not None or args.act is not None


def wiring_text(args: argparse.Namespace) -> str:
    """The wiring options as given, for reports."""
    parts = [args.wiring, args.act]
    return ", ".join(str(p) for p in parts if p is not None)


def wiring_of(args: argparse.Namespace, llm: Llama) -> Wiring | None:
    """The wiring that ``--wiring`` and ``--act`` give together, checked against the model (None when
    neither is given): ``--wiring``, then ``--act`` for the activations (alone, ``--act`` takes any
    wiring spec, as it always took profiles)."""
    from ..wiring.spec import parse_activations, parse_wiring

    if args.wiring is None:
        return None if args.act is None else parse_wiring(args.act, llm.layout)
    wiring = parse_wiring(args.wiring, llm.layout)
    if args.act is not None:
        wiring = wiring.with_activations(parse_activations(args.act, llm.n_layer())).bind(llm.layout)
    return wiring


def layers_of(spec: str | None, n_layer: int, option: str) -> list[int] | None:
    """The layers an option such as ``--layers "8-20"`` or ``"3,5,7-9"`` names (negative from the end),
    sorted; None when the option is not given. The parser is :func:`llama_rewire.eval.sweep.parse_layers`,
    so every subcommand reads layer lists alike; its errors name the option."""
    from ..eval.sweep import parse_layers

    if spec is None:
        return None
    try:
        return parse_layers(spec, n_layer)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


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

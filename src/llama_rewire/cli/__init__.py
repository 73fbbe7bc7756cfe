"""The ``llama-rewire`` command: one module per subcommand, each with its own ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "info": "show a model's architecture, layers and each layer's own FFN activation",
    "run": "complete a prompt with the original and the rewired model, side by side",
    "perplexity": "perplexity over a text in fixed windows, as llama.cpp's llama-perplexity computes it",
    "compare": "the original and the rewired model on a text: perplexity of both, KL, top-1 agreement",
    "sweep": "one change (an activation or a knob) on each layer alone: dPPL and KL, table and plot",
    "prune": "pick layers to skip within a held-out perplexity budget; write the wiring; speed-up",
    "stats": "per-layer FFN activation statistics over a text, with a histogram plot",
    "calibrate": "per-layer thresholds for a target activation sparsity, written as a profile",
    "lens": "the logit lens: the top token after each layer at each position; table and heat map",
    "steer": "build a steering vector from paired prompts (CAA), or show one (a control-vector GGUF)",
    "serve": "an OpenAI-compatible HTTP server; several models (and wirings) side by side",
    "rpc-server": "serve this machine's CPU to llama.cpp's RPC backend (Llama(rpc_servers=...))",
}


def usage() -> str:
    lines = ["usage: llama-rewire <command> [options]", "", "commands:"]
    lines += [f"  {name:10s} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Run 'llama-rewire <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"llama-rewire: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return int(module.main(rest))

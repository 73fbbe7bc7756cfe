"""llama-rewire: run GGUF models with their FFN activation functions rewired, per layer.

    from llama_rewire import Llama
    llm = Llama("model.gguf", activations="0-11:relu, *:gelu")
    print(llm("The capital of France is", max_tokens=16)["choices"][0]["text"])
"""

from __future__ import annotations

from ._core import ClosedError, DecodeError, ModelLoadError
from .activations import Activation, format_table, parse, parse_activation
from .llama import LLAMA_DEFAULT_SEED, Llama

__version__ = "0.1.0"

__all__ = [
    "LLAMA_DEFAULT_SEED",
    "Activation",
    "ClosedError",
    "DecodeError",
    "Llama",
    "ModelLoadError",
    "__version__",
    "format_table",
    "parse",
    "parse_activation",
]

"""llama-cpp-python's ``llama_cpp._internals``: its Python classes over the C API's handles.

llama-rewire's ``Llama`` owns its model and context through the extension, so these wrappers are not
here: the names import (code that only imports them keeps working) and constructing one raises
``NotImplementedError`` saying what to use instead, the high-level ``Llama`` or the C API of
:mod:`llama_rewire.llama_cpp` (``llama_batch_init``, ``llama_decode``, ``llama_sampler_chain_init``, ...).
``normalize_embedding`` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np


class _NotProvided:
    """A class of llama-cpp-python's internals that llama-rewire does not provide."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _not_provided(type(self).__name__)


def _not_provided(name: str) -> NoReturn:
    raise NotImplementedError(
        f"llama_cpp._internals.{name} is not provided by llama-rewire: use llama_rewire.Llama, or the C API "
        "functions of llama_rewire.llama_cpp on Llama.model / Llama.ctx"
    )


class LlamaModel(_NotProvided):
    """Not provided: a model handle (use ``Llama``, or ``Llama.model`` with the C API)."""


class LlamaContext(_NotProvided):
    """Not provided: a context handle (use ``Llama``, or ``Llama.ctx`` with the C API)."""


class LlamaBatch(_NotProvided):
    """Not provided: use ``llama_batch_init`` of the C API."""


class LlamaTokenDataArray(_NotProvided):
    """Not provided: use ``llama_token_data_array`` of the C API."""


class LlamaSamplingParams(_NotProvided):
    """Not provided: pass the sampling parameters to ``Llama.create_completion``."""


class LlamaSamplingContext(_NotProvided):
    """Not provided: ``Llama.sample`` / ``Llama.generate`` sample with a sampler chain of their own."""


class CustomSampler(_NotProvided):
    """Not provided: use a ``logits_processor`` of ``Llama.create_completion``."""


class LlamaSampler(_NotProvided):
    """Not provided: use ``llama_sampler_chain_init`` of the C API, or ``Llama.sample``."""


def normalize_embedding(embedding: Sequence[float]) -> list[float] | Sequence[float]:
    """The embedding divided by its Euclidean norm (returned as given when the norm is 0)."""
    norm = float(np.linalg.norm(np.asarray(embedding, dtype=np.float64)))
    if norm == 0.0:
        return embedding
    return [float(v) / norm for v in embedding]


__all__ = ["CustomSampler", "LlamaBatch", "LlamaContext", "LlamaModel", "LlamaSampler",
           "LlamaSamplingContext", "LlamaSamplingParams", "LlamaTokenDataArray", "normalize_embedding"]

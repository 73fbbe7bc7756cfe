"""Evaluate rewirings: perplexity, original-vs-rewired comparison, and per-layer sensitivity sweeps.

Everything works on fixed windows of a text, the way llama.cpp's ``llama-perplexity`` does (see
:mod:`llama_rewire.eval.windows`), so a perplexity here matches ``llama-perplexity`` on the same model,
text and ctx::

    from llama_rewire import eval as ev

    llm = ev.load("smollm2", n_ctx=512)
    text = ev.sample_text()
    print(ev.perplexity(llm, text, 512).ppl)
    print(ev.compare(llm, text, "*:relu", 512).kl_mean)
    print(ev.sweep(llm, text, "relu", 512).table())

Each result is a dataclass with ``to_dict()`` (JSON-ready: undefined figures are None).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .compare import CompareResult, compare
from .perplexity import PerplexityResult, perplexity
from .sweep import SweepResult, SweepRow, sweep
from .text import load_text, read_text, sample_text
from .windows import Windows, make_windows

if TYPE_CHECKING:
    from ..llama import Llama

__all__ = [
    "CompareResult",
    "PerplexityResult",
    "SweepResult",
    "SweepRow",
    "Windows",
    "compare",
    "load",
    "load_text",
    "make_windows",
    "perplexity",
    "read_text",
    "sample_text",
    "sweep",
]


def load(model: str | os.PathLike[str] | None = None, n_ctx: int = 512, *, n_threads: int | None = None,
         **kwargs: Any) -> Llama:
    """A model opened for evaluation: a window of ``n_ctx`` tokens in one batch, every token's logits.

    ``model`` is a GGUF path or a known model name (None: the demo model), as the CLI takes it. Other
    keyword arguments go to :class:`~llama_rewire.Llama`; ``flash_attn=True`` reproduces the figures of
    ``llama-perplexity``'s default run on the CPU bit for bit, the default (off) those of ``-fa off``.
    """
    from ..llama import Llama
    from ..models import resolve
    from .windows import check_ctx

    check_ctx(n_ctx)
    path = resolve(model)
    options: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_ctx, "logits_all": True, "verbose": False,
                               "n_threads": n_threads, **kwargs}
    return Llama(str(path), **options)

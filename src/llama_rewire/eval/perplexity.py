"""Perplexity over fixed windows, comparable with llama.cpp's ``llama-perplexity`` (same model, text, ctx)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .windows import (
    F32,
    F64,
    KEEP,
    check_ctx,
    check_llm,
    finite_or_none,
    make_windows,
    ppl_stats,
    run_windows,
    token_nll,
)

if TYPE_CHECKING:
    from ..llama import Llama


@dataclass
class PerplexityResult:
    """PPL = exp(mean NLL) over ``n_tokens`` scored tokens, with llama-perplexity's standard error.

    ``window_ppl`` holds each completed window's own PPL; ``interrupted`` is True when Ctrl-C stopped
    the run early (the figures then cover the completed windows only).
    """

    ppl: float
    ppl_stderr: float
    nll: float  # mean negative log-likelihood, nats per token
    n_tokens: int
    n_windows: int
    n_windows_total: int
    n_ctx: int
    activations: list[str]
    model: str = ""
    wiring: str = ""  # the canonical spec of the wiring that ran
    interrupted: bool = False
    window_ppl: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("ppl", "ppl_stderr", "nll"):
            d[key] = finite_or_none(d[key])
        d["window_ppl"] = [finite_or_none(x) for x in self.window_ppl]
        return d


def perplexity(llm: Llama, text: str, n_ctx: int = 512, *, max_windows: int | None = None,
               progress: bool = False) -> PerplexityResult:
    """The perplexity of ``llm``, wired as it is now, over ``text`` in windows of ``n_ctx`` tokens.

    ``llm`` needs ``logits_all=True`` and a context of at least ``n_ctx`` (see :func:`load`). Ctrl-C
    during the run returns the completed windows' figures with ``interrupted=True``.
    """
    check_llm(llm, check_ctx(n_ctx))
    windows = make_windows(llm, text, n_ctx, max_windows)

    def score(i: int, _: int, logits: F32) -> F64:
        return token_nll(logits, windows.targets(i))

    out = run_windows(llm, windows, [KEEP], score, progress=progress, desc="perplexity")
    nlls = [w[0] for w in out.per_window]
    return summarize(nlls, llm, windows.count, n_ctx, out.interrupted)


def summarize(nlls: list[F64], llm: Llama, n_windows_total: int, n_ctx: int,
              interrupted: bool) -> PerplexityResult:
    """A result from per-window token NLLs."""
    allnll = np.concatenate(nlls) if nlls else np.zeros(0)
    ppl, err = ppl_stats(allnll)
    return PerplexityResult(
        ppl=ppl, ppl_stderr=err, nll=float(allnll.mean()) if len(allnll) else float("nan"),
        n_tokens=len(allnll), n_windows=len(nlls), n_windows_total=n_windows_total, n_ctx=n_ctx,
        activations=llm.activations, model=llm.model_path, interrupted=interrupted, wiring=str(llm.wiring),
        window_ppl=[ppl_stats(w)[0] for w in nlls],
    )

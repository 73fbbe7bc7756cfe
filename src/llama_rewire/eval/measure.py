"""The original and any number of rewirings over the same windows: the engine of compare and sweep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..wiring.spec import WiringSpec as Spec
from .windows import F32, F64, Windows, divergence, ppl_stats, run_windows, token_nll

Scored = tuple[F64, F64, npt.NDArray[np.bool_]]  # per token: NLL, KL(original || this), top-1 agrees

if TYPE_CHECKING:
    from ..llama import Llama


@dataclass
class Tally:
    """One wiring's per-token figures, one array per completed window."""

    nll: list[F64] = field(default_factory=list)
    kl: list[F64] = field(default_factory=list)
    top1: list[npt.NDArray[np.bool_]] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(w) for w in self.nll)

    def ppl(self) -> tuple[float, float]:
        """(PPL, standard error) as llama-perplexity computes them."""
        return ppl_stats(np.concatenate(self.nll) if self.nll else np.zeros(0))

    def nll_mean(self) -> float:
        return float(np.concatenate(self.nll).mean()) if self.n_tokens else float("nan")

    def kl_mean(self) -> float:
        return float(np.concatenate(self.kl).mean()) if self.kl else float("nan")

    def kl_max(self) -> float:
        return float(np.concatenate(self.kl).max()) if self.kl else float("nan")

    def top1_agreement(self) -> float:
        return float(np.concatenate(self.top1).mean()) if self.top1 else float("nan")

    def window_ppl(self) -> list[float]:
        return [ppl_stats(w)[0] for w in self.nll]

    def window_kl(self) -> list[float]:
        return [float(w.mean()) for w in self.kl]


@dataclass
class Measured:
    original: Tally
    rewired: list[Tally]
    n_windows: int
    interrupted: bool


def measure(llm: Llama, windows: Windows, specs: Sequence[Spec], *, progress: bool = False,
            desc: str = "compare") -> Measured:
    """Evaluate each window under the model's own activations, then under each spec in turn.

    The original's logits are computed once per window and every rewiring is scored against them.
    """
    ref: dict[int, F32] = {}

    def score(i: int, j: int, logits: F32) -> Scored:
        targets = windows.targets(i)
        if j == 0:  # the original: kept for the rewirings of this window
            ref.clear()
            ref[i] = logits
            n = len(targets)
            return token_nll(logits, targets), np.zeros(n), np.ones(n, dtype=np.bool_)
        return divergence(ref[i], logits, targets)

    out = run_windows(llm, windows, [None, *specs], score, progress=progress, desc=desc)
    original, rewired = Tally(), [Tally() for _ in specs]
    for results in out.per_window:
        original.nll.append(results[0][0])
        for tally, (nll, kl, top1) in zip(rewired, results[1:]):
            tally.nll.append(nll)
            tally.kl.append(kl)
            tally.top1.append(top1)
    return Measured(original, rewired, len(out.per_window), out.interrupted)

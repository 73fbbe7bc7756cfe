"""Layer pruning without retraining: skip the layers the model misses least, within a perplexity budget.

1. Sweep ``skip=layer`` over every layer on the ranking text: each layer's KL(original || skipped) and
   dPPL alone (:func:`~llama_rewire.eval.sweep`).
2. Greedily, in that order (least harmful first), add the next layer to the skipped set and measure the
   held-out perplexity with the whole set skipped; stop at the first layer that would raise it by more
   than the budget (a fraction of the original's held-out perplexity).
3. Measure the speed of the pruned wiring next to the original's (prompt processing and generation,
   alternating, best of a few runs), when a layer could go.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .sweep import SweepResult, SweepRow, ranges_text, sweep
from .windows import (
    F32,
    F64,
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
    from .windows import Windows

RANK_BY = ("kl", "dppl")


@dataclass
class PruneStep:
    """One greedy step: ``layer`` added to the skipped set, and the held-out perplexity with the set."""

    layer: int
    ppl: float
    rise: float  # ppl / ppl_original - 1
    accepted: bool


@dataclass
class Speed:
    """Tokens per second, best of ``reps`` runs: a ``n_prompt``-token prompt, and ``n_gen`` tokens
    generated one decode at a time."""

    pp: float
    tg: float


@dataclass
class PruneResult:
    budget: float
    rank_by: str
    ppl_original: float  # held-out
    ppl_pruned: float
    skipped: list[int]
    wiring: str  # the pruned wiring's canonical spec ("" when no layer could go)
    n_layer: int
    n_ctx: int
    model: str = ""
    steps: list[PruneStep] = field(default_factory=list)
    sweep: SweepResult | None = None
    speed_original: Speed | None = None
    speed_pruned: Speed | None = None

    @property
    def speedup(self) -> dict[str, float]:
        """Pruned / original tokens per second."""
        if self.speed_original is None or self.speed_pruned is None:
            return {}
        return {"pp": self.speed_pruned.pp / self.speed_original.pp,
                "tg": self.speed_pruned.tg / self.speed_original.tg}

    def to_dict(self) -> dict[str, Any]:
        d = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in asdict(self).items()}
        d["steps"] = [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in asdict(s).items()}
                      for s in self.steps]
        d["sweep"] = None if self.sweep is None else self.sweep.to_dict()
        d["speedup"] = self.speedup
        return d

    def table(self) -> str:
        lines = [f"{'step':>4}  {'+layer':>6}  {'held-out PPL':>12}  {'rise':>8}  kept"]
        lines.append(f"{'':>4}  {'none':>6}  {self.ppl_original:12.4f}  {0:+8.2%}")
        for i, s in enumerate(self.steps, 1):
            kept = "yes" if s.accepted else "no"
            lines.append(f"{i:>4}  {s.layer:>6}  {s.ppl:12.4f}  {s.rise:+8.2%}  {kept}")
        return "\n".join(lines)


def heldout_ppl(llm: Llama, windows: Windows, spec: str | None) -> float:
    """The perplexity of ``llm`` under ``spec`` over the windows (the wiring is restored after)."""

    def score(i: int, _: int, logits: F32) -> F64:
        return token_nll(logits, windows.targets(i))

    out = run_windows(llm, windows, [spec], score, desc="held-out")
    if out.interrupted:
        raise KeyboardInterrupt
    return ppl_stats(np.concatenate([w[0] for w in out.per_window]))[0]


def measure_speed(llm: Llama, spec: str | None, *, n_prompt: int = 128, n_gen: int = 32,
                  reps: int = 3) -> Speed:
    """Best-of-``reps`` speed of ``llm`` under ``spec`` (the wiring is restored after)."""
    saved = llm.wiring
    n_prompt = max(1, min(n_prompt, llm.n_ctx() - n_gen))
    n_gen = min(n_gen, n_prompt)
    vocab = llm.n_vocab()
    prompt = [int(t) for t in np.random.default_rng(0).integers(1, vocab, n_prompt)]
    pp = tg = float("inf")
    try:
        llm.set_wiring(spec)
        llm.reset()
        llm.eval(prompt[:8])  # warm-up
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            pp = min(pp, time.perf_counter() - t0)
            llm.reset()
            llm.eval(prompt[: n_prompt - n_gen])
            t0 = time.perf_counter()
            for tok in prompt[n_prompt - n_gen:]:
                llm.eval([tok])
            tg = min(tg, time.perf_counter() - t0)
    finally:
        llm.set_wiring(saved)
        llm.reset()
    return Speed(pp=n_prompt / pp, tg=n_gen / tg)


def skip_spec(layers: list[int]) -> str | None:
    return ", ".join(f"{r}:skip=layer" for r in ranges_text(sorted(layers)).split(",")) if layers else None


def prune(llm: Llama, text: str, heldout: str, budget: float, n_ctx: int = 512, *, rank_by: str = "kl",
          max_windows: int | None = None, speed: bool = True, progress: bool = False) -> PruneResult:
    """Pick layers to skip greedily (see the module), keeping the held-out perplexity within
    ``(1 + budget)`` times the original's. ``text`` ranks the layers, ``heldout`` decides.

    ``llm`` needs ``logits_all=True`` and a context of at least ``n_ctx`` (see :func:`load`); its wiring is
    restored afterwards.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 10:
        raise ValueError(f"the budget is a fraction of the held-out perplexity in (0, 10), e.g. 0.05 for 5%; "
                         f"got {budget!r}")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    check_llm(llm, check_ctx(n_ctx))
    if not any(info.attn and not info.kv_reused and info.ffn for info in llm.layout):
        raise ValueError("no layer of this model can be skipped whole (skip=layer)")
    windows = make_windows(llm, heldout, n_ctx, max_windows)

    ranking = sweep(llm, text, "skip=layer", n_ctx, max_windows=max_windows, progress=progress)
    def harm(r: SweepRow) -> tuple[float, int]:
        return (r.kl_mean if rank_by == "kl" else r.delta_ppl, r.layers[0])

    order = [r.layers[0] for r in sorted(ranking.rows, key=harm)]

    ppl0 = heldout_ppl(llm, windows, None)
    skipped: list[int] = []
    steps: list[PruneStep] = []
    ppl = ppl0
    for layer in order[: llm.n_layer() - 1]:  # at least one layer stays
        trial = heldout_ppl(llm, windows, skip_spec([*skipped, layer]))
        ok = trial <= ppl0 * (1.0 + budget)
        steps.append(PruneStep(layer=layer, ppl=trial, rise=trial / ppl0 - 1.0, accepted=ok))
        if not ok:
            break
        skipped.append(layer)
        ppl = trial

    spec = skip_spec(skipped)
    saved = llm.wiring
    llm.set_wiring(spec)
    canonical = str(llm.wiring)
    llm.set_wiring(saved)
    result = PruneResult(budget=float(budget), rank_by=rank_by, ppl_original=ppl0, ppl_pruned=ppl,
                         skipped=sorted(skipped), wiring=canonical, n_layer=llm.n_layer(), n_ctx=n_ctx,
                         model=llm.model_path, steps=steps, sweep=ranking)
    if speed and skipped:
        # alternate the two, twice, and keep each one's best: this machine's speed drifts
        runs = [measure_speed(llm, w) for w in (None, spec, None, spec)]
        result.speed_original = Speed(max(runs[0].pp, runs[2].pp), max(runs[0].tg, runs[2].tg))
        result.speed_pruned = Speed(max(runs[1].pp, runs[3].pp), max(runs[1].tg, runs[3].tg))
    return result

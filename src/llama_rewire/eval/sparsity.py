"""Calibrated sparse activations (CATS-style): per-layer thresholds for a target sparsity.

A thresholded activation keeps act(x) where |act(x)| > t and sets it to 0 elsewhere. Calibration runs
the model over a text with its own activation, observes the distribution of |act(gate)| in every layer
(natively, see :mod:`llama_rewire.wiring.stats`) and picks each layer's t at the quantile that zeroes
the target fraction. Sparsifying the early layers shifts the distributions of the later ones, so
``refine`` more passes run with every layer thresholded and re-pick each t from the activations before
thresholding (what the layer sees once the layers before it are sparse). The result is a profile
(:mod:`llama_rewire.wiring.profile`) that every command accepts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..llama import Llama
from ..wiring.activations import Activation, Spec, format_table
from ..wiring.spec import parse
from ..wiring.stats import FfnStats

# A threshold this small changes nothing (exact zeros stay zero) but makes the activation a node of its
# own, so that the observer sees act(gate) even where the model normally runs a fused GLU kernel.
OBSERVE_THRESHOLD = 1e-30

# activations of describe_ffn() that name one of ours
_OWN = {"silu", "gelu", "relu", "relu2"}


@dataclass
class Calibration:
    """Per-layer thresholds for a target sparsity, and how they were obtained."""

    target: float
    activations: list[Activation]           # per layer: the layer's own activation with its threshold
    n_tokens: int
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, str]:
        return {str(il): str(a) for il, a in enumerate(self.activations)}

    def to_dict(self) -> dict[str, Any]:
        return {"target_sparsity": self.target, "n_tokens": self.n_tokens, "interrupted": self.interrupted,
                "activations": self.spec(), **self.extra}


def own_activations(llm: Llama) -> list[Activation]:
    """Each layer's own activation as one of ours (ValueError where the architecture's has no twin)."""
    table = []
    for row in llm.describe_ffn():
        if row["act"] not in _OWN:
            raise ValueError(f"layer {row['layer']}: its activation {row['act']!r} cannot be calibrated")
        table.append(Activation(row["act"]))
    return table


def _windows(llm: Llama, text: str, n_ctx: int) -> list[list[int]]:
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < 2:
        raise ValueError("the text is too short: it needs at least a few tokens")
    return [tokens[i : i + n_ctx] for i in range(0, len(tokens), n_ctx) if len(tokens[i : i + n_ctx]) > 1]


def observe(llm: Llama, text: str, n_ctx: int, progress: bool) -> Iterator[int]:
    """Evaluate text window by window, yielding the tokens done; statistics accumulate in llm."""
    from .progress import progress_bar

    windows = _windows(llm, text, n_ctx)
    bar = progress_bar(len(windows), "observing", progress)
    try:
        for window in windows:
            llm.reset()
            llm.eval(window)
            bar.update()
            yield len(window)
    finally:
        bar.close()


def _current_spec(llm: Llama) -> str:
    """The table in force, as a spec that gives it back."""
    return format_table(parse(",".join(f"{il}:{a}" for il, a in enumerate(llm.activations)), llm.n_layer()))


def _layer_stats(llm: Llama, kind: str) -> list[tuple[FfnStats, int]]:
    """Per layer, statistics of kind where it was observed, else of the ffn_down input (for a plain FFN
    the same tensor as the activation output)."""
    stats, down = llm.ffn_stats(kind), llm.ffn_stats("down_in")
    return [(stats, il) if stats.observed(il) else (down, il) for il in range(llm.n_layer())]


def _thresholds(own: list[Activation], stats: list[tuple[FfnStats, int]],
                sparsity: float) -> list[Activation]:
    return [Activation(a.name, a.param, s.magnitude_quantile(il, sparsity) if sparsity > 0 else 0.0)
            for a, (s, il) in zip(own, stats)]


def _pass(llm: Llama, table: list[Activation], text: str, n_ctx: int,
          progress: bool) -> tuple[int, bool]:
    """One observing pass under table: (tokens seen, interrupted); statistics stay in llm."""
    llm.set_activations(dict(enumerate(table)))
    llm.reset_ffn_stats()
    n_tokens = 0
    try:
        for n in observe(llm, text, n_ctx, progress):
            n_tokens += n
    except KeyboardInterrupt:
        return n_tokens, True
    return n_tokens, False


def calibrate(llm: Llama, text: str, sparsity: float, n_ctx: int = 512, *, refine: int = 1,
              progress: bool = False) -> Calibration:
    """Thresholds that make the given fraction of each layer's activations zero on this text.

    ``llm`` must be created with ``observe_ffn=True``; its activation table is restored afterwards.
    ``refine`` extra passes re-pick the thresholds with every layer sparse. Ctrl-C stops early and
    calibrates on what was seen (``interrupted``).
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be a non-negative integer, got {refine!r}")
    if n_ctx < 2:
        raise ValueError(f"the window must hold at least 2 tokens, got {n_ctx}")
    llm.ffn_stats()  # raises unless the model observes its FFNs
    own = own_activations(llm)
    previous = _current_spec(llm)
    try:
        observing = [Activation(a.name, a.param, OBSERVE_THRESHOLD) for a in own]
        n_tokens, interrupted = _pass(llm, observing, text, n_ctx, progress)
        if n_tokens == 0:
            raise ValueError("calibration was interrupted before any window was evaluated")
        table = _thresholds(own, _layer_stats(llm, "act"), sparsity)
        for _ in range(refine if sparsity > 0 else 0):
            if interrupted:
                break
            n, interrupted = _pass(llm, table, text, n_ctx, progress)
            if n == 0:
                break
            table = _thresholds(own, _layer_stats(llm, "act_raw"), sparsity)
    finally:
        llm.set_activations(previous or None)
    return Calibration(target=float(sparsity), activations=table, n_tokens=n_tokens,
                       interrupted=interrupted, extra={"refine": refine})


def measure_sparsity(llm: Llama, text: str, spec: Spec, n_ctx: int = 512, *,
                     progress: bool = False) -> list[float]:
    """Per layer, the fraction of exact zeros in the activation output under ``spec`` on this text."""
    previous = _current_spec(llm)
    llm.set_activations(spec)
    llm.reset_ffn_stats()
    try:
        for _ in observe(llm, text, n_ctx, progress):
            pass
        stats = _layer_stats(llm, "act")
    finally:
        llm.set_activations(previous or None)
    return [float(s.zero_frac[il]) for s, il in stats]

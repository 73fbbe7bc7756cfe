"""PNG plots of evaluation results (matplotlib's Agg canvas: no display, no global backend switch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .compare import CompareResult
    from .perplexity import PerplexityResult
    from .sweep import SweepResult


def _figure(n_axes: int) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(10, 3.2 * n_axes), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    fig.savefig(p, format="png", dpi=110)
    return p


def plot_sweep(result: SweepResult, path: str | os.PathLike[str]) -> Path:
    """Sensitivity by layer: dPPL and mean KL of each configuration, as bars."""
    fig = _figure(2)
    ax_ppl, ax_kl = fig.subplots(2, 1, sharex=True)
    labels = [r.label for r in result.rows]
    x = list(range(len(labels)))
    ax_ppl.bar(x, [r.delta_ppl for r in result.rows], color="tab:red")
    ax_ppl.axhline(0.0, color="black", linewidth=0.8)
    ax_ppl.set_ylabel("dPPL")
    ax_kl.bar(x, [r.kl_mean for r in result.rows], color="tab:blue")
    ax_kl.set_ylabel("mean KL (nats/token)")
    what = "first k layers" if result.cumulative else "layer" if result.group == 1 else "layer group"
    ax_kl.set_xlabel(f"{what} ({result.act})")
    ax_kl.set_xticks(x, labels, rotation=90 if len(labels) > 16 else 0, fontsize=8)
    name = Path(result.model).name if result.model else "model"
    partial = ", interrupted" if result.interrupted else ""
    ax_ppl.set_title(f"{name}: {result.act} on each {what} (original PPL {result.ppl_original:.3f}, "
                     f"ctx {result.n_ctx}, {result.n_tokens} tokens{partial})")
    return _save(fig, path)


def plot_windows(result: PerplexityResult | CompareResult, path: str | os.PathLike[str]) -> Path:
    """PPL of each window (both models for a comparison, with the mean KL of each window below)."""
    from .compare import CompareResult

    is_compare = isinstance(result, CompareResult)
    fig = _figure(2 if is_compare else 1)
    axes = fig.subplots(2 if is_compare else 1, 1, sharex=True, squeeze=False)[:, 0]
    name = Path(result.model).name if result.model else "model"
    if isinstance(result, CompareResult):
        x = list(range(len(result.window_ppl_original)))
        axes[0].plot(x, result.window_ppl_original, marker="o", label="original")
        axes[0].plot(x, result.window_ppl_rewired, marker="o", label=f"rewired: {result.spec}")
        axes[0].legend()
        axes[1].bar(x, result.window_kl, color="tab:blue")
        axes[1].set_ylabel("mean KL (nats/token)")
    else:
        x = list(range(len(result.window_ppl)))
        axes[0].plot(x, result.window_ppl, marker="o")
    axes[0].set_ylabel("PPL")
    axes[0].set_title(f"{name}: perplexity by window (ctx {result.n_ctx})")
    axes[-1].set_xlabel("window")
    return _save(fig, path)

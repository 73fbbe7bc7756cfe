"""Per-layer statistics of FFN activations, collected natively while the model runs.

Create the model with ``Llama(..., observe_ffn=True)``; every evaluation then adds to the statistics
until ``reset_ffn_stats()``. Two kinds of tensor are observed per layer:

- ``"down_in"``: the input of ``ffn_down`` (for a gated FFN act(gate)·up; for a plain FFN act(up)), found
  the way llama.cpp's imatrix tool finds it: the operand of the matmul whose weight is
  ``blk.N.ffn_down*``. Always available, dense and MoE (routed experts: the used experts' rows).
- ``"act"``: the activation act(gate) itself, available for layers whose activation is overridden with a
  composed (non-fused) activation or a threshold (then after thresholding).
- ``"act_raw"``: for a thresholded activation, act(gate) before thresholding.

A model created without ``observe_ffn`` has no callback in its graph and pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

KINDS = {"down_in": 0, "act": 1, "act_raw": 2}


@dataclass
class FfnStats:
    """Statistics of one kind of tensor, per layer (arrays indexed by layer)."""

    kind: str
    count: npt.NDArray[np.uint64]       # elements seen
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    zero_frac: npt.NDArray[np.float64]  # fraction of exact zeros
    small_frac: npt.NDArray[np.float64]  # fraction with |x| < eps
    eps: float
    hist: npt.NDArray[np.uint64]        # [n_layer, 1 + n_bins]: column 0 counts exact zeros,
    bin_edges: npt.NDArray[np.float64]  # then |x| in log-spaced bins between these n_bins + 1 edges

    @classmethod
    def from_native(cls, kind: str, raw: dict[str, Any]) -> FfnStats:
        count = np.asarray(raw["count"], dtype=np.uint64)
        n = np.maximum(count.astype(np.float64), 1.0)
        mean = np.asarray(raw["sum"]) / n
        var = np.maximum(np.asarray(raw["sumsq"]) / n - mean**2, 0.0)
        hist = np.asarray(raw["hist"], dtype=np.uint64)
        n_bins = hist.shape[1] - 1
        edges = np.logspace(raw["log10_min"], raw["log10_max"], n_bins + 1)
        return cls(kind=kind, count=count, mean=mean, std=np.sqrt(var),
                   zero_frac=np.asarray(raw["n_zero"]) / n, small_frac=np.asarray(raw["n_small"]) / n,
                   eps=float(raw["eps"]), hist=hist, bin_edges=edges)

    @property
    def n_layer(self) -> int:
        return len(self.count)

    def observed(self, layer: int) -> bool:
        return bool(self.count[layer] > 0)

    def magnitude_quantile(self, layer: int, q: float) -> float:
        """The q-quantile of |x| in a layer (0 <= q < 1), interpolated log-linearly within a bin."""
        if not 0.0 <= q < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {q}")
        h = self.hist[layer].astype(np.float64)
        total = h.sum()
        if total == 0:
            raise ValueError(f"layer {layer}: no activations were observed")
        target = q * total
        if target < h[0]:
            return 0.0  # the quantile falls among the exact zeros
        cum = h[0]
        logs = np.log10(self.bin_edges)
        for b in range(1, len(h)):
            if cum + h[b] > target:
                frac = (target - cum) / h[b]
                return float(10 ** (logs[b - 1] + frac * (logs[b] - logs[b - 1])))
            cum += h[b]
        return float(self.bin_edges[-1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "eps": self.eps,
            "layers": [
                {"layer": il, "count": int(self.count[il]), "mean": float(self.mean[il]),
                 "std": float(self.std[il]), "zero_frac": float(self.zero_frac[il]),
                 "small_frac": float(self.small_frac[il])}
                for il in range(self.n_layer)
            ],
        }

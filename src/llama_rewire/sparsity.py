"""Moved to :mod:`llama_rewire.eval.calibrate`; this module re-exports it for old imports."""

from __future__ import annotations

from .eval.calibrate import (
    OBSERVE_THRESHOLD,
    Calibration,
    calibrate,
    measure_sparsity,
    observe,
    own_activations,
)

__all__ = ["OBSERVE_THRESHOLD", "Calibration", "calibrate", "measure_sparsity", "observe", "own_activations"]

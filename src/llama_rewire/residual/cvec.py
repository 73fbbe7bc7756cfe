"""Control vectors as files: llama.cpp's control-vector GGUF (what ``llama-cvector-generator`` writes and
``--control-vector`` reads; repeng's ``export_gguf`` writes the same layout).

The file: ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's
architecture), ``controlvector.layer_count``, and one F32 tensor ``direction.N`` of ``n_embd`` values per
layer. llama.cpp adds ``direction.N`` to the residual stream after layer N (counting from 0, where
llama.cpp's ``build_cvec`` runs): here that is ``resid_post`` of layer N. llama.cpp has no slot for
layer 0 and refuses a file with ``direction.0``; such a vector is written only on request.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import gguf_min

ARCH = "controlvector"


@dataclass
class ControlVector:
    """One direction per layer (``directions[layer]``, float32 ``[n_embd]``), and the architecture the
    vectors were made for."""

    directions: dict[int, np.ndarray]
    model_hint: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ValueError("a control vector needs at least one layer's direction")
        widths = set()
        out = {}
        for layer, v in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise ValueError(f"control vector layer {layer!r} is not a layer index >= 0")
            a = np.asarray(v, dtype=np.float32)
            if a.ndim != 1 or a.size == 0:
                raise ValueError(
                    f"control vector layer {layer}: a direction is one row of values, got shape {a.shape}"
                )
            if not np.all(np.isfinite(a)):
                raise ValueError(f"control vector layer {layer}: values that are NaN or infinite")
            widths.add(a.size)
            out[int(layer)] = a
        if len(widths) != 1:
            raise ValueError(f"control vector directions of different lengths: {sorted(widths)}")
        self.directions = dict(sorted(out.items()))

    @property
    def n_embd(self) -> int:
        return next(iter(self.directions.values())).size

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    def scaled(self, alpha: float) -> ControlVector:
        """Every direction times alpha; ValueError where a value leaves float32's range."""
        a = check_alpha(alpha)
        with np.errstate(over="ignore", invalid="ignore"):
            out = {k: (v.astype(np.float64) * a).astype(np.float32) for k, v in self.directions.items()}
        for layer, v in out.items():
            if not np.all(np.isfinite(v)):
                raise ValueError(f"control vector layer {layer} times {a:g} is beyond float32's range")
        return ControlVector(out, self.model_hint)

    def save(self, path: str | os.PathLike[str], *, allow_layer0: bool = False) -> None:
        """Write llama.cpp's control-vector GGUF. A direction for layer 0 is refused unless
        ``allow_layer0`` (llama.cpp cannot read such a file; this package can)."""
        if 0 in self.directions and not allow_layer0:
            raise ValueError(
                "layer 0 has a direction: llama.cpp's control vectors start at layer 1 "
                "(pass allow_layer0=True to write it anyway, for this package only)"
            )
        gguf_min.write(
            path,
            {
                "general.architecture": ARCH,
                f"{ARCH}.model_hint": self.model_hint,
                f"{ARCH}.layer_count": len(self.directions),
            },
            {f"direction.{layer}": v for layer, v in self.directions.items()},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ControlVector:
        """Read a control-vector GGUF (ours, llama.cpp's or repeng's). Raises ``ValueError`` for a file
        that is not one. Several tensors for one layer add up, as in llama.cpp's reader."""
        f = gguf_min.read(path)
        arch = f.metadata.get("general.architecture")
        if arch != ARCH:
            raise ValueError(f"{path}: not a control vector (general.architecture is {arch!r}, not {ARCH!r})")
        if not f.tensors:
            raise ValueError(f"{path}: a control vector without direction tensors")
        directions: dict[int, np.ndarray] = {}
        width = 0
        for t in f.tensors:
            prefix, _, index = t.name.partition(".")
            if prefix != "direction" or not index.isdigit():
                raise ValueError(f"{path}: tensor {t.name!r} is not a direction.N tensor")
            if len(t.shape) != 1 or t.shape[0] == 0:
                raise ValueError(f"{path}: tensor {t.name!r} is not one row (shape {t.shape})")
            # every direction has the model's width: one of another width is refused, never broadcast
            width = width or t.shape[0]
            if t.shape[0] != width:
                raise ValueError(f"{path}: tensor {t.name!r} has {t.shape[0]} values, the other directions "
                                 f"{width}")
            v = f.f32(t)
            layer = int(index)
            directions[layer] = directions[layer] + v if layer in directions else v
        hint = f.metadata.get(f"{ARCH}.model_hint", "")
        return cls(directions, hint if isinstance(hint, str) else "")


def as_directions(vector: object, layers: Iterable[int] | None, what: str) -> dict[int, np.ndarray]:
    """{layer: row} from a ControlVector, a path to one, a {layer: row} mapping, or one row for ``layers``."""
    if isinstance(vector, (str, os.PathLike)):
        vector = ControlVector.load(vector)
    if isinstance(vector, ControlVector):
        d = dict(vector.directions)
        if layers is not None:
            wanted = list(layers)
            if missing := [il for il in wanted if il not in d]:
                raise ValueError(f"{what}: the control vector has no direction for layers {missing}")
            d = {il: d[il] for il in wanted}
        return d
    if isinstance(vector, Mapping):
        if layers is not None:
            raise ValueError(f"{what}: layers= goes with one vector, not a {{layer: vector}} mapping")
        return {_layer_key(k, what): np.asarray(v) for k, v in vector.items()}
    if layers is None:
        raise ValueError(f"{what}: one vector needs layers= (the layers it applies to)")
    a = np.asarray(vector)
    return dict.fromkeys(layers, a)


def _layer_key(k: object, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{what}: layer {k!r} is not an integer")
    return int(k)


def check_alpha(alpha: object, what: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a number, got {type(alpha).__name__}")
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(f"{what} must be finite, got {a}")
    return a

"""Edits of the residual stream: steering (add), directional ablation and activation patching.

Each edit names a layer and a point (see :data:`POINTS`); the tokens it applies to are ``"all"``,
``"prompt"``, ``"generated"`` or a ``(begin, end)`` range of positions (``end`` None: no end). At one
point the edits run in the order patch, ablate, add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .. import _core
from .cvec import check_alpha

# name -> what it is (the names used by taps, edits, captures and plots)
POINTS = {
    "resid_post": "the residual stream after the layer (where llama.cpp's control vectors add)",
    "attn_out": "attention's contribution to the residual stream (after its post-norm, if any)",
    "ffn_out": "the FFN's contribution to the residual stream (after its post-norm, if any)",
    "ffn_act": "the input of ffn_down, act(gate) * up, of a dense FFN [n_ff]",
}
TOKENS = ("all", "prompt", "generated")

Tokens = Union[str, tuple[int, Union[int, None]]]
NativeEdit = tuple[int, int, int, np.ndarray, Union[np.ndarray, None], int, int]


def point_index(point: object) -> int:
    if not isinstance(point, str):
        raise TypeError(f"point must be a str, one of {', '.join(POINTS)}; got {type(point).__name__}")
    if point not in POINTS:
        raise ValueError(f"unknown point {point!r}: the points are {', '.join(POINTS)}")
    return list(POINTS).index(point)


def check_tokens(tokens: object) -> Tokens:
    if isinstance(tokens, str):
        if tokens not in TOKENS:
            raise ValueError(
                f"tokens must be one of {', '.join(TOKENS)} or a (begin, end) range, got {tokens!r}"
            )
        return tokens
    if isinstance(tokens, (tuple, list)) and len(tokens) == 2:
        b, e = tokens
        ok_b = isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 0
        ok_e = e is None or (isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e > b)
        if ok_b and ok_e:
            return (int(b), None if e is None else int(e))
    raise ValueError(
        f"tokens must be one of {', '.join(TOKENS)} or a (begin, end) range of positions "
        f"with 0 <= begin < end (end None: no end), got {tokens!r}"
    )


def _rows(values: object, width: int, what: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: values must be numbers") from None
    shape = a.shape
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{what}: expected rows of {width} values, got shape {shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: values that are NaN or infinite")
    if np.any(np.abs(a) > np.finfo(np.float32).max):
        raise ValueError(f"{what}: values beyond float32's range")
    return a


@dataclass(frozen=True, eq=False)
class Steer:
    """Add ``alpha * vector`` at a point of a layer."""

    layer: int
    vector: np.ndarray
    alpha: float = 1.0
    point: str = "resid_post"
    tokens: Tokens = "all"


@dataclass(frozen=True, eq=False)
class Ablate:
    """Remove the span of ``directions`` (one row or several, orthonormalised here) at a point:
    ``h - R^T (R h)``."""

    layer: int
    directions: np.ndarray
    point: str = "resid_post"
    tokens: Tokens = "all"


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace the value of a point at the given positions with rows of ``values``."""

    layer: int
    positions: tuple[int, ...]
    values: np.ndarray
    point: str = "resid_post"


Edit = Union[Steer, Ablate, Patch]


class EditChecker:
    """Checks edits against a context's layers and points, before the native setter sees them."""

    def __init__(self, ctx: Any, n_layer: int, n_ctx: int) -> None:
        self.ctx, self.n_layer, self.n_ctx = ctx, n_layer, n_ctx

    def layer(self, layer: object, what: str) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"{what}: layer must be an integer, got {type(layer).__name__}")
        if not -self.n_layer <= layer < self.n_layer:
            raise ValueError(f"{what}: layer {layer} is out of range (the model has {self.n_layer} layers)")
        return int(layer) % self.n_layer

    def layers(self, layers: object, what: str) -> list[int]:
        if layers is None:
            return list(range(self.n_layer))
        if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
            return [self.layer(layers, what)]
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, range, np.ndarray)):
            raise TypeError(
                f"{what}: layers must be an int, a sequence of ints or None, got {type(layers).__name__}"
            )
        out = [self.layer(il, what) for il in layers]
        if len(set(out)) != len(out):
            raise ValueError(f"{what}: layers {list(layers)} name a layer twice")
        if not out:
            raise ValueError(f"{what}: layers is empty")
        return out

    def width(self, point: str, layer: int, what: str) -> int:
        w = int(_core.rewire_point_width(self.ctx, point_index(point), layer))
        if w <= 0:
            why = (
                "its FFN is not one tensor (routed experts plus a shared expert)"
                if point == "ffn_out"
                else "it has no dense FFN"
            )
            raise ValueError(f"{what}: layer {layer} has no {point} ({why})")
        return w

    def check(self, edit: Edit) -> Edit:
        if not isinstance(edit, (Steer, Ablate, Patch)):
            raise TypeError(f"an edit is a Steer, Ablate or Patch, got {type(edit).__name__}")
        kind = type(edit).__name__
        layer = self.layer(edit.layer, kind)
        what = f"{kind} at layer {layer}"
        point_index(edit.point)
        width = self.width(edit.point, layer, what)
        if isinstance(edit, Steer):
            rows = _rows(edit.vector, width, what)
            if rows.shape[0] != 1:
                raise ValueError(
                    f"{what}: a steering vector is one row of {width} values, got {rows.shape[0]} rows"
                )
            return Steer(
                layer,
                rows[0].astype(np.float32),
                check_alpha(edit.alpha),
                edit.point,
                check_tokens(edit.tokens),
            )
        if isinstance(edit, Ablate):
            rows = _rows(edit.directions, width, what)
            if rows.shape[0] > width:
                raise ValueError(f"{what}: {rows.shape[0]} directions in a space of {width}")
            q, r = np.linalg.qr(rows.T)  # orthonormal columns spanning the directions
            diag = np.abs(np.diag(r))
            if np.any(diag <= 1e-6 * max(1.0, float(np.max(np.linalg.norm(rows, axis=1))))):
                raise ValueError(f"{what}: the directions are zero or linearly dependent")
            return Ablate(layer, q.T.astype(np.float32), edit.point, check_tokens(edit.tokens))
        positions = _positions(edit.positions, what, self.n_ctx)
        rows = _rows(edit.values, width, what)
        if rows.shape[0] != len(positions):
            raise ValueError(f"{what}: {len(positions)} positions but {rows.shape[0]} rows of values")
        return Patch(layer, positions, rows.astype(np.float32), edit.point)


def _positions(positions: object, what: str, n_ctx: int) -> tuple[int, ...]:
    if isinstance(positions, (str, bytes)) or not isinstance(positions, (Sequence, range, np.ndarray)):
        raise TypeError(f"{what}: positions must be a sequence of ints, got {type(positions).__name__}")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"{what}: position {p!r} is not an integer")
        if not 0 <= p < n_ctx:
            raise ValueError(f"{what}: position {p} is outside the context (0..{n_ctx - 1})")
        out.append(int(p))
    if not out:
        raise ValueError(f"{what}: no positions")
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: a position appears twice")
    return tuple(out)


def _range(tokens: Tokens, n_prompt: int) -> tuple[int, int] | None:
    """[begin, end) positions (end -1: no end) of a token selection, None when it selects nothing."""
    if tokens == "all":
        return 0, -1
    if tokens == "prompt":
        return (0, n_prompt) if n_prompt > 0 else None
    if tokens == "generated":
        return n_prompt, -1
    assert isinstance(tokens, tuple)
    b, e = tokens
    return b, -1 if e is None else e


def native(edits: Sequence[Edit], n_prompt: int) -> list[NativeEdit]:
    """The native setter's tuples for checked edits: steering at one point summed (same tokens only)."""
    adds: dict[tuple[int, str], tuple[np.ndarray, Tokens]] = {}
    out: list[NativeEdit] = []
    seen: set[tuple[str, int, str]] = set()
    for e in edits:
        if isinstance(e, Steer):
            key = (e.layer, e.point)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
                v = e.vector.astype(np.float64) * e.alpha
            if key in adds:
                prev, toks = adds[key]
                if toks != e.tokens:
                    raise ValueError(
                        f"two steering vectors at layer {e.layer} {e.point} apply to different tokens "
                        f"({toks!r}, {e.tokens!r})"
                    )
                with np.errstate(over="ignore", invalid="ignore"):
                    v = prev + v
            adds[key] = (v, e.tokens)
            continue
        kind = type(e).__name__
        if (kind, e.layer, e.point) in seen:
            raise ValueError(f"two {kind} edits at layer {e.layer} {e.point}: one per layer and point")
        seen.add((kind, e.layer, e.point))
        if isinstance(e, Ablate):
            rng = _range(e.tokens, n_prompt)
            if rng is not None:
                out.append((_core.EDIT_ABLATE, point_index(e.point), e.layer, e.directions, None, *rng))
        else:
            out.append(
                (
                    _core.EDIT_PATCH,
                    point_index(e.point),
                    e.layer,
                    e.values,
                    np.asarray(e.positions, dtype=np.int32),
                    0,
                    -1,
                )
            )
    for (layer, point), (v, toks) in adds.items():
        row = _as_float32(v, layer, point)  # checked whatever tokens it applies to
        rng = _range(toks, n_prompt)
        if rng is not None:
            out.append((_core.EDIT_ADD, point_index(point), layer, row, None, *rng))
    return out


def _as_float32(v: np.ndarray, layer: int, point: str) -> np.ndarray:
    """The summed alpha * vector of one place as the native table's float32 row; ValueError where a value
    does not fit float32 (it would add infinities, and NaNs after them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        row = v.astype(np.float32)
    if not np.all(np.isfinite(row)):
        big = float(np.max(np.abs(v))) if np.all(np.isfinite(v)) else float("inf")
        raise ValueError(
            f"steering at layer {layer} {point}: alpha * vector reaches {big:.3g}, beyond float32's range "
            f"({np.finfo(np.float32).max:.3g}): use a smaller alpha"
        )
    return row[None, :]


def key(native_edits: Sequence[NativeEdit]) -> tuple[Any, ...]:
    """A hashable digest of native edits (what the KV cache was computed under)."""
    out = []
    for kind, point, layer, values, pos, b, e in native_edits:
        h = hashlib.blake2b(values.tobytes(), digest_size=16)
        if pos is not None:
            h.update(pos.tobytes())
        out.append((kind, point, layer, b, e, h.hexdigest()))
    return tuple(sorted(out))

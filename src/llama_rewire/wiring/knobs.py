"""The knobs of a layer's wiring: their names, values, and what a layer needs to take them.

==============  =================================  ==========================================
knob            value                              meaning
==============  =================================  ==========================================
act             an activation (or an expression)   every FFN scope of the layer
act.dense       the same                           the dense FFN only
act.shared      the same                           the shared expert(s) of an MoE layer only
act.experts     the same                           the routed experts only
skip            none, attn, ffn, layer             the sublayer (layer: both) adds nothing
attn_scale      a finite number s                  the attention's contribution times s
ffn_scale       a finite number s                  the FFN's contribution times s
heads_off       [i, j, ...] (``a-b`` ranges too)   those attention heads' outputs are zero
experts_used    k >= 1, or default                 routed experts per token
experts_off     [e, ...]                           those experts are never selected
==============  =================================  ==========================================
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

from ..errors import WiringSpecError
from .activations import DEFAULT, Activation, parse_activation
from .expr import FLOAT32_MAX, format_number
from .layout import LayerInfo

SCOPES = ("dense", "shared", "experts")
ACT_KNOBS = tuple(f"act.{s}" for s in SCOPES)
KNOBS = ("act", *ACT_KNOBS, "skip", "attn_scale", "ffn_scale", "heads_off", "experts_used", "experts_off")
SKIPS = ("none", "attn", "ffn", "layer")

Value = Union[Activation, str, float, tuple[int, ...], Optional[int]]

# the value of each stored knob that changes nothing ("act" is stored as its three scopes)
IDENTITY: dict[str, Value] = {
    **dict.fromkeys(ACT_KNOBS, DEFAULT), "skip": "none", "attn_scale": 1.0, "ffn_scale": 1.0,
    "heads_off": (), "experts_used": None, "experts_off": (),
}


def unknown_knob(name: str, where: str) -> WiringSpecError:
    close = difflib.get_close_matches(name, KNOBS, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return WiringSpecError(f"{where}: unknown knob {name!r} (known: {', '.join(KNOBS)}){hint}")


def is_knob_like(name: object) -> bool:
    """A known knob, or close enough to one to be a misspelling of it (for dict values)."""
    return isinstance(name, str) and (name in KNOBS or name.startswith("act.")
                                      or bool(difflib.get_close_matches(name, KNOBS, n=1, cutoff=0.75)))


# ---------------------------------------------------------------- values (syntax)

def _number(raw: Any, knob: str, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise WiringSpecError(f"{where}: {knob} must be a number, got {raw!r}")
    try:
        v = float(raw)
    except ValueError:
        raise WiringSpecError(f"{where}: {knob} must be a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise WiringSpecError(f"{where}: {knob} must be a finite number, got {raw!r}")
    if abs(v) > FLOAT32_MAX:
        raise WiringSpecError(f"{where}: {knob} {format_number(v)} does not fit in float32")
    return v


def _index(raw: Any, what: str, knob: str, where: str) -> int:
    noun = f"{'an' if what[0] in 'aeiou' else 'a'} {what} index"
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise WiringSpecError(f"{where}: {knob}: {raw!r} is not {noun}")
    if isinstance(raw, str):
        if not re.fullmatch(r"\s*-?\d+\s*", raw):
            raise WiringSpecError(f"{where}: {knob}: {raw.strip()!r} is not {noun}")
        raw = int(raw)
    index = int(raw)
    if index < 0:
        raise WiringSpecError(f"{where}: {knob}: {what} {index} is out of range ({what}s count from 0)")
    return index


def _index_list(raw: Any, what: str, knob: str, where: str) -> tuple[int, ...]:
    """[0, 3], "[0,3]", "[0-3, 7]", "5" or 5: sorted, without repeats."""
    items: list[Any]
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("[") != text.endswith("]"):
            raise WiringSpecError(f"{where}: {knob}: unbalanced brackets in {raw!r}")
        text = text.strip("[]").strip()
        items = [p.strip() for p in text.split(",")] if text else []
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        items = [raw]
    else:
        raise WiringSpecError(f"{where}: {knob} is a list of {what} indices such as [0,3], got {raw!r}")
    out: set[int] = set()
    for item in items:
        m = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", item) if isinstance(item, str) else None
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise WiringSpecError(f"{where}: {knob}: range {item!r} goes backwards")
            out.update(range(a, b + 1))
        else:
            out.add(_index(item, what, knob, where))
    return tuple(sorted(out))


def _experts_used(raw: Any, where: str) -> int | None:
    if isinstance(raw, str) and raw.strip().lower() == "default":
        return None
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise WiringSpecError(f"{where}: experts_used is an integer k >= 1 or 'default', got {raw!r}")
    if raw < 1:
        raise WiringSpecError(f"{where}: experts_used must be >= 1 (or 'default'), got {raw}")
    return raw


def _skip(raw: Any, where: str) -> str:
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value not in SKIPS:
        shown = raw.strip() if isinstance(raw, str) else raw
        raise WiringSpecError(f"{where}: unknown skip {shown!r} ({', '.join(SKIPS)})")
    return str(value)


def parse_value(knob: str, raw: Any, where: str) -> Value:
    """The value of one knob (``act`` included) from a string or a dict value; checks the syntax."""
    if knob == "act" or knob in ACT_KNOBS:
        return parse_activation(raw, where)
    if knob == "skip":
        return _skip(raw, where)
    if knob in ("attn_scale", "ffn_scale"):
        return _number(raw, knob, where)
    if knob == "heads_off":
        return _index_list(raw, "head", knob, where)
    if knob == "experts_off":
        return _index_list(raw, "expert", knob, where)
    if knob == "experts_used":
        return _experts_used(raw, where)
    raise unknown_knob(knob, where)


def format_value(knob: str, value: Value) -> str:
    """The string-form text of a value: relu, ffn, 0.5, [0,3], [0-7,9]."""
    if isinstance(value, tuple):
        parts: list[str] = []
        i = 0
        while i < len(value):
            j = i
            while j + 1 < len(value) and value[j + 1] == value[j] + 1:
                j += 1
            parts += [f"{value[i]}-{value[j]}"] if j - i >= 2 else [str(v) for v in value[i : j + 1]]
            i = j + 1
        return "[" + ",".join(parts) + "]"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def json_value(knob: str, value: Value) -> Any:
    """The dict-form (JSON / TOML) value: a string, a number or a list of integers."""
    if isinstance(value, Activation):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ---------------------------------------------------------------- what a layer takes

def is_identity(knob: str, value: Value) -> bool:
    if knob == "act":
        return value == DEFAULT
    return bool(IDENTITY[knob] == value)


def _needs(knob: str, value: Value) -> list[str]:
    """The parts of a layer a (non-identity) value needs: attn, ffn, dense, shared, experts."""
    if knob == "act":
        return ["ffn"]
    if knob in ACT_KNOBS:
        return [knob[4:]]
    if knob == "skip":
        return {"attn": ["attn"], "ffn": ["ffn"], "layer": ["attn", "ffn"]}.get(str(value), [])
    if knob in ("attn_scale", "heads_off"):
        return ["attn"]
    if knob == "ffn_scale":
        return ["ffn"]
    return ["experts"]


def _has(info: LayerInfo, part: str) -> bool:
    return info.attn if part == "attn" else info.ffn if part == "ffn" else info.has_scope(part)


# a part of a layer: in "no layer of the model has ...", and in "the layer has no ..."
PART_WORDS = {"attn": "attention", "ffn": "an FFN", "dense": "a dense FFN", "shared": "a shared expert",
              "experts": "routed experts"}
_NO_PART = {"attn": "attention", "ffn": "FFN", "dense": "dense FFN", "shared": "shared expert",
            "experts": "routed experts"}


def missing_part(knob: str, value: Value, info: LayerInfo) -> str | None:
    """The part of a layer ('attn', 'ffn', 'dense', 'shared', 'experts') this value needs and the layer
    lacks, or None."""
    if is_identity(knob, value):
        return None
    for part in _needs(knob, value):
        if not _has(info, part):
            return part
    return None


def lacks(info: LayerInfo, part: str) -> str:
    """'has no routed experts', 'has no attention (it is recurrent)'."""
    why = " (it is recurrent)" if part == "attn" and info.recurrent else ""
    return f"has no {_NO_PART[part]}{why}"


def label(knob: str, value: Value) -> str:
    return f"skip={value}" if knob == "skip" else knob


def check_value(knob: str, value: Value, info: LayerInfo, il: int) -> None:
    """Range checks of a value against a layer that has the parts it needs."""
    where = f"layer {il}: {label(knob, value)}"
    if knob == "skip" and value in ("attn", "layer") and info.kv_reused:
        raise WiringSpecError(f"{where}: later layers read this layer's KV cache, so its attention cannot "
                              "be skipped")
    if knob == "heads_off":
        assert isinstance(value, tuple)
        for h in value:
            if h >= info.n_head:
                raise WiringSpecError(f"{where}: head {h} is out of range (the layer has {info.n_head} "
                                      f"heads)")
    elif knob == "experts_off":
        assert isinstance(value, tuple)
        for e in value:
            if e >= info.n_expert:
                raise WiringSpecError(f"{where}: expert {e} is out of range (the layer has {info.n_expert} "
                                      "experts)")
    elif knob == "experts_used" and value is not None:
        assert isinstance(value, int)
        if value > info.max_experts_used:
            raise WiringSpecError(f"{where}: k = {value} is out of range (1 to {info.max_experts_used} for "
                                  "this layer)")


def check_layer(values: Mapping[str, Value], info: LayerInfo, il: int) -> None:
    """Checks across knobs, once the layer's values are resolved: experts left for the k in use."""
    off = values["experts_off"]
    assert isinstance(off, tuple)
    if not off:
        return
    used = values["experts_used"]
    k = info.n_expert_used if used is None else used
    assert isinstance(k, int)
    left = info.n_expert - len(off)
    if left < k:
        whose = "" if used is not None else " (the model's own k)"
        raise WiringSpecError(f"layer {il}: experts_off: {len(off)} of {info.n_expert} experts off leave "
                              f"{left}, fewer than the {k} used per token{whose}")


def star_nowhere(where: str, part: str) -> WiringSpecError:
    return WiringSpecError(f"{where}: no layer of the model has {PART_WORDS[part]}")

"""Every invalid knob is a ValueError naming the bad part, raised before a graph is built; the model keeps
its wiring and decodes afterwards. The native setter refuses the same values on its own."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from checks import logits_of

from llama_rewire import _core

TOKENS = [1, 17, 200, 45, 3, 99]

BAD: list[tuple[str, str, str]] = [  # (model, spec, a fragment of the message)
    ("llama", "5:relu", "layer 5 is out of range"),
    ("llama", "0:heads_off=[4]", "head 4 is out of range (the layer has 4 heads)"),
    ("llama", "0:heads_off=[-1]", "heads_off"),
    ("llama", "0:heads_off=[0,", "unbalanced brackets"),
    ("llama", "ffn_scale=nan", "finite"),
    ("llama", "1:attn_scale=inf", "finite"),
    ("llama", "attn_scale=abc", "attn_scale"),
    ("llama", "experts_used=1", "routed experts"),
    ("llama", "act.experts=relu", "routed experts"),
    ("llama", "act.shared=relu", "shared"),
    ("llama", "skip=atn", "unknown skip 'atn'"),
    ("llama", "ffn_scal=1", "unknown knob 'ffn_scal'"),
    ("llama", "x*sigmoid(", "unexpected end"),
    ("llama", "x^0.5", "non-integer power"),
    ("llama", "2+3", "constant"),
    ("llama", "x*y", "unknown name 'y'"),
    ("llama", "__import__('os')", "unknown activation '__import__'"),
    ("llama", "exp(" * 25 + "x" + ")" * 25, "budget is 24"),
    ("moe_shared", "experts_used=0", "experts_used"),
    ("moe_shared", "experts_used=5", "k = 5 is out of range"),
    ("moe_shared", "experts_off=[4]", "expert 4 is out of range"),
    ("moe_shared", "experts_used=3, experts_off=[0,1]", "fewer than the 3 used"),
    ("moe_shared", "act.dense=relu", "dense"),
    ("mamba", "0:skip=attn", "no attention"),
    ("mamba", "skip=ffn", "FFN"),
    ("mamba", "relu", "FFN"),
    ("mamba", "heads_off=[0]", "attention"),
]


@pytest.mark.parametrize(("kind", "spec", "message"), BAD, ids=[f"{k}-{s[:30]}" for k, s, _ in BAD])
def test_bad_knob_is_a_value_error(tiny_llm: Any, kind: str, spec: str, message: str) -> None:
    llm = tiny_llm(kind)
    llm.set_wiring("0:ffn_scale=0.5" if kind != "mamba" else None)
    before = str(llm.wiring)
    with pytest.raises(ValueError, match=None) as err:
        llm.set_wiring(spec)
    assert message in str(err.value)
    assert str(llm.wiring) == before  # nothing changed
    with pytest.raises(ValueError):
        type(llm)(llm.model_path, n_ctx=32, verbose=False, wiring=spec)
    assert np.isfinite(logits_of(llm, TOKENS) if kind != "mamba" else llm.tokenize(b"x")).all()


def _layer(**kw: Any) -> Any:
    act = (0, 0.0, 0.0, [])
    return ((act, act, act), kw.get("skip_attn", False), kw.get("skip_ffn", False), kw.get("attn_scale", 1.0),
            kw.get("ffn_scale", 1.0), kw.get("heads_off", []), kw.get("experts_used", 0),
            kw.get("experts_off", []))


NATIVE_BAD = [
    ("llama", {"attn_scale": float("nan")}, "out of range"),
    ("llama", {"heads_off": [4]}, "out of range"),
    ("llama", {"experts_used": 1}, "out of range"),
    ("moe", {"experts_used": 5}, "out of range"),
    ("moe", {"experts_off": [0, 1, 2]}, "out of range"),  # one expert left, top-2
    ("mamba", {"skip_attn": True}, "can't skip"),
    ("mamba", {"skip_ffn": True}, "can't skip"),
]


@pytest.mark.parametrize(("kind", "knobs", "message"), NATIVE_BAD)
def test_native_setter_refuses_bad_knobs(tiny_llm: Any, kind: str, knobs: dict[str, Any],
                                         message: str) -> None:
    """Below the Python checks: the C entry point validates each entry against the layer itself."""
    llm = tiny_llm(kind)
    n = llm.n_layer()
    with pytest.raises(ValueError, match=message):
        _core.rewire_wiring_set(llm.ctx, [_layer(**knobs)] + [_layer() for _ in range(n - 1)])
    with pytest.raises(ValueError, match="one entry per layer"):
        _core.rewire_wiring_set(llm.ctx, [_layer()] * (n + 1))
    got = _core.rewire_wiring_get(llm.ctx)[0]
    assert (tuple(got[0]), *got[1:]) == _layer()  # nothing changed


@pytest.mark.parametrize("program", [
    [(0, 0.0, 0.0), (3, 0.0, 0.0)],                          # add with one operand
    [(0, 0.0, 0.0), (0, 0.0, 0.0)],                          # two values left
    [(2, 1.0, 0.0)],                                         # affine of nothing
    [(0, 0.0, 0.0), (10, 2.0, 1.0)],                         # clamp with lo > hi
    [(0, 0.0, 0.0), (2, float("inf"), 0.0)],                 # a non-finite constant
    [(0, 0.0, 0.0), (99, 0.0, 0.0)],                         # an unknown op
    [(0, 0.0, 0.0)] + [(1, 0.0, 0.0)] * 8 + [(5, 0.0, 0.0)] * 8,  # deeper than the stack
    [(0, 0.0, 0.0)] + [(13, 0.0, 0.0)] * 25,                 # over the node budget
    [],
])
def test_native_setter_refuses_bad_programs(tiny_llm: Any, program: list[tuple[int, float, float]]) -> None:
    llm = tiny_llm("llama")
    expr = (_core.ACT_EXPR, 0.0, 0.0, program)
    bad = ((expr, expr, expr), False, False, 1.0, 1.0, [], 0, [])
    with pytest.raises(ValueError, match="expression program"):
        _core.rewire_wiring_set(llm.ctx, [bad] + [_layer() for _ in range(llm.n_layer() - 1)])
    assert np.isfinite(logits_of(llm, TOKENS)).all()

"""Wiring.native() through the native ``rewire_wiring_set`` on the tiny models, against the float64
numpy reference; and every wiring the Python parser accepts is one the native side takes.

Skipped where the extension predates the wiring API (no ``rewire_wiring_set``)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err
from conftest import EXACT

from llama_rewire import Llama, _core
from llama_rewire.wiring import Activation, Wiring, describe_layout, parse_wiring, run_program

pytestmark = pytest.mark.skipif(not hasattr(_core, "rewire_wiring_set"),
                                reason="the extension has no wiring API yet (rebuild it)")

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12]


def _ref_act(a: Activation) -> Any:
    """numpy_ref's form of an activation: (name, param, threshold), or a function for an expression."""
    if a.name == "default":
        return None
    if not a.is_expression:
        return (a.name, a.param, a.threshold)
    program, t = a.program, a.threshold

    def f(x: np.ndarray) -> np.ndarray:
        y = run_program(program, x)
        return np.where(np.abs(y) > t, y, 0.0) if t > 0 else y

    return f


def _ref_wiring(w: Wiring) -> list[dict[str, Any]]:
    out = []
    for layer in w:
        d: dict[str, Any] = {
            "act.dense": _ref_act(layer.act_dense), "act.shared": _ref_act(layer.act_shared),
            "act.experts": _ref_act(layer.act_experts), "skip_attn": layer.skip_attn,
            "skip_ffn": layer.skip_ffn, "attn_scale": layer.attn_scale, "ffn_scale": layer.ffn_scale,
            "heads_off": list(layer.heads_off), "experts_off": list(layer.experts_off),
            "experts_used": layer.experts_used,
        }
        out.append({k: v for k, v in d.items() if v is not None})
    return out


CASES = [
    ("llama", "0:x*tanh(x), 1:clamp(x,-3,3)@0.05, 2:0.5*x*(1+tanh(0.8*x))"),
    ("llama", "0:skip=attn, 1:skip=ffn, 2:ffn_scale=0.5, 2:attn_scale=-1"),
    ("llama", "1:heads_off=[0,2], 0:skip=layer, *:x*sigmoid(1.5*x)"),
    ("llama", "*:max(x,0)^2, 2:2*min(x,tanh(x))/x"),
    ("moe_shared", "*:experts_used=1, 0:act.experts=relu, 1:act.shared=x*tanh(x)"),
    ("moe_shared", "*:experts_off=[0], 1:ffn_scale=2, 0:heads_off=[1]"),
    ("moe", "*:act.experts=x*sigmoid(x)@0.01, *:experts_used=3, 1:experts_off=[3]"),
    # relu elsewhere: gemma3's own gelu runs from an fp16 table, 5e-4 off the float64 formula
    ("gemma3", "*:relu, 1:attn_scale=0.5, 2:ffn_scale=0, 3:skip=attn, 0:x*tanh(softplus(x))"),
]


@pytest.mark.parametrize(("kind", "spec"), CASES)
def test_native_wiring_matches_the_reference(tiny: Any, kind: str, spec: str) -> None:
    path, model = tiny(kind)
    with Llama(str(path), **EXACT) as llm:
        base = logits_of(llm, TOKENS)
        wiring = parse_wiring(spec, describe_layout(llm.ctx))
        _core.rewire_wiring_set(llm.ctx, wiring.native())
        got = logits_of(llm, TOKENS)
        _core.rewire_wiring_set(llm.ctx, [])
        assert np.array_equal(logits_of(llm, TOKENS), base)
    want = numpy_ref.forward(model, TOKENS, wiring=_ref_wiring(wiring))
    assert rel_err(got, want) < 2e-6
    assert rel_err(got, base) > 1e-3  # the wiring did something


def _random_entry(rng: random.Random, n_layer: int) -> str:
    values = {
        "act": ["relu", "gelu", "x*tanh(x)", "silu@0.1", "leaky_relu(0.2)", "default", "clamp(x,-1,1)"],
        "skip": ["none", "attn", "ffn", "layer"],
        "scale": ["0", "0.5", "-1", "2"],
        "experts_used": ["1", "2", "3", "4", "5", "default"],
    }
    knob = rng.choice(["act", "act.dense", "act.shared", "act.experts", "skip", "attn_scale", "ffn_scale",
                       "heads_off", "experts_used", "experts_off"])
    if knob in ("heads_off", "experts_off"):
        value = "[" + ",".join(str(rng.randrange(6)) for _ in range(rng.randrange(4))) + "]"
    else:
        key = "act" if knob.startswith("act") else "scale" if knob.endswith("scale") else knob
        value = rng.choice(values[key])
    layers = rng.choice(["*", str(rng.randrange(n_layer)), f"0-{n_layer - 1}", "-1"])
    return f"{layers}:{knob}={value}"


@pytest.mark.parametrize("kind", ["llama", "moe_shared", "gemma3"])
def test_the_native_side_takes_every_wiring_python_accepts(tiny: Any, kind: str) -> None:
    rng = random.Random(kind)
    path, _ = tiny(kind)
    accepted = 0
    with Llama(str(path), **EXACT) as llm:
        layout = describe_layout(llm.ctx)
        for _ in range(60):
            spec = ", ".join(_random_entry(rng, len(layout)) for _ in range(rng.randrange(1, 4)))
            try:
                wiring = parse_wiring(spec, layout)
            except ValueError:
                continue
            _core.rewire_wiring_set(llm.ctx, wiring.native())  # raises on a refusal
            accepted += 1
    assert accepted > 10

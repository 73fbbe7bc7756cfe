"""Thresholded activations and per-layer FFN statistics, checked against the numpy reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err

from llama_rewire import _core
from llama_rewire.wiring import Activation, parse, parse_activation

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12]

# run as fused GLU kernels when unthresholded: no activation tensor of their own
FUSED = {"default", "silu", "gelu", "gelu_erf", "gelu_quick", "relu"}


def run(llm: Any) -> np.ndarray:
    return logits_of(llm, TOKENS)


def test_threshold_syntax() -> None:
    assert parse_activation("silu@0.05") == Activation("silu", None, 0.05)
    assert parse_activation("leaky_relu(0.1)@0.2") == Activation("leaky_relu", 0.1, 0.2)
    assert parse_activation({"name": "swish", "beta": 2, "threshold": 0.3}) == Activation("swish", 2.0, 0.3)
    assert str(parse_activation("elu(0.5)@0.25")) == "elu(0.5)@0.25"
    assert parse("0:gelu@0.1", 2)[0].threshold == 0.1


@pytest.mark.parametrize(
    ("spec", "message"),
    [("0:silu@-1", "finite and >= 0"), ("0:silu@nan", "finite and >= 0"), ("0:silu@x", "must be a number"),
     ("0:default@0.1", "needs an explicit activation"), ({0: {"name": "relu", "threshold": "a"}}, "number")],
)
def test_bad_thresholds(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(spec, 2)


def test_native_table_rejects_bad_thresholds(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    with pytest.raises(ValueError, match="layer 1: activation parameter"):
        _core.rewire_set(llm.ctx, [(1, 0.0, 0.0), (1, 0.0, -0.5), (0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="layer 0: activation parameter"):
        _core.rewire_set(llm.ctx, [(0, 0.0, 0.1), (0, 0.0, 0.0), (0, 0.0, 0.0)])


@pytest.mark.parametrize("kind", ["llama", "gpt2", "phi3", "moe", "moe_shared", "moe_merged"])
@pytest.mark.parametrize("act", ["silu@0.1", "relu@0.3", "gelu_erf@0.05", "mish@0.2", "identity@0.5"])
def test_thresholded_activations_match_reference(tiny: Any, tiny_llm: Any, kind: str, act: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind, activations={"*": act})
    a = parse_activation(act)
    got = run(llm)
    ref = numpy_ref.forward(spec, TOKENS, [(a.name, a.param, a.threshold)] * spec.n_layer)
    assert rel_err(got, ref) < 1e-4
    unthresholded = numpy_ref.forward(spec, TOKENS, [(a.name, a.param)] * spec.n_layer)
    assert rel_err(got, unthresholded) > 1e-3


@pytest.mark.parametrize("kind", ["llama", "gpt2", "phi3"])
@pytest.mark.parametrize("spec_text", [None, "*:relu", "0:mish@0.1, 1:tanh"])
def test_statistics_match_numpy(tiny: Any, tiny_llm: Any, kind: str, spec_text: str | None) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind, observe_ffn=True, ffn_stats_eps=0.05, activations=spec_text)
    llm.reset_ffn_stats()  # the constructor's reserve builds graphs but computes nothing; reset anyway
    llm.eval(TOKENS)
    table = [(a.name, a.param, a.threshold) for a in parse(spec_text, spec.n_layer)]
    ref = numpy_ref.dense_ffn_tensors(spec, TOKENS, table)
    down, act = llm.ffn_stats("down_in"), llm.ffn_stats("act")
    for il, (ref_act, ref_down) in enumerate(ref):
        assert down.count[il] == ref_down.size
        assert down.mean[il] == pytest.approx(ref_down.mean(), abs=1e-5)
        assert down.std[il] == pytest.approx(ref_down.std(), rel=1e-4)
        assert down.zero_frac[il] == pytest.approx((ref_down == 0).mean(), abs=1.5 / ref_down.size)
        assert down.small_frac[il] == pytest.approx((np.abs(ref_down) < 0.05).mean(), abs=3 / ref_down.size)
        for q in (0.25, 0.5, 0.9):
            assert down.magnitude_quantile(il, q) == pytest.approx(np.quantile(np.abs(ref_down), q), rel=0.05)
        gated = spec.gated or spec.fused_gate_up
        name, _, threshold = table[il]
        if gated and (name not in FUSED or threshold > 0):
            # a composed (non-fused) activation is a node of its own: observed as "act"
            assert act.count[il] == ref_act.size
            assert act.zero_frac[il] == pytest.approx((ref_act == 0).mean(), abs=1.5 / ref_act.size)
            assert act.mean[il] == pytest.approx(ref_act.mean(), abs=1e-5)
        elif gated:
            assert act.count[il] == 0  # a fused GLU kernel: no separate activation tensor


def test_statistics_on_moe_count_the_used_experts(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("moe")
    llm = tiny_llm("moe", observe_ffn=True)
    llm.eval(TOKENS)
    stats = llm.ffn_stats()
    assert list(stats.count) == [len(TOKENS) * spec.n_expert_used * spec.n_ff] * spec.n_layer
    llm.reset_ffn_stats()
    assert list(llm.ffn_stats().count) == [0] * spec.n_layer


def test_statistics_need_observe_ffn(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    with pytest.raises(RuntimeError, match="observe_ffn=True"):
        llm.ffn_stats()
    with pytest.raises(ValueError, match="kind must be one of"):
        tiny_llm("llama", observe_ffn=True).ffn_stats("gate")


def test_observing_does_not_change_the_logits(tiny_llm: Any) -> None:
    plain = run(tiny_llm("llama", activations="*:mish@0.1"))
    observed = run(tiny_llm("llama", activations="*:mish@0.1", observe_ffn=True))
    assert np.array_equal(plain, observed)

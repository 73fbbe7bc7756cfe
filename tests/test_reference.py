"""The engine's logits under every activation, and under per-layer mixtures, match a numpy forward pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err

from llama_rewire.wiring import parse

# dense gated (llama), plain GELU (gpt2), fused gate_up (phi3), MoE (mixtral-style llama), MoE with a
# gated shared expert (qwen2moe), MoE with merged gate_up experts and a shared expert (hy_v3)
KINDS = ["llama", "gpt2", "phi3", "moe", "moe_shared", "moe_merged"]

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12, 33, 7]

ALL_ACTS = ["silu", "gelu", "gelu_erf", "gelu_quick", "relu", "relu2", "leaky_relu(0.05)", "elu(0.5)",
            "elu", "tanh", "sigmoid", "softplus(2.0)", "softplus", "mish", "hardswish", "hardsigmoid",
            "swish(1.5)", "swish", "identity"]

# llama.cpp's CPU gelu and gelu_quick read an fp16 lookup table: ~1e-3 relative on the activation
FP16_TABLE = {"gelu", "gelu_quick"}


def tolerance(spec: Any, table: list[Any]) -> float:
    """The tolerance for the activations a table really runs ('default' is the architecture's own)."""
    names = {spec.default_act if a.name == "default" else a.name for a in table}
    return 5e-3 if names & FP16_TABLE else 1e-4


def contrast(act: str) -> str:
    """An activation whose logits must clearly differ from act's."""
    return "silu" if act.startswith(("relu", "leaky", "elu", "identity", "hardswish", "softplus")) else "relu"


def reference(spec: Any, table: list[Any]) -> np.ndarray:
    return numpy_ref.forward(spec, TOKENS, [(a.name, a.param) for a in table])


def run(llm: Any) -> np.ndarray:
    return logits_of(llm, TOKENS)


@pytest.mark.parametrize("kind", KINDS)
def test_no_override_matches_reference(tiny: Any, tiny_llm: Any, kind: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind)
    err = rel_err(run(llm), numpy_ref.forward(spec, TOKENS))
    assert err < tolerance(spec, parse(None, spec.n_layer))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("act", ALL_ACTS)
def test_every_activation_matches_reference(tiny: Any, tiny_llm: Any, kind: str, act: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind)
    llm.set_activations({"*": act})
    got = run(llm)
    table = parse({"*": act}, spec.n_layer)
    tol = tolerance(spec, table)
    assert rel_err(got, reference(spec, table)) < tol
    # and it is not the reference of another activation
    other = parse({"*": contrast(act)}, spec.n_layer)
    assert rel_err(got, reference(spec, other)) > 20 * tol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "spec_text",
    ["0:relu, -1:mish", "0:gelu_erf, 1:leaky_relu(0.2)", "*:tanh, 1:default", "1:relu2, 0:swish(0.5)"],
)
def test_per_layer_mixtures_match_reference(tiny: Any, tiny_llm: Any, kind: str, spec_text: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind)
    llm.set_activations(spec_text)
    table = parse(spec_text, spec.n_layer)
    tol = tolerance(spec, table)
    got = run(llm)
    assert rel_err(got, reference(spec, table)) < tol
    # the same mixture shifted by one layer is a different model
    shifted = table[1:] + table[:1]
    if shifted != table:
        assert rel_err(got, reference(spec, shifted)) > 10 * tol


def test_own_activation_is_bit_identical(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    base = run(llm)
    llm.set_activations("*:silu")
    assert np.array_equal(run(llm), base)
    llm.set_activations("*:swish(1.0)")
    assert np.array_equal(run(llm), base)


def test_set_reset_set_between_decodes(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("llama")
    llm = tiny_llm("llama")
    base = run(llm)
    llm.set_activations("*:relu")
    relu = run(llm)
    llm.set_activations(None)
    assert np.array_equal(run(llm), base)
    llm.set_activations({"*": "relu"})
    assert np.array_equal(run(llm), relu)
    llm.set_activations({})
    assert np.array_equal(run(llm), base)
    assert rel_err(relu, reference(spec, parse("*:relu", spec.n_layer))) < 1e-4


def test_change_between_single_token_decodes(tiny: Any, tiny_llm: Any) -> None:
    """Graph reuse must not keep the old activation when only the table changes (same batch shape)."""
    _, spec = tiny("llama")
    llm = tiny_llm("llama")
    llm.eval(TOKENS[:4])
    llm.eval([TOKENS[4]])  # a one-token graph is built and may be reused below
    llm.set_activations("*:relu")
    llm.eval(TOKENS[:4])
    llm.eval([TOKENS[4]])
    ref = numpy_ref.forward(spec, TOKENS[:5], [("relu", None)] * spec.n_layer)
    assert rel_err(np.array(llm.scores[4], dtype=np.float64), ref[4]) < 1e-4


def test_batched_eval_equals_token_by_token(tiny_llm: Any) -> None:
    llm = tiny_llm("llama", activations="*:mish")
    whole = run(llm)
    llm.reset()
    for t in TOKENS:
        llm.eval([t])
    assert rel_err(np.array(llm.scores[: len(TOKENS)], dtype=np.float64), whole) < 1e-5


@pytest.mark.parametrize(
    ("kind", "act", "gated", "fused", "dense", "moe"),
    [
        ("llama", "silu", True, False, True, False),
        ("gpt2", "gelu", False, False, True, False),
        ("phi3", "silu", True, True, True, False),
        ("moe", "silu", True, False, False, True),
        ("moe_shared", "silu", True, False, True, True),
        ("moe_merged", "silu", True, False, True, True),
    ],
)
def test_describe_ffn(tiny_llm: Any, kind: str, act: str, gated: bool, fused: bool, dense: bool,
                      moe: bool) -> None:
    rows = tiny_llm(kind).describe_ffn()
    assert rows == [{"layer": il, "act": act, "gated": gated, "fused": fused, "clamped": False,
                     "dense": dense, "moe": moe} for il in range(len(rows))]

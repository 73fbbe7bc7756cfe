"""A tiny post-norm Gemma-3 model: llama.cpp's logits match the numpy reference.

The model (tiny_models.write_gemma3) has 4 layers: 0 and 2 use a sliding window of 5 positions and the
local RoPE base, 1 and 3 attend to everything with the global base. The 12-token prompt is longer
than the window, so the window masking is exercised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err

from llama_rewire.wiring import parse

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12, 33, 7]

# gemma3's own activation is gelu (tanh), which llama.cpp's CPU reads from an fp16 table (~1e-3 relative)
TOL_GELU, TOL = 5e-3, 1e-4


def test_model_has_both_kinds_of_layer_and_a_tied_output(tiny: Any) -> None:
    _, spec = tiny("gemma3")
    assert spec.swa_layers == [True, False, True, False]
    assert spec.n_swa < len(TOKENS)
    assert spec.rope_freq_base_swa != spec.rope_freq_base
    assert "output.weight" not in spec.tensors  # llama.cpp and the reference use token_embd


def test_no_override_matches_reference(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("gemma3")
    assert rel_err(logits_of(tiny_llm("gemma3"), TOKENS), numpy_ref.forward(spec, TOKENS)) < TOL_GELU


@pytest.mark.parametrize(("act", "other"), [("relu", "silu"), ("silu", "relu"), ("tanh", "relu"),
                                            ("leaky_relu(0.05)", "silu"), ("gelu_erf", "relu")])
def test_overridden_activation_matches_reference(tiny: Any, tiny_llm: Any, act: str, other: str) -> None:
    _, spec = tiny("gemma3")
    got = logits_of(tiny_llm("gemma3", activations=f"*:{act}"), TOKENS)
    table = [(a.name, a.param) for a in parse(f"*:{act}", spec.n_layer)]
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, table)) < TOL
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, [(other, None)] * spec.n_layer)) > 100 * TOL


def test_per_layer_mixture_matches_reference(tiny: Any, tiny_llm: Any) -> None:
    _, spec = tiny("gemma3")
    table: list[numpy_ref.ActEntry] = [("relu", None), ("mish", None), ("tanh", None), ("silu", None)]
    got = logits_of(tiny_llm("gemma3", activations="0:relu, 1:mish, 2:tanh, 3:silu"), TOKENS)
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, table)) < TOL
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, table[1:] + table[:1])) > 100 * TOL


def test_token_by_token_matches_reference(tiny: Any, tiny_llm: Any) -> None:
    """Single-token decodes go through the sliding-window KV cache one position at a time."""
    _, spec = tiny("gemma3")
    llm = tiny_llm("gemma3", activations="*:relu")
    for t in TOKENS:
        llm.eval([t])
    got = np.array(llm.scores[: len(TOKENS)], dtype=np.float64)
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, [("relu", None)] * spec.n_layer)) < TOL


@pytest.mark.parametrize(
    "change",
    [
        {"n_swa": 4}, {"n_swa": 6}, {"n_swa": 1000},              # the window: size and existence
        {"swa_layers": [False, True, False, True]},               # which layers slide
        {"rope_freq_base_swa": 1_000_000.0},                      # the local RoPE base
        {"rope_freq_base": 10_000.0},                             # the global RoPE base
        {"post_norm": False},                                     # the post-norms
        {"embd_scale": 1.0},                                      # the sqrt(n_embd) embedding scale
        {"qk_norm": False},                                       # the Q/K norms
    ],
)
def test_every_gemma3_detail_matters(tiny: Any, tiny_llm: Any, change: dict[str, Any]) -> None:
    """The engine is far from a reference that gets any one of the details wrong."""
    _, spec = tiny("gemma3")
    relu = [("relu", None)] * spec.n_layer
    got = logits_of(tiny_llm("gemma3", activations="*:relu"), TOKENS)
    assert rel_err(got, numpy_ref.forward(spec, TOKENS, relu)) < TOL
    wrong = dataclasses.replace(spec, **change)
    assert rel_err(got, numpy_ref.forward(wrong, TOKENS, relu)) > 100 * TOL


def test_describe_ffn(tiny_llm: Any) -> None:
    rows = tiny_llm("gemma3").describe_ffn()
    assert rows == [{"layer": il, "act": "gelu", "gated": True, "fused": False, "clamped": False,
                     "dense": True, "moe": False} for il in range(4)]

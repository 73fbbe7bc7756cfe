"""The numpy reference's wiring knobs (numpy_ref.WIRING_KEYS) do what they say; no llama.cpp needed.

Where a knob has an equivalent change of the weights (a scale folded into a projection or a post-norm,
a head's columns of attn_output set to 0, masked experts deleted), the two must agree.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import numpy_ref
import pytest

KINDS = ["llama", "gpt2", "phi3", "moe", "moe_shared", "moe_merged", "gemma3"]
MOE_KINDS = ["moe", "moe_shared", "moe_merged"]

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64, 250, 12, 33, 7]


def ref(spec: Any, wiring: list[dict[str, Any]] | None = None, **kwargs: Any) -> np.ndarray:
    return numpy_ref.forward(spec, TOKENS, wiring=wiring, **kwargs)


def every(spec: Any, **knobs: Any) -> list[dict[str, Any]]:
    """The same knobs on every layer."""
    return [dict(knobs) for _ in range(spec.n_layer)]


def only(spec: Any, il: int, **knobs: Any) -> list[dict[str, Any]]:
    """The knobs on layer il, nothing elsewhere."""
    return [dict(knobs) if i == il else {} for i in range(spec.n_layer)]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-10, atol=1e-10))


def far(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > 1e-3


def spec_of(tiny: Any, kind: str) -> Any:
    return copy.deepcopy(tiny(kind)[1])  # tests change weights: never the session's spec


# ---------------------------------------------------------------- skips and scales

@pytest.mark.parametrize("kind", KINDS)
def test_skipping_everything_leaves_the_embeddings(tiny: Any, kind: str) -> None:
    """skip_attn + skip_ffn everywhere: logits = output(output_norm(embd_scale * token_embd[t] (+ pos)))."""
    spec = spec_of(tiny, kind)
    t = spec.tensors
    x = t["token_embd.weight"].astype(np.float64)[TOKENS] * spec.embd_scale
    if "position_embd.weight" in t:
        x = x + t["position_embd.weight"][: len(TOKENS)]
    if spec.norm == "rms":  # x / sqrt(mean(x^2) + eps) * w
        x = x / np.sqrt((x**2).mean(-1, keepdims=True) + spec.norm_eps) * t["output_norm.weight"]
    else:  # (x - mean) / sqrt(var + eps) * w + b
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + spec.norm_eps)
        x = x * t["output_norm.weight"] + t["output_norm.bias"]
    expected = x @ t.get("output.weight", t["token_embd.weight"]).T.astype(np.float64)
    assert close(ref(spec, every(spec, skip_attn=True, skip_ffn=True)), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_unit_scales_and_empty_wiring_are_no_wiring(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    base = ref(spec)
    assert np.array_equal(ref(spec, every(spec)), base)
    assert np.array_equal(ref(spec, every(spec, attn_scale=1.0, ffn_scale=1.0)), base)
    assert np.array_equal(ref(spec, every(spec, skip_attn=False, skip_ffn=False, heads_off=[])), base)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("il", [0, -1])
def test_zero_scale_is_skip(tiny: Any, kind: str, il: int) -> None:
    spec = spec_of(tiny, kind)
    il %= spec.n_layer
    base = ref(spec)
    for part in ("attn", "ffn"):
        skipped = ref(spec, only(spec, il, **{f"skip_{part}": True}))
        assert far(skipped, base)
        assert np.array_equal(ref(spec, only(spec, il, **{f"{part}_scale": 0.0})), skipped)


@pytest.mark.parametrize("kind", KINDS)
def test_attn_scale_is_the_scale_of_the_residual_contribution(tiny: Any, kind: str) -> None:
    """s times the contribution = s times the post-norm weight (Gemma-3), else s times attn_output."""
    spec, s, il = spec_of(tiny, kind), 0.37, 1
    got = ref(spec, only(spec, il, attn_scale=s))
    assert far(got, ref(spec))
    layer = spec.layers[il]
    for name in (["post_attention_norm.weight"] if spec.post_norm
                 else ["attn_output.weight", "attn_output.bias"]):
        if name in layer:
            layer[name] = layer[name].astype(np.float64) * s  # exact: no float32 rounding
    assert close(got, ref(spec))


@pytest.mark.parametrize("kind", KINDS)
def test_ffn_scale_is_the_scale_of_the_residual_contribution(tiny: Any, kind: str) -> None:
    """s times the whole FFN contribution (routed + shared for MoE), after the post-norm (Gemma-3)."""
    spec, s, il = spec_of(tiny, kind), -1.7, 0
    got = ref(spec, only(spec, il, ffn_scale=s))
    assert far(got, ref(spec))
    layer = spec.layers[il]
    names = (["post_ffw_norm.weight"] if spec.post_norm
             else ["ffn_down.weight", "ffn_down.bias", "ffn_down_exps.weight", "ffn_down_shexp.weight"])
    for name in names:
        if name in layer:
            layer[name] = layer[name].astype(np.float64) * s  # exact: no float32 rounding
    assert close(got, ref(spec))


# ---------------------------------------------------------------- heads

@pytest.mark.parametrize("kind", [k for k in KINDS if k != "gpt2"])  # gpt2's attn_output has a bias
def test_all_heads_off_is_skip_attn(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    heads = list(range(spec.n_head))
    assert close(ref(spec, every(spec, heads_off=heads)), ref(spec, every(spec, skip_attn=True)))


@pytest.mark.parametrize("kind", KINDS)
def test_head_off_is_its_attn_output_columns_at_zero(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    hd = spec.head_dim
    got = ref(spec, only(spec, 1, heads_off=[0, 3]))
    assert far(got, ref(spec))
    w = spec.layers[1]["attn_output.weight"]
    w[:, 0:hd] = 0.0
    w[:, 3 * hd: 4 * hd] = 0.0
    assert close(got, ref(spec))


# ---------------------------------------------------------------- experts

def drop_experts(spec: Any, il: int, keep: list[int]) -> Any:
    """A copy of spec whose layer il only has the experts in keep (router rows and expert tensors)."""
    spec = copy.deepcopy(spec)
    for name, w in spec.layers[il].items():
        if name == "ffn_gate_inp.weight" or name.endswith("_exps.weight"):
            spec.layers[il][name] = w[keep]
    spec.n_expert = len(keep)
    return spec


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_experts_off_is_deleting_those_experts(tiny: Any, kind: str) -> None:
    """The softmax renormalises over the experts left on, whether or not the arch renormalises top-k."""
    spec = spec_of(tiny, kind)
    assert spec.n_expert == 4 and spec.n_expert_used == 2
    for off in ([0], [2], [1, 3]):
        keep = [e for e in range(spec.n_expert) if e not in off]
        wiring = every(spec, experts_off=off)
        got = ref(spec, wiring)
        assert far(got, ref(spec))
        dropped = spec
        for il in range(spec.n_layer):
            dropped = drop_experts(dropped, il, keep)
        assert close(got, ref(dropped))
        margin = numpy_ref.router_margin(spec, TOKENS, wiring=wiring)
        if len(keep) > spec.n_expert_used:
            assert margin == pytest.approx(numpy_ref.router_margin(dropped, TOKENS), abs=1e-12)
        else:
            assert margin == math.inf


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_experts_off_of_chosen_and_unchosen_experts(tiny: Any, kind: str) -> None:
    """One token, last layer: masking an expert it does not choose changes nothing when the arch
    renormalises the top-k weights (the common factor cancels), and something when it does not
    (qwen2moe: the weights are the softmax over the experts left on); masking a chosen one changes it."""
    spec = spec_of(tiny, kind)
    tokens, il = TOKENS[:1], spec.n_layer - 1
    probs = numpy_ref.router_probs(spec, tokens)[il][0]
    chosen = np.argsort(-probs)[: spec.n_expert_used]
    unchosen = [e for e in range(spec.n_expert) if e not in chosen]
    base = numpy_ref.forward(spec, tokens)
    for e in unchosen:
        got = numpy_ref.forward(spec, tokens, wiring=only(spec, il, experts_off=[e]))
        assert close(got, base) == spec.expert_weights_norm
    for e in chosen:
        assert far(numpy_ref.forward(spec, tokens, wiring=only(spec, il, experts_off=[int(e)])), base)
    assert far(numpy_ref.forward(spec, tokens, wiring=only(spec, il, experts_off=chosen.tolist())), base)


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_experts_used(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    base = ref(spec)
    assert np.array_equal(ref(spec, every(spec, experts_used=spec.n_expert_used)), base)
    assert far(ref(spec, every(spec, experts_used=1)), base)
    assert numpy_ref.router_margin(spec, TOKENS, wiring=every(spec, experts_used=spec.n_expert)) == math.inf
    # every expert: the same as a model that uses them all
    got = ref(spec, every(spec, experts_used=spec.n_expert, experts_off=[]))
    assert far(got, base)
    assert close(got, ref(replace(spec, n_expert_used=spec.n_expert)))
    if spec.expert_weights_norm:  # the n_expert softmax weights already sum to 1
        assert close(got, ref(replace(spec, n_expert_used=spec.n_expert, expert_weights_norm=False)))
    assert close(ref(spec, every(spec, experts_used=1)), ref(replace(spec, n_expert_used=1)))


def test_router_margin_follows_k(tiny: Any) -> None:
    spec = spec_of(tiny, "moe")
    probs = numpy_ref.router_probs(spec, TOKENS, wiring=every(spec, experts_used=1))
    p = -np.sort(-np.stack(probs), axis=-1)
    assert numpy_ref.router_margin(spec, TOKENS, wiring=every(spec, experts_used=1)) == pytest.approx(
        float((p[..., 0] - p[..., 1]).min()))
    assert numpy_ref.router_margin(spec, TOKENS, wiring=every(spec, skip_ffn=True)) == math.inf
    assert numpy_ref.router_margin(tiny("llama")[1], TOKENS) == math.inf


# ---------------------------------------------------------------- activations

def silu(x: np.ndarray) -> np.ndarray:
    """x / (1 + exp(-x)), written differently from numpy_ref's silu."""
    return x / (1.0 + np.exp(-x))


@pytest.mark.parametrize("kind", KINDS)
def test_callable_act_is_the_named_one(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    named = ref(spec, every(spec, act="silu"))
    assert close(ref(spec, every(spec, act=silu)), named)
    assert close(numpy_ref.forward(spec, TOKENS, [silu] * spec.n_layer), named)
    assert far(ref(spec, every(spec, act=lambda x: np.maximum(x, 0.0))), named)


@pytest.mark.parametrize("kind", KINDS)
def test_acts_is_wiring_act(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    acts = [("relu", None), ("leaky_relu", 0.2)] + [("tanh", None)] * (spec.n_layer - 2)
    assert np.array_equal(numpy_ref.forward(spec, TOKENS, acts), ref(spec, [{"act": a} for a in acts]))
    with pytest.raises(ValueError, match="both"):
        numpy_ref.forward(spec, TOKENS, acts, wiring=every(spec, act="relu"))


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in MOE_KINDS])
def test_dense_scope(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    relu = ref(spec, every(spec, act="relu"))
    assert np.array_equal(ref(spec, every(spec, **{"act.dense": "relu"})), relu)
    assert np.array_equal(ref(spec, every(spec, act="tanh", **{"act.dense": "relu"})), relu)
    # the MoE scopes do not exist in a dense layer
    assert np.array_equal(ref(spec, every(spec, **{"act.experts": "relu", "act.shared": "relu"})), ref(spec))


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_moe_scopes(tiny: Any, kind: str) -> None:
    spec = spec_of(tiny, kind)
    base, relu = ref(spec), ref(spec, every(spec, act="relu"))
    assert np.array_equal(ref(spec, every(spec, **{"act.experts": "relu", "act.shared": "relu"})), relu)
    assert np.array_equal(ref(spec, every(spec, **{"act.dense": "relu"})), base)  # no dense FFN here
    experts = ref(spec, every(spec, **{"act.experts": "relu"}))
    assert far(experts, base)
    assert np.array_equal(ref(spec, every(spec, act="relu", **{"act.shared": None})), experts)
    if spec.n_ff_shexp:
        shared = ref(spec, every(spec, **{"act.shared": "relu"}))
        assert far(shared, base) and far(shared, relu) and far(shared, experts)
        assert np.array_equal(ref(spec, every(spec, act="relu", **{"act.experts": "default"})), shared)


def test_dense_ffn_tensors_follow_the_wiring(tiny: Any) -> None:
    spec = spec_of(tiny, "llama")
    acts = [("relu", None)] * spec.n_layer
    by_acts = numpy_ref.dense_ffn_tensors(spec, TOKENS, acts)
    by_wiring = numpy_ref.dense_ffn_tensors(spec, TOKENS, wiring=every(spec, **{"act.dense": "relu"}))
    for (a, d), (b, e) in zip(by_acts, by_wiring):
        assert np.array_equal(a, b) and np.array_equal(d, e)


# ---------------------------------------------------------------- bad wiring

@pytest.mark.parametrize(
    ("knobs", "error"),
    [
        ({"skip_mlp": True}, KeyError),
        ({"heads_off": [4]}, ValueError),
        ({"heads_off": [-1]}, ValueError),
        ({"experts_off": [4]}, ValueError),
        ({"experts_used": 0}, ValueError),
        ({"experts_used": 5}, ValueError),
        ({"experts_used": 3, "experts_off": [0, 1]}, ValueError),
    ],
)
def test_bad_wiring_raises(tiny: Any, knobs: dict[str, Any], error: type[Exception]) -> None:
    spec = spec_of(tiny, "moe")
    with pytest.raises(error):
        ref(spec, only(spec, 0, **knobs))


def test_wiring_needs_one_entry_per_layer(tiny: Any) -> None:
    spec = spec_of(tiny, "llama")
    with pytest.raises(ValueError, match="layers"):
        ref(spec, [{}])

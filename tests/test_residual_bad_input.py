"""Bad input to the residual-stream API is a ValueError or TypeError that says what is wrong, before
llama.cpp sees it; the model stays usable and unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from checks import logits_of

from llama_rewire.residual import Ablate, Patch, Steer

TOKENS = [1, 17, 200, 45, 3, 99]


@pytest.fixture()
def llm(tiny_llm: Any) -> Any:
    return tiny_llm("llama")


def v(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


BAD_STEERING = [
    (lambda m: m.set_steering(v(m.n_embd() + 1), layers=[0]), ValueError, "64 values"),
    (lambda m: m.set_steering(np.full(m.n_embd(), np.nan), layers=[0]), ValueError, "NaN"),
    (lambda m: m.set_steering(np.full(m.n_embd(), np.inf), layers=[0]), ValueError, "NaN or infinite"),
    (lambda m: m.set_steering(v(m.n_embd()), layers=[7]), ValueError, "out of range"),
    (lambda m: m.set_steering(v(m.n_embd()), layers=[0, 0]), ValueError, "twice"),
    (lambda m: m.set_steering(v(m.n_embd())), ValueError, "layers="),
    (lambda m: m.set_steering(v(m.n_embd()), alpha=float("nan"), layers=[0]), ValueError, "alpha"),
    (lambda m: m.set_steering(v(m.n_embd()), alpha="big", layers=[0]), TypeError, "alpha"),
    (lambda m: m.set_steering(v(m.n_embd()), layers=[0], tokens="most"), ValueError, "tokens"),
    (lambda m: m.set_steering(v(m.n_embd()), layers=[0], tokens=(5, 2)), ValueError, "tokens"),
    (lambda m: m.set_steering(v(m.n_embd()), layers=[0], point="resid_pre"), ValueError, "unknown point"),
    (lambda m: m.set_steering({0: v(3)}), ValueError, "64 values"),
    (lambda m: m.set_steering({"a": v(64)}), ValueError, "not an integer"),
    (lambda m: m.set_steering("/nonexistent/vec.gguf"), ValueError, "cannot be read"),
    (lambda m: m.set_ablation(np.zeros(m.n_embd())), ValueError, "zero or linearly dependent"),
    (
        lambda m: m.set_ablation(np.stack([v(m.n_embd()), 2 * v(m.n_embd())])),
        ValueError,
        "linearly dependent",
    ),
    (lambda m: m.set_patch({0: np.zeros((2, m.n_embd()))}, positions=[1, 1]), ValueError, "twice"),
    (lambda m: m.set_patch({0: np.zeros((2, m.n_embd()))}, positions=[1]), ValueError, "positions but"),
    (
        lambda m: m.set_patch({0: np.zeros((1, m.n_embd()))}, positions=[-1]),
        ValueError,
        "outside the context",
    ),
    (
        lambda m: m.set_patch({0: np.zeros((1, m.n_embd()))}, positions=[10_000]),
        ValueError,
        "outside the context",
    ),
    (lambda m: m.set_patch([np.zeros(3)]), TypeError, "dict"),
    (
        lambda m: m.set_edits([Steer(0, v(64)), Steer(0, v(64), tokens="prompt")]),
        ValueError,
        "different tokens",
    ),
    (
        lambda m: m.set_edits([Patch(0, (1,), np.zeros((1, 64))), Patch(0, (2,), np.zeros((1, 64)))]),
        ValueError,
        "two Patch",
    ),
    (lambda m: m.set_edits(Steer(0, v(64))), TypeError, "list"),
    (lambda m: m.set_edits(["steer"]), TypeError, "Steer, Ablate or Patch"),
    (lambda m: m.set_edits([Ablate(0, np.ones((65, 64)))]), ValueError, "directions in a space"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_STEERING)
def test_bad_edits_raise_and_change_nothing(llm: Any, call: Any, exc: type, match: str) -> None:
    llm.set_steering(v(llm.n_embd()), alpha=0.5, layers=[1])
    before, edits = logits_of(llm, TOKENS), llm.edits
    with pytest.raises(exc, match=match):
        call(llm)
    assert llm.edits == edits
    assert np.array_equal(logits_of(llm, TOKENS), before)


BAD_READS = [
    (lambda m: m.capture(TOKENS, taps="resid_pre"), ValueError, "unknown point"),
    (lambda m: m.capture(TOKENS, taps=[]), ValueError, "no taps"),
    (lambda m: m.capture(TOKENS, taps=["resid_post", "resid_post"]), ValueError, "twice"),
    (lambda m: m.capture(TOKENS, taps=3), TypeError, "taps"),
    (lambda m: m.capture(TOKENS, layers=[3]), ValueError, "out of range"),
    (lambda m: m.capture(TOKENS, layers="0-2"), TypeError, "layers"),
    (lambda m: m.capture([], taps="resid_post"), ValueError, "no tokens"),
    (lambda m: m.capture([1, 10**6]), ValueError, "outside the vocabulary"),
    (lambda m: m.capture([1, 2.5]), TypeError, "not an integer"),
    (lambda m: m.capture(b"bytes"), TypeError, "str or a sequence"),
    (lambda m: m.capture([1] * (m.n_ctx() + 1)), ValueError, "do not fit the context"),
    (lambda m: m.logit_lens(TOKENS, top_k=0), ValueError, "top_k"),
    (lambda m: m.logit_lens(TOKENS, top_k=True), TypeError, "top_k"),
    (lambda m: m.logit_lens(TOKENS, layers=[-9]), ValueError, "out of range"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_READS)
def test_bad_reads_raise(llm: Any, call: Any, exc: type, match: str) -> None:
    before = logits_of(llm, TOKENS)
    with pytest.raises(exc, match=match):
        call(llm)
    assert np.array_equal(logits_of(llm, TOKENS), before)


def test_points_a_layer_does_not_have(tiny_llm: Any) -> None:
    moe = tiny_llm("moe_shared")
    with pytest.raises(ValueError, match="no ffn_act"):
        moe.capture(TOKENS, taps="ffn_act")
    with pytest.raises(ValueError, match="no ffn_out"):
        moe.set_steering(v(moe.n_embd()), layers=[0], point="ffn_out")
    moe.capture(TOKENS, taps=("resid_post", "attn_out"))  # those it has


def test_a_recurrent_model_has_no_lens(tiny_llm: Any) -> None:
    mamba = tiny_llm("mamba")
    with pytest.raises(ValueError, match="recurrent"):
        mamba.logit_lens(TOKENS, layers=[0])

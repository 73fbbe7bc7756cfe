"""The wiring end to end on the real models (SmolLM2-135M: llama arch, pre-norm; Gemma-3-270M: post-norms).

Each comparison is between two runs on the same machine and the same batch shapes, so exact equality
holds where the graphs compute the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama, _core

pytestmark = pytest.mark.real_model

PROMPT = "The capital of France is Paris, and the capital of Germany is"


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def real(request: pytest.FixtureRequest) -> Iterator[Llama]:
    from llama_rewire.models import fetch

    llm = Llama(str(fetch(request.param, progress=False)), n_ctx=256, n_threads=2, logits_all=True,
                verbose=False)
    yield llm
    llm.close()


def logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def native_identity(n: int) -> list[Any]:
    act = (0, 0.0, 0.0, [])
    return [((act, act, act), False, False, 1.0, 1.0, [], 0, []) for _ in range(n)]


def test_identity_knobs_are_bit_identical(real: Llama) -> None:
    tokens = real.tokenize(PROMPT.encode())
    real.set_wiring(None)
    base = logits(real, tokens)
    real.set_wiring("*:attn_scale=1, *:ffn_scale=1, *:skip=none, *:heads_off=[], *:default")
    assert real.wiring.is_identity()
    assert np.array_equal(logits(real, tokens), base)
    # a full table of identity entries, past the Python layer: the native side builds upstream's graph
    _core.rewire_wiring_set(real.ctx, native_identity(real.n_layer()))
    assert np.array_equal(logits(real, tokens), base)
    real.set_wiring(None)


def test_set_reset_set_gives_exactly_the_expected_logits(real: Llama) -> None:
    tokens = real.tokenize(PROMPT.encode())
    n = real.n_layer()
    q = n // 4
    skip = f"{n - 1 - q}-{n - 2}:skip=layer"
    real.set_wiring(None)
    base = logits(real, tokens)
    real.set_wiring(skip)
    skipped = logits(real, tokens)
    assert np.isfinite(skipped).all()
    assert np.abs(skipped - base).max() > 1.0  # a quarter of the layers gone changes the model
    real.set_wiring(None)
    assert np.array_equal(logits(real, tokens), base)
    real.set_wiring(skip)
    assert np.array_equal(logits(real, tokens), skipped)
    real.set_wiring(None)


@pytest.mark.parametrize("sublayer", ["attn", "ffn"])
def test_scale_zero_is_the_skip(real: Llama, sublayer: str) -> None:
    """s = 0 applies after Gemma's post-norms (before them it would vanish in the norm): a zero scale
    and a skip add the same nothing to the residual stream, to the last bit."""
    tokens = real.tokenize(PROMPT.encode())
    layers = "3-5"
    real.set_wiring(f"{layers}:{sublayer}_scale=0")
    scaled = logits(real, tokens)
    real.set_wiring(f"{layers}:skip={sublayer}")
    skipped = logits(real, tokens)
    real.set_wiring(None)
    base = logits(real, tokens)
    assert np.array_equal(scaled, skipped)
    assert np.abs(scaled - base).max() > 0.1


def test_heads_and_scales_change_the_model_smoothly(real: Llama) -> None:
    """A small scale change moves the logits a little, a large one more; one head off changes them."""
    tokens = real.tokenize(PROMPT.encode())
    real.set_wiring(None)
    base = logits(real, tokens)
    deltas = []
    for s in (0.98, 0.8):
        real.set_wiring(f"*:ffn_scale={s}")
        deltas.append(np.abs(logits(real, tokens) - base).max())
    real.set_wiring("2:heads_off=[0]")
    heads = np.abs(logits(real, tokens) - base).max()
    real.set_wiring(None)
    assert 0 < deltas[0] < deltas[1]
    assert heads > 0


def test_describe_layers_on_real_models(real: Llama) -> None:
    layers = real.describe_layers()
    assert len(layers) == real.n_layer()
    assert all(d["attn"] and d["attn_skippable"] and d["scopes"] == ["dense"] for d in layers)
    gemma = "gemma" in real.model_path.lower()
    assert all(d["attn_post_norm"] == gemma and d["ffn_post_norm"] == gemma for d in layers)
    assert layers[0]["n_head"] == (4 if gemma else 9)

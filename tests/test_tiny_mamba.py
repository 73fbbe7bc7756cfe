"""A tiny Mamba-1 model (tiny_models.write_mamba): llama.cpp loads and runs it, and the wiring
sees no attention and no FFN in any layer (the SSM mixer is neither)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llama_rewire import Llama


def test_loads_and_gives_finite_logits(tiny: Any) -> None:
    path, spec = tiny("mamba")
    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval([1, 5, 9])
        scores = np.asarray(llm.scores[:3])
        assert scores.shape == (3, spec.n_vocab)
        assert np.isfinite(scores).all()
        assert np.abs(scores).max() > 0
    finally:
        llm.close()


def test_no_layer_has_attention_or_a_reachable_ffn(tiny: Any) -> None:
    path, spec = tiny("mamba")
    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    try:
        layers = llm.describe_layers()
        assert len(layers) == spec.n_layer
        for layer in layers:
            assert layer["attn"] is False, layer
            assert layer["scopes"] == [], layer
    finally:
        llm.close()

"""End to end on real models (SmolLM2-135M, llama arch, SwiGLU; Gemma-3-270M, gemma3 arch, GeGLU)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from references import reference

from llama_rewire import Llama

pytestmark = pytest.mark.real_model

OWN = {"smollm2": "silu", "gemma3-270m": "gelu"}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def real(request: pytest.FixtureRequest) -> Iterator[tuple[str, Llama]]:
    from llama_rewire.models import fetch

    name = request.param
    llm = Llama(str(fetch(name, progress=False)), n_ctx=512, n_threads=2, seed=0, verbose=False)
    yield name, llm
    llm.close()


def last_logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.last_logits)


def test_describe_ffn_reports_the_architecture_activation(real: tuple[str, Llama]) -> None:
    name, llm = real
    layers = llm.describe_ffn()
    assert len(layers) == llm.n_layer() > 10
    assert {row["act"] for row in layers} == {OWN[name]}
    assert all(row["gated"] and row["dense"] and not row["moe"] for row in layers)


def test_greedy_matches_llama_cpp_python(real: tuple[str, Llama]) -> None:
    name, llm = real
    # llama-cpp-python's greedy run on the same CPU kernel path (references.py)
    ref = reference("llama_cpp_python_reference.json")["models"][name]
    assert llm.n_vocab() == ref["n_vocab"]
    for case in ref["cases"]:
        tokens = llm.tokenize(case["prompt"].encode(), add_bos=True, special=False)
        assert tokens == case["prompt_tokens"]
        logits = last_logits(llm, tokens)
        for token, value in case["last_logits_top5"]:
            assert abs(logits[token] - value) < 2e-3
        top = [t for t, _ in case["last_logits_top5"]]
        assert list(np.argsort(-logits)[:5]) == top
        out = llm.create_completion(case["prompt"], max_tokens=len(case["greedy_tokens"]), temperature=0.0)
        assert out["choices"][0]["text"] == case["text"]
        gen = llm.generate(tokens, temperature=0.0)
        got = [next(gen) for _ in case["greedy_tokens"]]
        gen.close()
        assert got == case["greedy_tokens"]


def test_own_activation_is_bit_identical_and_others_change_logits(real: tuple[str, Llama]) -> None:
    name, llm = real
    tokens = llm.tokenize(PROMPT.encode())
    base = last_logits(llm, tokens)
    llm.set_activations({"*": OWN[name]})
    assert np.array_equal(last_logits(llm, tokens), base)
    llm.set_activations("*:relu")
    relu = last_logits(llm, tokens)
    assert np.abs(relu - base).max() > 1.0
    llm.set_activations("0:relu")  # one layer is enough to move the logits
    one = last_logits(llm, tokens)
    assert np.abs(one - base).max() > 0
    assert not np.array_equal(one, relu)
    llm.set_activations(None)


def test_set_reset_set_between_decodes_is_exact(real: tuple[str, Llama]) -> None:
    _, llm = real
    tokens = llm.tokenize(PROMPT.encode())
    base = last_logits(llm, tokens)
    llm.set_activations("*:mish")
    mish = last_logits(llm, tokens)
    for spec, expected in [(None, base), ("*:mish", mish), ({}, base), ({"*": "mish"}, mish), (None, base)]:
        llm.set_activations(spec)
        assert np.array_equal(last_logits(llm, tokens), expected)


def test_decode_after_rewire_continues_from_a_clean_cache(real: tuple[str, Llama]) -> None:
    """Keys and values computed under the old wiring are not reused by the next completion."""
    name, llm = real
    plain = llm.create_completion(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    # relu (relu2 overflows SmolLM2's residual stream: its logits are NaN, an error now)
    llm.set_activations("*:relu")
    rewired = llm.create_completion(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    with Llama(llm.model_path, n_ctx=512, n_threads=2, verbose=False, activations="*:relu") as fresh:
        assert fresh.create_completion(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"] == rewired
    llm.set_activations(None)
    assert llm.create_completion(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"] == plain
    assert rewired != plain, name


def test_seeded_sampling_is_reproducible(real: tuple[str, Llama]) -> None:
    _, llm = real
    kwargs: dict[str, Any] = {"max_tokens": 12, "temperature": 0.9, "seed": 1234}
    a = llm.create_completion(PROMPT, **kwargs)["choices"][0]["text"]
    b = llm.create_completion(PROMPT, **kwargs)["choices"][0]["text"]
    assert a == b

"""Parity with llama-cpp-python 0.3.36: what its high-level API returned for the same calls, recorded by
scripts/record_llama_cpp_python_api.py into tests/data/llama_cpp_python_api_reference.json.

Tokenizing runs no kernel: the committed recording holds everywhere. Everything a model computes is
compared with llama-cpp-python on the same CPU kernel path (see references.py): tests/data's recording
where this machine's path is the one that made it, this machine's own recording elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from references import committed, reference

from llama_rewire import LLAMA_POOLING_TYPE_MEAN, Llama

NAME = "llama_cpp_python_api_reference.json"
TOKENIZE: dict[str, Any] = committed(NAME)["tokenize"]
VOCABS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"
PROMPT = "The capital of France is"
KW: dict[str, Any] = {"n_ctx": 512, "n_threads": 2, "verbose": False}


@pytest.mark.parametrize("name", sorted(TOKENIZE))
def test_tokenize_and_detokenize_like_llama_cpp_python(name: str) -> None:
    llm = Llama(str(VOCABS / f"ggml-vocab-{name}.gguf"), vocab_only=True, verbose=False)
    for case in TOKENIZE[name]:
        ids = llm.tokenize(case["text"].encode(), add_bos=case["add_bos"], special=case["special"])
        assert ids == case["ids"], case
        assert llm.detokenize(ids).decode("utf-8", errors="replace") == case["detok"], case
        assert llm.detokenize(ids, special=True).decode("utf-8", errors="replace") == case["detok_special"]


@pytest.fixture(scope="module")
def smol(smollm2_path: Path) -> Iterator[Llama]:
    llm = Llama(str(smollm2_path), **KW)
    yield llm
    llm.close()


@pytest.mark.real_model
def test_greedy_chat_like_llama_cpp_python(smol: Llama) -> None:
    for case in reference(NAME)["chat"]:
        out = smol.create_chat_completion(case["messages"], max_tokens=24, temperature=0.0)
        assert out["choices"][0]["message"]["content"] == case["content"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_seeded_sampling_like_llama_cpp_python(name: str) -> None:
    """Same sampler chain, same seed: the same draws, token for token."""
    from llama_rewire.models import fetch

    with Llama(str(fetch(name, progress=False)), **KW) as llm:
        for case in reference(NAME)["seeded"][name]:
            out = llm(PROMPT, max_tokens=24, temperature=0.8, seed=case["seed"])
            assert out["choices"][0]["text"] == case["text"], case["seed"]


@pytest.mark.real_model
def test_logprobs_like_llama_cpp_python(smollm2_path: Path) -> None:
    ref = reference(NAME)["logprobs"]
    with Llama(str(smollm2_path), logits_all=True, **KW) as llm:
        out = llm(PROMPT, max_tokens=6, temperature=0.0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    assert out["choices"][0]["text"] == ref["text"]
    assert lp["tokens"] == ref["tokens"] and lp["text_offset"] == ref["text_offset"]
    assert np.allclose(lp["token_logprobs"], ref["token_logprobs"], atol=2e-3)
    assert [sorted(t) for t in lp["top_logprobs"]] == ref["top_keys"]


@pytest.mark.real_model
def test_mean_pooled_embeddings_like_llama_cpp_python(smollm2_path: Path) -> None:
    ref = reference(NAME)["embeddings"]
    with Llama(str(smollm2_path), embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, **KW) as llm:
        vectors = llm.embed(ref["texts"])
    for v, head, norm in zip(vectors, ref["head"], ref["norm"]):
        assert np.allclose(v[:8], head, atol=2e-3)
        assert float(np.linalg.norm(v)) == pytest.approx(norm, rel=1e-3)

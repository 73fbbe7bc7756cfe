"""Parity with llama-cpp-python 0.3.36: what its high-level API returned for the same calls, recorded by
scripts/record_llama_cpp_python_api.py into tests/data/llama_cpp_python_api_reference.json.

Tokenizing runs no kernel: the committed recording holds everywhere. Everything a model computes is
compared with llama-cpp-python on the same CPU kernel path (see references.py): tests/data's recording
where this machine's path is the one that made it, this machine's own recording elsewhere."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
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


# -- penalties: over the generated tokens only ------------------------------------------------------------

PENALTIES = [{"repeat_penalty": 1.3}, {"frequency_penalty": 0.9, "presence_penalty": 0.6},
             {"repeat_penalty": 1.3, "frequency_penalty": 0.3, "presence_penalty": 0.2}]


def penalized_greedy(llm: Llama, prompt: list[int], n: int, last_n: int, repeat_penalty: float = 1.0,
                     frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                     prompt_in_window: bool = False) -> list[int]:
    """llama-cpp-python's greedy loop with penalties, written out: its sampler accepts each sampled token
    and nothing else, so the window holds the last ``last_n`` generated tokens (``prompt_in_window``: the
    prompt's tokens before them, which llama-cpp-python does not do); llama.cpp's penalties (float32): a
    token in the window has its logit divided by the repeat penalty (multiplied when not positive), then
    ``count * frequency + presence`` subtracted."""
    llm.reset()
    llm.eval(prompt)
    rp, fp, pp = np.float32(repeat_penalty), np.float32(frequency_penalty), np.float32(presence_penalty)
    seen = list(prompt) if prompt_in_window else []
    generated: list[int] = []
    while len(generated) < n:
        logits = llm.last_logits.astype(np.float32)
        for tok, count in Counter((seen + generated)[-last_n:]).items():
            x = logits[tok] * rp if logits[tok] <= 0 else logits[tok] / rp
            logits[tok] = x - (np.float32(count) * fp + np.float32(1.0) * pp)
        tok = int(np.argmax(logits))
        if tok == llm.token_eos():
            break
        generated.append(tok)
        llm.eval([tok])
    return generated


@pytest.mark.parametrize("penalties", PENALTIES, ids=[",".join(p) for p in PENALTIES])
def test_penalties_see_generated_tokens_only_like_llama_cpp_python(
        tiny_llm: Callable[..., Llama], penalties: dict[str, float]) -> None:
    llm = tiny_llm("llama", n_ctx=128, logits_all=False, last_n_tokens_size=6, n_parallel=2)
    ref = tiny_llm("llama", n_ctx=128, logits_all=False)
    prompt = llm.tokenize(b"hello")
    want = penalized_greedy(ref, prompt, 24, 6, **penalties)
    assert len(set(want)) < len(want)  # repeats happen: the window's content matters
    assert want != penalized_greedy(ref, prompt, 24, 6, **penalties, prompt_in_window=True)
    got = list(itertools.islice(llm.generate(prompt, temp=0.0, **penalties), 24))
    assert got[: len(want)] == want
    text = ref.detokenize(want).decode("utf-8", errors="replace")
    out = llm.create_completion(prompt, max_tokens=24, temperature=0.0, **penalties)
    assert out["choices"][0]["text"] == text
    streamed = "".join(c["choices"][0]["text"] for c in llm.create_completion(
        prompt, max_tokens=24, temperature=0.0, stream=True, **penalties))
    assert streamed == text
    slot = llm.slots.create_completion(prompt, max_tokens=24, temperature=0.0, **penalties)
    assert slot["choices"][0]["text"] == text  # the parallel slots' samplers likewise

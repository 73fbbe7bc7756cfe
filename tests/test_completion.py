"""create_completion on a tiny model: greedy, seeded sampling, stop strings, streaming, UTF-8."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from checks import greedy_cases

from llama_rewire._completion import stop_holdback, valid_utf8_prefix

PROMPT = "hello world"


def text_of(out: Any) -> str:
    return str(out["choices"][0]["text"])


def test_greedy_is_the_argmax_chain(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    out = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)
    assert out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 8
    assert out["choices"][0]["finish_reason"] == "length"
    # replay by hand: argmax of the last logits, token after token
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    assert out["usage"]["prompt_tokens"] == len(tokens)
    llm.reset()
    llm.eval(tokens)
    chosen = []
    for _ in range(8):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        chosen.append(t)
        llm.eval([t])
    assert text_of(out) == llm.detokenize(chosen, prev_tokens=tokens).decode("utf-8", errors="replace")


def test_greedy_choice_is_the_first_largest_logit(tiny_llm: Any) -> None:
    from llama_rewire import _core
    from llama_rewire.engine import SamplingParams

    for kind in ("llama", "gpt2"):  # vocabularies of 260 and 258: not whole blocks of 64
        llm = tiny_llm(kind)
        sampler = _core.Sampler(llm.model, SamplingParams(temperature=0.0))
        for logits in greedy_cases(llm.n_vocab(), seed=len(kind)):
            assert sampler.sample_logits(logits) == int(np.argmax(logits))


def test_seeded_sampling_is_reproducible(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    a = text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                                      min_p=0.0, seed=42))
    b = text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                                      min_p=0.0, seed=42))
    others = {text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                                            min_p=0.0, seed=s)) for s in range(1, 6)}
    assert a == b
    assert len(others | {a}) > 1


def test_streaming_concatenates_to_the_plain_text(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    whole = llm.create_completion(PROMPT, max_tokens=16, temperature=0.0)
    chunks = list(llm.create_completion(PROMPT, max_tokens=16, temperature=0.0, stream=True))
    assert "".join(text_of(c) for c in chunks) == text_of(whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stop_strings_cut_the_text_and_are_held_back_while_streaming(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    full = text_of(llm.create_completion(PROMPT, max_tokens=24, temperature=0.0))
    assert len(full) > 6
    stop = full[3:6]
    out = llm.create_completion(PROMPT, max_tokens=24, temperature=0.0, stop=[stop, "\x00never"])
    cut = full.index(stop)
    assert text_of(out) == full[:cut]
    assert out["choices"][0]["finish_reason"] == "stop"
    streamed = list(llm.create_completion(PROMPT, max_tokens=24, temperature=0.0, stop=stop, stream=True))
    assert "".join(text_of(c) for c in streamed) == full[:cut]
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_echo_and_token_prompts(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    plain = text_of(llm.create_completion(PROMPT, max_tokens=4, temperature=0.0))
    echoed = text_of(llm.create_completion(PROMPT, max_tokens=4, temperature=0.0, echo=True))
    assert echoed == PROMPT + plain
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    assert text_of(llm.create_completion(tokens, max_tokens=4, temperature=0.0)) == plain
    assert text_of(llm(PROMPT, max_tokens=4, temperature=0.0)) == plain


def test_completion_after_set_activations_uses_the_new_wiring(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    base = text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=0.0))
    llm.set_activations("*:relu2")
    rewired = text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=0.0))
    with tiny_llm("llama", activations="*:relu2") as fresh:
        assert text_of(fresh.create_completion(PROMPT, max_tokens=12, temperature=0.0)) == rewired
    assert rewired != base
    llm.set_activations(None)
    assert text_of(llm.create_completion(PROMPT, max_tokens=12, temperature=0.0)) == base


def test_generation_reuses_the_graph_except_right_after_a_rewiring(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    llm.eval(llm.tokenize(PROMPT.encode(), add_bos=True))
    llm.ctx.perf_reset()
    for t in (5, 6, 7, 8):
        llm.eval([t])
    perf = llm.ctx.perf()
    assert perf["n_eval"] == 4
    assert perf["n_reused"] >= 3  # single-token decodes after the first one reuse its graph
    reused = perf["n_reused"]
    llm.set_activations("*:relu2")
    llm.eval([5])  # a new table: the graph of the old one must not be reused
    assert llm.ctx.perf()["n_reused"] == reused
    logits = llm.last_logits.copy()
    llm.eval([6])
    assert llm.ctx.perf()["n_reused"] == reused + 1
    with tiny_llm("llama", activations="*:relu2") as fresh:
        fresh.eval([5])
        np.testing.assert_array_equal(fresh.last_logits, logits)


def test_perf_times_every_single_token_decode(tiny_llm: Any) -> None:
    # llama.cpp books a decode's time and tokens when the context synchronizes: each eval must do so, or
    # single-token decodes pile up and are counted later, as one prompt
    llm = tiny_llm("llama")
    llm.eval(llm.tokenize(PROMPT.encode(), add_bos=True))
    llm.ctx.perf_reset()
    for t in (5, 6, 7, 8, 9):
        llm.eval([t])
    perf = llm.ctx.perf()
    assert perf["n_eval"] == 5
    assert perf["t_eval_ms"] > 0.0
    assert perf["t_p_eval_ms"] == 0.0
    # no_perf=True (llama.cpp's own default) counts tokens but takes no timings
    quiet = tiny_llm("llama", no_perf=True)
    quiet.eval([1, 5])
    quiet.eval([6])
    perf = quiet.ctx.perf()
    assert perf["n_eval"] == 1 and perf["n_p_eval"] == 2
    assert perf["t_eval_ms"] == 0.0 and perf["t_p_eval_ms"] == 0.0


def test_attention_type_and_op_offload_reach_the_context(tiny_llm: Any) -> None:
    base = tiny_llm("llama")
    base.eval([1, 5, 6])
    causal = tiny_llm("llama", attention_type=0, op_offload=False)  # LLAMA_ATTENTION_TYPE_CAUSAL
    causal.eval([1, 5, 6])
    np.testing.assert_array_equal(causal.last_logits, base.last_logits)
    # non-causal: the first token attends to the later ones, so its output changes
    first = tiny_llm("llama", logits_all=True)
    first.eval([1, 5, 6])
    bidir = tiny_llm("llama", logits_all=True, attention_type=1)
    bidir.eval([1, 5, 6])
    assert not np.allclose(bidir.scores[0], first.scores[0])
    with pytest.raises(ValueError, match="attention_type must be in"):
        tiny_llm("llama", attention_type=2)


@pytest.mark.parametrize(
    ("data", "text"),
    [(b"abc", "abc"), ("é".encode(), "é"), ("aé".encode()[:-1], "a"), ("a€".encode()[:-2], "a"),
     (b"a\xffb", "a\ufffdb")],
)
def test_valid_utf8_prefix(data: bytes, text: str) -> None:
    assert valid_utf8_prefix(data) == text


def test_stop_holdback() -> None:
    assert stop_holdback("hello wor", ["world"]) == 3
    assert stop_holdback("hello", ["xyz"]) == 0
    assert stop_holdback("ab", ["abc", "b"]) == 2

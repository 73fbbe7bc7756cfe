"""The llama-cpp-python-compatible completion API on the real demo models: sampling, state, caches,
grammars, logprobs, embeddings, logging and request errors."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llama_rewire
from llama_rewire import (
    ContextOverflowError,
    GrammarError,
    Llama,
    LlamaGrammar,
    LlamaRAMCache,
    LogitsProcessorList,
    StoppingCriteriaList,
)
from llama_rewire.llama_grammar import JSON_GBNF

pytestmark = pytest.mark.real_model

PROMPT = "The capital of France is"


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text_of(out: Any) -> str:
    return str(out["choices"][0]["text"])


@pytest.fixture(scope="module")
def llm(smollm2_path: Path) -> Iterator[Llama]:
    model = Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def both(request: pytest.FixtureRequest) -> Iterator[Llama]:
    from llama_rewire.models import fetch

    model = Llama(str(fetch(request.param, progress=False)), n_ctx=512, n_threads=2, verbose=False)
    yield model
    model.close()


# -- sampling -------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seeds_differ(both: Llama) -> None:
    kw: dict[str, Any] = {"max_tokens": 16, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    a = text_of(both(PROMPT, seed=7, **kw))
    b = text_of(both(PROMPT, seed=7, **kw))
    others = {text_of(both(PROMPT, seed=s, **kw)) for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1


def test_set_seed_makes_unseeded_calls_reproducible(llm: Llama) -> None:
    kw: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    llm.set_seed(1234)
    a = [text_of(llm(PROMPT, **kw)) for _ in range(2)]
    llm.set_seed(1234)
    b = [text_of(llm(PROMPT, **kw)) for _ in range(2)]
    assert a == b


@pytest.mark.parametrize("stop", [None, ["."], ["\n", " the"]])
def test_streaming_concatenates_to_the_plain_text(both: Llama, stop: list[str] | None) -> None:
    whole = both(PROMPT, max_tokens=24, temperature=0.0, stop=stop)
    stream = both(PROMPT, max_tokens=24, temperature=0.0, stop=stop, stream=True)
    chunks = list(stream)
    assert "".join(text_of(c) for c in chunks) == text_of(whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert stream.usage == whole["usage"]  # type: ignore[union-attr]
    if stop:
        assert not any(s in text_of(whole) for s in stop)


def test_save_and_load_state_replays_the_same_sample(both: Llama) -> None:
    both.reset()
    both.eval(both.tokenize(b"Once upon a time, in a land far away,"))
    logits = both.last_logits.copy()
    state = both.save_state()

    def draw() -> list[int]:
        out = []
        for _ in range(8):
            t = both.sample(temp=1.0, top_k=0, top_p=1.0, min_p=0.0)
            out.append(t)
            both.eval([t])
        return out

    first = draw()
    both.load_state(state)
    assert np.array_equal(both.last_logits, logits)
    assert draw() == first


def test_penalties_see_the_generated_tokens_only(llm: Llama) -> None:
    """As in llama-cpp-python, the prompt is not in the penalties' window: the first token is the
    unpenalized one, and a generated token is penalized from then on."""
    prompt = "1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,"
    plain = llm(prompt, max_tokens=8, temperature=0.0, logprobs=0)
    penalized = llm(prompt, max_tokens=8, temperature=0.0, logprobs=0, repeat_penalty=1000.0)
    tokens_plain = plain["choices"][0]["logprobs"]["tokens"]
    tokens_pen = penalized["choices"][0]["logprobs"]["tokens"]
    assert tokens_pen[0] == tokens_plain[0]
    assert len(set(tokens_plain)) < len(tokens_plain)  # the pattern continues, repeating tokens
    assert len(set(tokens_pen)) == len(tokens_pen)  # a generated token is not generated again
    freq = llm(prompt, max_tokens=8, temperature=0.0, frequency_penalty=50.0, presence_penalty=50.0)
    assert text_of(freq) != text_of(plain)


def test_greedy_choice_is_the_first_largest_logit_on_a_real_vocabulary(both: Llama) -> None:
    from checks import greedy_cases

    from llama_rewire import _core
    from llama_rewire.engine import SamplingParams

    sampler = _core.Sampler(both.model, SamplingParams(temperature=0.0))
    for logits in greedy_cases(both.n_vocab(), seed=7):
        assert sampler.sample_logits(logits) == int(np.argmax(logits))


def test_mirostat_and_typical_sampling_run(llm: Llama) -> None:
    for kw in ({"mirostat_mode": 1}, {"mirostat_mode": 2}, {"typical_p": 0.5}):
        out = llm(PROMPT, max_tokens=8, temperature=0.8, seed=3, **kw)
        assert out["usage"]["completion_tokens"] >= 1


def test_logit_bias_and_logits_processor_steer_the_choice(llm: Llama) -> None:
    target = llm.tokenize(b" banana", add_bos=False)[0]
    out = llm(PROMPT, max_tokens=3, temperature=0.0, logit_bias={target: 100.0})
    assert text_of(out).startswith(" banana")

    calls = []

    def only_target(input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        calls.append(len(input_ids))
        masked = np.full_like(scores, -np.inf)
        masked[target] = 0.0
        return masked

    out = llm(
        PROMPT, max_tokens=3, temperature=0.7, seed=1, logits_processor=LogitsProcessorList([only_target])
    )
    assert out["usage"]["completion_tokens"] == 3
    assert text_of(out) == " banana banana banana"
    assert calls == sorted(calls) and len(calls) == 3


def test_stopping_criteria_stop_the_generation(llm: Llama) -> None:
    seen = []

    def after_three(input_ids: np.ndarray[Any, Any], logits: np.ndarray[Any, Any]) -> bool:
        seen.append(len(logits))
        return len(seen) >= 3

    out = llm(PROMPT, max_tokens=20, temperature=0.0, stopping_criteria=StoppingCriteriaList([after_three]))
    assert out["usage"]["completion_tokens"] == 3
    assert out["choices"][0]["finish_reason"] == "stop"
    assert seen[0] == llm.n_vocab()


# -- logprobs -------------------------------------------------------------------------------------


def test_logprobs_match_a_log_softmax_of_the_logits(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=256, logits_all=True, verbose=False) as m:
        out = m(PROMPT, max_tokens=6, temperature=0.0, logprobs=3)
        lp = out["choices"][0]["logprobs"]
        n_prompt = out["usage"]["prompt_tokens"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
        assert "".join(lp["tokens"]) == text_of(out)
        assert lp["text_offset"] == [len(PROMPT) + sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
        for i, token in enumerate(m._input_ids[n_prompt : n_prompt + 6]):
            logits = m.scores[n_prompt + i - 1].astype(np.float64)
            ref = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            assert lp["token_logprobs"][i] == pytest.approx(ref[token], abs=1e-4)
            assert max(lp["top_logprobs"][i].values()) == pytest.approx(ref.max(), abs=1e-4)  # greedy
        echoed = m(PROMPT, max_tokens=2, temperature=0.0, logprobs=1, echo=True)
        elp = echoed["choices"][0]["logprobs"]
        assert text_of(echoed).startswith(PROMPT)
        assert elp["token_logprobs"][0] is None and len(elp["tokens"]) == n_prompt + 2


# -- grammars -------------------------------------------------------------------------------------


def test_json_grammar_output_parses(llm: Llama) -> None:
    out = llm(
        "A short JSON object with the name and color of a cat:",
        max_tokens=200,
        temperature=0.0,
        grammar=LlamaGrammar.from_string(JSON_GBNF),
    )
    assert out["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(text_of(out)), dict)


def test_json_schema_output_parses_and_follows_the_schema(both: Llama) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    out = both(
        "A person, as JSON:",
        max_tokens=100,
        temperature=0.0,
        grammar=LlamaGrammar.from_json_schema(json.dumps(schema)),
    )
    doc = json.loads(text_of(out))
    assert set(doc) == {"name", "age", "tags"}
    assert isinstance(doc["name"], str) and isinstance(doc["age"], int) and isinstance(doc["tags"], list)


def test_a_grammar_restricts_streamed_and_seeded_output(llm: Llama) -> None:
    g = LlamaGrammar.from_string('root ::= ("yes" | "no") "."')
    for seed in range(3):
        out = llm("Is the sky blue?", max_tokens=8, temperature=1.0, seed=seed, grammar=g)
        assert text_of(out) in ("yes.", "no.")
    chunks = list(llm("Is the sky blue?", max_tokens=8, temperature=0.0, grammar=g, stream=True))
    assert "".join(text_of(c) for c in chunks) in ("yes.", "no.")


@pytest.mark.parametrize("bad", ['root ::= ("a"', 'start ::= "a"', "", "root ::= [a-"])
def test_bad_grammars_raise(bad: str) -> None:
    with pytest.raises(GrammarError):
        LlamaGrammar.from_string(bad)
    with pytest.raises(ValueError):
        LlamaGrammar.from_json_schema("{not json")


# -- caches and rewiring --------------------------------------------------------------------------


def test_prompt_cache_reuses_states_and_rewiring_clears_it(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=256, verbose=False) as m:
        cache = LlamaRAMCache(capacity_bytes=1 << 30)
        m.set_cache(cache)
        a = text_of(m(PROMPT, max_tokens=6, temperature=0.0))
        assert len(cache.cache_state) == 1
        m.reset()
        m.eval(m.tokenize(b"Something unrelated entirely"))
        b = text_of(m(PROMPT, max_tokens=6, temperature=0.0))  # starts from the cached state
        assert a == b
        m.set_activations("*:relu")
        assert len(cache.cache_state) == 0
        relu = text_of(m(PROMPT, max_tokens=6, temperature=0.0))
        with Llama(str(smollm2_path), n_ctx=256, activations="*:relu", verbose=False) as fresh:
            assert relu == text_of(fresh(PROMPT, max_tokens=6, temperature=0.0))
        assert relu != a


# -- embeddings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pooling", [llama_rewire.LLAMA_POOLING_TYPE_MEAN, llama_rewire.LLAMA_POOLING_TYPE_NONE]
)
def test_embeddings_of_a_batch_equal_embeddings_one_by_one(smollm2_path: Path, pooling: int) -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", "a", "Paris is in France"]
    with Llama(str(smollm2_path), n_ctx=512, embedding=True, pooling_type=pooling, verbose=False) as m:
        batch = m.embed(texts)
        single = [m.embed(t) for t in texts]
        assert len(batch) == len(texts)
        for b, s in zip(batch, single):
            b_, s_ = np.array(b).reshape(-1, m.n_embd()), np.array(s).reshape(-1, m.n_embd())
            assert b_.shape == s_.shape
            # a batch of several texts puts more rows through each matmul, and on some CPU paths (the
            # repacked Q4 kernels work on groups of rows) a row's sums then run in another order than
            # alone: equal up to rounding (measured on AVX2: 0.9% of the largest component, cosine
            # 0.99996), where another text's rows leaking in would change the direction
            cos = (b_ * s_).sum(axis=1) / np.linalg.norm(b_, axis=1) / np.linalg.norm(s_, axis=1)
            assert cos.min() > 0.9995, cos
            np.testing.assert_allclose(b_, s_, rtol=0, atol=0.03 * np.abs(s_).max())
        if pooling == llama_rewire.LLAMA_POOLING_TYPE_MEAN:
            assert np.array(batch).shape == (4, m.n_embd())
            normed = m.embed(texts, normalize=True)
            assert np.allclose(np.linalg.norm(np.array(normed), axis=1), 1.0, atol=1e-5)
            resp = m.create_embedding(texts)
            assert [d["index"] for d in resp["data"]] == [0, 1, 2, 3]
            assert resp["usage"]["prompt_tokens"] == sum(len(m.tokenize(t.encode())) for t in texts)
            assert not np.allclose(batch[0], batch[1])
        else:
            assert len(batch[0]) == len(m.tokenize(texts[0].encode()))
        # generation still works on an embedding model
        assert m(PROMPT, max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] == 2


def test_embed_needs_embedding_true(llm: Llama) -> None:
    with pytest.raises(RuntimeError, match="embedding=True"):
        llm.embed("hi")


# -- logging --------------------------------------------------------------------------------------


def test_verbose_false_is_silent_and_verbose_logs_to_python_logging(
    smollm2_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with Llama(str(smollm2_path), n_ctx=128, verbose=False) as m:
        m(PROMPT, max_tokens=2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    logger = logging.getLogger("llama_rewire")
    logger.addHandler(caplog.handler)
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="llama_rewire"),
            Llama(str(smollm2_path), n_ctx=128, verbose=True) as m,
        ):
            m(PROMPT, max_tokens=2)
    finally:
        logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records if r.name == "llama_rewire"]
    assert any("llama_model_loader" in msg or "load_tensors" in msg for msg in messages)
    assert all("\n" not in msg for msg in messages)


# -- request errors -------------------------------------------------------------------------------


def test_context_overflow_is_raised_eagerly_even_when_streaming(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=64, verbose=False) as m:
        long = "word " * (m.n_ctx() + 10)
        for stream in (False, True):
            with pytest.raises(ContextOverflowError) as e:
                m(long, max_tokens=4, stream=stream)
            assert isinstance(e.value, ValueError) and e.value.n_ctx == m.n_ctx()
        assert text_of(m(PROMPT, max_tokens=2, temperature=0.0))


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"temperature": float("nan")}, ValueError),
        ({"repeat_penalty": 0.0}, ValueError),
        ({"mirostat_mode": 3}, ValueError),
        ({"logit_bias": {10**9: 1.0}}, ValueError),
        ({"logit_bias": {"x": 1.0}}, ValueError),
        ({"stop": [1, 2]}, TypeError),
        ({"max_tokens": "8"}, ValueError),
        ({"logprobs": -1}, ValueError),
        ({"grammar": 'root ::= "a"'}, TypeError),
    ],
)
def test_bad_request_parameters_raise_and_the_model_stays_usable(
    llm: Llama, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        llm(PROMPT, **kwargs)
    assert llm(PROMPT, max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] == 2


def test_kv_overrides_reach_the_loader(smollm2_path: Path) -> None:
    plain = Llama(str(smollm2_path), vocab_only=True, verbose=False)
    changed = Llama(
        str(smollm2_path),
        vocab_only=True,
        verbose=False,
        kv_overrides={"tokenizer.ggml.add_bos_token": not plain.model.add_bos()},
    )
    assert plain.model.add_bos() != changed.model.add_bos()
    with pytest.raises(ValueError):
        Llama(str(smollm2_path), vocab_only=True, verbose=False, kv_overrides={"k": [1]})


@pytest.mark.parametrize("kwargs", [
    {"pooling_type": 99, "embedding": True},
    {"rope_scaling_type": 99},
    {"type_k": 999},
    {"type_v": 27},
    {"tensor_split": [1.0] * 1000},
    {"kv_overrides": {"": 1}},
    {"lora_path": "/nonexistent/adapter.gguf"},
    {"rpc_servers": "localhost"},
    {"rpc_servers": f"127.0.0.1:{_unused_port()}"},  # nothing listens there: a ConnectionError and ValueError
])
def test_bad_constructor_parameters_raise_instead_of_aborting(smollm2_path: Path,
                                                              kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Llama(str(smollm2_path), n_ctx=64, verbose=False, **kwargs)


def test_bad_states_and_sampler_inputs_raise(llm: Llama) -> None:
    from llama_rewire import LlamaState, _core
    from llama_rewire.engine import SamplingParams

    llm.reset()
    llm.eval(llm.tokenize(b"Hello there"))
    state = llm.save_state()
    for data in (b"garbage" * 10, state.llama_state[: len(state.llama_state) // 2]):
        bad = LlamaState(state.input_ids, state.scores, state.n_tokens, data, len(data), state.seed)
        with pytest.raises(ValueError):
            llm.load_state(bad)
    llm.load_state(state)
    assert text_of(llm(PROMPT, max_tokens=2, temperature=0.0))
    with pytest.raises(GrammarError):
        _core.Sampler(llm.model, SamplingParams(grammar='root ::= "a"', grammar_lazy=True,
                                                trigger_patterns=("([",)))
    with pytest.raises(ValueError):
        _core.Sampler(llm.model, SamplingParams(grammar='root ::= "a"', grammar_lazy=True,
                                                trigger_tokens=(10**9,)))
    with pytest.raises(ValueError):
        _core.Sampler(llm.model, SamplingParams()).sample_logits(np.zeros(3, np.float32))
    with pytest.raises(GrammarError):  # a token reference the grammar never accepts
        llm(PROMPT, max_tokens=2, grammar=LlamaGrammar.from_string("root ::= <[999999999]>"))
    for bad_schema in ('{"type": "nonsense"}', '{"$ref": "#/definitions/missing"}', "[1, 2]"):
        with pytest.raises(GrammarError):
            LlamaGrammar.from_json_schema(bad_schema)


def test_prefix_reuse_stays_exact_with_a_window_sized_sliding_window_cache(gemma_path: Path) -> None:
    """swa_full=False: the cache forgets positions older than the window, so reusing a short prefix after
    a long prompt must evaluate that prefix again (without the check the logits are off by ~16)."""
    from llama_rewire.eval.text import sample_text

    with Llama(str(gemma_path), n_ctx=2048, n_threads=2, verbose=False) as ref:
        long = ref.tokenize(sample_text().encode())[:1900]
        prompt = long[:300] + ref.tokenize(b" And then", add_bos=False)
        ref.eval(prompt)
        want = ref.last_logits.copy()
    with Llama(str(gemma_path), n_ctx=2048, n_threads=2, swa_full=False, verbose=False) as m:
        assert m.model.n_swa() < 1900 - 300
        m.eval(long)
        m.eval(m._prefix_reuse(prompt))
        np.testing.assert_allclose(m.last_logits, want, atol=1e-3)
        assert m.n_tokens == len(prompt)

"""Parallel slots (``Llama(n_parallel=N).slots``): several sequences decoded together.

Checked against the numpy reference on tiny models (each sequence's logits, read through a logits
processor on the decode thread), against the Llama's own one-at-a-time completions on a real model
(greedy text, seeded sampling, grammar), and for the lifecycle: continuous batching (a request starts
mid-generation of another; a long prompt is fed in chunks while a stream keeps flowing), prefix reuse,
cancellation freeing its slot, the context budget, the Llama's own calls taking turns with the slots,
closing, and bad arguments.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import BATCH_TIE, agree_up_to_a_tie, same_greedy_up_to_a_tie, steps_of_completion_logprobs
from conftest import EXACT

from llama_rewire import Llama, LlamaGrammar
from llama_rewire.errors import ContextOverflowError

PROMPTS = [[1, 5, 9, 14, 3], [1, 22, 7], [1, 30, 31, 2, 8, 8, 40], [1, 11]]
TOL = {"gemma3": 5e-3}  # llama.cpp's CPU gelu reads an fp16 table: ~1e-3 relative


class Recorder:
    """A logits processor that keeps (ids, raw logits) of every step and changes nothing."""

    def __init__(self) -> None:
        self.steps: list[tuple[list[int], np.ndarray]] = []

    def __call__(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        self.steps.append((ids.tolist(), logits.copy()))
        return logits


@pytest.mark.parametrize("kind", ["llama", "gemma3", "moe"])
def test_each_sequence_matches_the_reference(tiny: Any, tiny_llm: Any, kind: str) -> None:
    _, spec = tiny(kind)
    llm = tiny_llm(kind, n_parallel=4)
    recorders = [Recorder() for _ in PROMPTS]
    results: list[Any] = [None] * len(PROMPTS)

    def run(i: int) -> None:
        results[i] = llm.slots.create_completion(PROMPTS[i], max_tokens=6, temperature=0.0,
                                                 logits_processor=recorders[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert llm.slots.stats()["decodes"] < sum(len(r.steps) for r in recorders)  # batched, not in turn
    for prompt, rec, result in zip(PROMPTS, recorders, results):
        assert result is not None and result["usage"]["prompt_tokens"] == len(prompt)
        assert rec.steps, "no step recorded"
        for ids, logits in rec.steps:
            want = numpy_ref.forward(spec, ids)[-1]
            assert ids[: len(prompt)] == prompt
            err = np.max(np.abs(logits - want)) / (np.max(np.abs(want)) + 1e-9)
            assert err < TOL.get(kind, 1e-4), (kind, ids, err)
        # greedy: each step's token is the argmax of that step's logits
        generated = [ids[-1] for ids, _ in rec.steps[1:]]
        assert generated == [int(np.argmax(lg)) for _, lg in rec.steps[:-1]]


def test_recurrent_model_runs_on_slots_without_prefix_reuse(tiny_llm: Any) -> None:
    # no numpy reference for Mamba: the Llama's own one-sequence run is the reference
    llm = tiny_llm("mamba", n_parallel=2)
    ref = tiny_llm("mamba")
    got, want = Recorder(), Recorder()
    llm.slots.create_completion(PROMPTS[0], max_tokens=4, temperature=0.0, logits_processor=got)
    ref.create_completion(PROMPTS[0], max_tokens=4, temperature=0.0, logits_processor=want)
    llm.slots.create_completion([*PROMPTS[0][:3], 7], max_tokens=2, temperature=0.0)
    assert llm.slots.stats()["prompt_tokens_cached"] == 0  # a recurrent state cannot be cut back
    assert [ids for ids, _ in got.steps] == [ids for ids, _ in want.steps]
    for (_, a), (_, b) in zip(got.steps, want.steps):
        assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-5


# ---------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def pair(smollm2_path: Path) -> Any:
    """The same model twice: one-at-a-time, and with 4 slots (same threads, same per-request window)."""
    kw = {"n_ctx": 512, "n_threads": 2, "verbose": False}
    one = Llama(str(smollm2_path), **kw)
    four = Llama(str(smollm2_path), n_parallel=4, **kw)
    yield one, four
    one.close()
    four.close()


TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
         "The three primary colors are", "Water boils at", "My favourite fruit is"]


def test_greedy_text_equals_one_at_a_time(pair: Any) -> None:
    one, four = pair
    kw: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "logprobs": 2}
    want = [one.create_completion(t, **kw)["choices"][0] for t in TEXTS]
    got = [g["choices"][0] for g in four.slots.create_completions(TEXTS, **kw)]
    # the prompts are prefilled together and decoded in one batch: the kernels the batch takes (the
    # F16 KV cache's attention, the repacked rows in groups, AMX tiles) round otherwise than for one
    # sequence alone, so each text equals its one-at-a-time text up to a near tie, where it may part
    shared = [agree_up_to_a_tie(steps_of_completion_logprobs(g["logprobs"]),
                                steps_of_completion_logprobs(w["logprobs"]), BATCH_TIE)
              for g, w in zip(got, want)]
    for g, w, n in zip(got, want, shared):
        assert g["logprobs"]["tokens"][:n] == w["logprobs"]["tokens"][:n]
        if n == len(w["logprobs"]["tokens"]):
            assert g["text"] == w["text"]
    assert sum(shared) >= len(TEXTS) * 24 // 2, shared  # most of the text is shared
    assert all(len(g["logprobs"]["tokens"]) == 24 or g["finish_reason"] == "stop" for g in got)


def test_seeded_sampling_grammar_and_logprobs_per_slot(pair: Any) -> None:
    one, four = pair
    grammar = LlamaGrammar.from_string('root ::= "yes" | "no"', verbose=False)
    requests = [
        {"prompt": TEXTS[0], "max_tokens": 16, "temperature": 0.9, "seed": 7},
        {"prompt": TEXTS[1], "max_tokens": 8, "grammar": grammar, "temperature": 0.0},
        {"prompt": TEXTS[2], "max_tokens": 8, "temperature": 0.0, "logprobs": 3},
        {"prompt": TEXTS[3], "max_tokens": 12, "temperature": 0.7, "seed": 3, "repeat_penalty": 1.3,
         "stop": ["."]},
    ]
    want = [one.create_completion(**r) for r in requests]
    got: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        got[i] = four.slots.create_completion(**requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for w, g in zip(want, got):
        assert g["choices"][0]["text"] == w["choices"][0]["text"]
        assert g["choices"][0]["finish_reason"] == w["choices"][0]["finish_reason"]
    assert got[1]["choices"][0]["text"] in ("yes", "no")
    lp_w, lp_g = want[2]["choices"][0]["logprobs"], got[2]["choices"][0]["logprobs"]
    assert lp_g["tokens"] == lp_w["tokens"]
    np.testing.assert_allclose(lp_g["token_logprobs"], lp_w["token_logprobs"], atol=1e-4)


def test_stopping_criteria_sees_the_ids_and_logits_on_a_slot(pair: Any) -> None:
    one, four = pair
    seen: dict[str, list[tuple[list[int], Any]]] = {"one": [], "four": []}

    def criteria(key: str) -> Any:
        def stop(ids: Any, logits: Any) -> bool:
            seen[key].append((list(ids), np.array(logits, copy=True)))
            return len(seen[key]) == 5
        return stop

    want = one.create_completion(TEXTS[4], max_tokens=16, temperature=0.0, stopping_criteria=criteria("one"))
    got = four.slots.create_completion(TEXTS[4], max_tokens=16, temperature=0.0,
                                       stopping_criteria=criteria("four"))
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "stop"
    assert got["usage"]["completion_tokens"] == 5
    assert len(seen["four"]) == len(seen["one"]) == 5
    for k, ((ids_w, logits_w), (ids_g, logits_g)) in enumerate(zip(seen["one"], seen["four"])):
        assert ids_g == ids_w  # the prompt and the tokens before the one just sampled
        assert logits_g.shape == logits_w.shape == (one.n_vocab(),)
        np.testing.assert_allclose(logits_g, logits_w, atol=1e-3)  # up to what batched kernels change
        if k + 1 < len(seen["four"]):  # greedy: the token just sampled is the logits' argmax
            assert int(np.argmax(logits_g)) == seen["four"][k + 1][0][-1]


def test_chat_on_slots_and_the_follow_up_reuses_its_prefix(pair: Any) -> None:
    one, four = pair
    messages = [{"role": "user", "content": "Name a color."}]
    kw: dict[str, Any] = {"max_tokens": 16, "temperature": 0.0, "logprobs": True, "top_logprobs": 2}
    want = one.create_chat_completion(messages, **kw)
    got = four.slots.create_chat_completion(messages, **kw)
    assert got["choices"][0]["message"] == want["choices"][0]["message"]
    before = four.slots.stats()["prompt_tokens_cached"]
    follow = [*messages, want["choices"][0]["message"], {"role": "user", "content": "Another one."}]
    # the follow-up's prompt is evaluated after another cached prefix on each side (the slot's, the
    # Llama's), so in other batches: the answers agree up to a tie (on an AMX CPU they part at one)
    want2 = one.create_chat_completion(follow, **kw)
    got2 = four.slots.create_chat_completion(follow, **kw)
    same_greedy_up_to_a_tie(got2["choices"][0]["logprobs"]["content"],
                            want2["choices"][0]["logprobs"]["content"])
    assert four.slots.stats()["prompt_tokens_cached"] - before >= got["usage"]["prompt_tokens"]
    # the first question again: its prompt is cached now but for its last token, evaluated alone, for
    # the whole answer as for the streamed one after it (the same batches, so the same text)
    again = four.slots.create_chat_completion(messages, **kw)
    same_greedy_up_to_a_tie(again["choices"][0]["logprobs"]["content"],
                            want["choices"][0]["logprobs"]["content"])
    chunks = list(four.slots.create_chat_completion(messages, max_tokens=16, temperature=0.0, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == again["choices"][0]["message"]["content"]


def _timed_stream(four: Llama, prompt: Any, max_tokens: int, out: list[float]) -> str:
    text = ""
    for chunk in four.slots.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        out.append(time.monotonic())
        text += chunk["choices"][0]["text"]
    return text


def _background_stream(llm: Llama, prompt: Any, max_tokens: int, times: list[float], texts: dict[str, str],
                       after: int) -> threading.Thread:
    """Stream prompt in a thread (its text in texts["a"], chunk times in times); return once it has
    sent `after` chunks."""
    a = threading.Thread(target=lambda: texts.setdefault("a", _timed_stream(llm, prompt, max_tokens, times)))
    a.start()
    deadline = time.monotonic() + 60
    while len(times) < after and time.monotonic() < deadline:
        time.sleep(0.005)
    return a


def test_a_request_starts_while_another_generates(pair: Any) -> None:
    one, four = pair
    times_a: list[float] = []
    texts: dict[str, str] = {}
    a = _background_stream(four, TEXTS[2], 64, times_a, texts, 4)
    started_b = time.monotonic()
    b = four.slots.create_completion(TEXTS[4], max_tokens=4, temperature=0.0)
    done_b = time.monotonic()
    a.join(120)
    assert times_a[-1] > done_b > started_b  # b ran to its end while a was still generating
    assert texts["a"] == one.create_completion(TEXTS[2], max_tokens=64, temperature=0.0)["choices"][0]["text"]
    assert b["choices"][0]["text"] == one.create_completion(TEXTS[4], max_tokens=4,
                                                            temperature=0.0)["choices"][0]["text"]


def test_a_long_prompt_is_fed_in_chunks_while_a_stream_flows(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=1024, n_batch=32, n_parallel=2, n_threads=2, verbose=False) as llm:
        times_a: list[float] = []
        a = threading.Thread(target=_timed_stream, args=(llm, TEXTS[0], 48, times_a))
        a.start()
        deadline = time.monotonic() + 60
        while len(times_a) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        long_prompt = " ".join(f"item {i} is {i * 7 % 13}." for i in range(60))
        start = time.monotonic()
        first: list[float] = []
        for chunk in llm.slots.create_completion(long_prompt, max_tokens=2, temperature=0.0, stream=True):
            if not first and chunk["choices"][0]["text"]:
                first.append(time.monotonic())
        a.join(120)
        n_prompt = len(llm.tokenize(long_prompt.encode()))
        assert n_prompt > 5 * 32
        # the stream got tokens while the long prompt's chunks were evaluated
        assert first and sum(1 for t in times_a if start < t < first[0]) >= 3


def test_cancel_frees_the_slot_and_its_generated_tokens(pair: Any) -> None:
    _, four = pair
    stream = four.slots.create_completion(TEXTS[5], max_tokens=100, temperature=0.0, stream=True)
    next(stream)
    next(stream)
    stream.close()
    assert four.slots.wait_idle(30)
    slots = four.slots.status()
    assert all(s["state"] == "idle" for s in slots)
    n_prompt = len(four.tokenize(TEXTS[5].encode()))
    assert any(s["n_cached"] == n_prompt for s in slots)  # the prompt stays cached, the rest is gone
    assert four.slots.stats()["cancelled"] >= 1


def test_the_context_budget(pair: Any) -> None:
    _, four = pair
    n_ctx = four.n_ctx()
    with pytest.raises(ContextOverflowError):
        four.slots.create_completion(list(range(1, n_ctx + 1)), max_tokens=4)
    prompt = [1] + [100] * (n_ctx - 10)
    out = four.slots.create_completion(prompt, max_tokens=10**6, temperature=0.0)
    assert out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"] <= n_ctx


def test_the_llamas_own_calls_take_turns_with_the_slots(pair: Any) -> None:
    one, four = pair
    times_a: list[float] = []
    texts: dict[str, str] = {}
    a = _background_stream(four, TEXTS[1], 40, times_a, texts, 2)
    own = four.create_completion(TEXTS[3], max_tokens=8, temperature=0.0)  # waits for the stream
    a.join(120)
    assert own["choices"][0]["text"] == one.create_completion(TEXTS[3], max_tokens=8,
                                                              temperature=0.0)["choices"][0]["text"]
    assert texts["a"] == one.create_completion(TEXTS[1], max_tokens=40, temperature=0.0)["choices"][0]["text"]
    # after the Llama's own call the slots start over (their caches may be stale)
    again = four.slots.create_completion(TEXTS[1], max_tokens=8, temperature=0.0)
    assert again["choices"][0]["text"] == texts["a"][: len(again["choices"][0]["text"])]


def test_changing_the_wiring_waits_for_running_requests(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=512, n_parallel=2, n_threads=2, verbose=False) as llm, \
            Llama(str(smollm2_path), n_ctx=512, n_threads=2, verbose=False) as ref:
        want_old = ref.create_completion(TEXTS[0], max_tokens=32, temperature=0.0)["choices"][0]["text"]
        ref.set_wiring("*:relu")
        want_new = ref.create_completion(TEXTS[0], max_tokens=8, temperature=0.0)["choices"][0]["text"]
        times: list[float] = []
        texts: dict[str, str] = {}
        a = _background_stream(llm, TEXTS[0], 32, times, texts, 2)
        llm.set_wiring("*:relu")  # returns once the stream's tokens are all decoded
        a.join(120)
        assert texts["a"] == want_old  # every token of it under the old wiring
        new = llm.slots.create_completion(TEXTS[0], max_tokens=8, temperature=0.0)
        assert new["choices"][0]["text"] == want_new


def test_edits_are_refused_on_slots(pair: Any) -> None:
    _, four = pair
    four.set_steering(np.full(four.n_embd(), 0.01, dtype=np.float32), layers=3)
    try:
        with pytest.raises(ValueError, match="edits"):
            four.slots.create_completion(TEXTS[0], max_tokens=2)
    finally:
        four.clear_edits()
    assert four.slots.create_completion(TEXTS[0], max_tokens=2)["usage"]["completion_tokens"] >= 1


def test_closing_the_llama_ends_its_requests(smollm2_path: Path) -> None:
    llm = Llama(str(smollm2_path), n_ctx=512, n_parallel=2, n_threads=2, verbose=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in llm.slots.create_completion(TEXTS[2], max_tokens=200, temperature=0.0, stream=True):
                pass
        except RuntimeError as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    llm.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert errors and all("closed" in str(e) for e in errors)
    with pytest.raises(RuntimeError, match="closed"):
        llm.slots.create_completion(TEXTS[0], max_tokens=2)


@pytest.mark.parametrize("value", [0, 257, -1, "4", 2.0, True, None])
def test_bad_n_parallel(tiny: Any, value: Any) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError, match="n_parallel"):
        Llama(str(path), n_parallel=value, **EXACT)


def test_n_parallel_with_embedding_is_refused(tiny: Any) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError, match="n_parallel"):
        Llama(str(path), n_parallel=2, embedding=True, **EXACT)


def test_bad_requests_on_slots_fail_before_they_wait(tiny_llm: Any) -> None:
    llm = tiny_llm("llama", n_parallel=2)
    with pytest.raises(TypeError):
        llm.slots.create_completion([1, 2], 4, 0.5, "extra", "args", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                    13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26)
    with pytest.raises(ValueError):
        llm.slots.create_completion([1, 2], max_tokens="many")
    with pytest.raises(ValueError):
        llm.slots.create_completion([1, 10**9])
    with pytest.raises(ValueError, match="logprobs"):
        llm.slots.create_completion([1, 2], echo=True, logprobs=2)
    with pytest.raises(TypeError):
        llm.slots.create_completions("one prompt")
    assert llm.slots.stats()["requests"] == 0
    assert llm.slots.status()[0]["state"] == "idle" and len(llm.slots.status()) == 2

"""CPU amplification: work that grew faster than the request that asked for it.

- llama.cpp's special-token partition (tokenize with special=True) was quadratic in the number of
  special tokens in the text; it is now one pass, and gives the tokens the old one gave
  (tests/data/special_partition.json, recorded with the old partition; see tests/partition_cases.py).
- a chat with more messages than the context has positions was rendered and tokenized before being
  refused; it is refused before rendering.
- stop strings were searched again, and their possible starts recomputed, over the text's tail after
  every token; a matcher per stop now reads each new character once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import pytest
from partition_cases import DATA

from llama_rewire import Llama, LlamaGrammar
from llama_rewire._completion import StopMatcher, stop_holdback
from llama_rewire.errors import ContextOverflowError

RECORDED: dict[str, list[dict[str, object]]] = json.loads(DATA.read_text(encoding="utf-8"))


# -- the special-token partition ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_special_partition_gives_the_recorded_tokens(vocab: Callable[[str], Llama], name: str) -> None:
    llm = vocab(name)
    for case in RECORDED[name]:
        text = str(case["text"]).encode()
        assert llm.tokenize(text, add_bos=False, special=True) == case["special"], case["text"]
        assert llm.tokenize(text, add_bos=False, special=False) == case["plain"], case["text"]


def test_special_token_flood_is_linear(vocab: Callable[[str], Llama]) -> None:
    """600 KB of "<|im_start|>" took 17 s (each split walked the list of fragments from its start)."""
    llm = vocab("qwen2")
    im_start = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1
    n = 50_000
    start = time.monotonic()
    tokens = llm.tokenize(b"<|im_start|>" * n, add_bos=False, special=True)
    assert time.monotonic() - start < 4
    assert tokens == im_start * n
    start = time.monotonic()
    tokens = llm.tokenize(b"a<|im_start|>" * n, add_bos=False, special=True)
    assert time.monotonic() - start < 6
    assert len(tokens) == 2 * n


def test_nested_special_tokens_partition(vocab: Callable[[str], Llama]) -> None:
    """gpt-neox's user-defined tokens are runs of 2 to 24 spaces, each a prefix of the longer ones."""
    llm = vocab("gpt-neox")
    text = (" " * 1000 + "x") * 200
    start = time.monotonic()
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert time.monotonic() - start < 6
    assert llm.detokenize(tokens).decode() == text
    assert len(tokens) == 200 * (1000 // 24 + 2)  # greedy: the longest run first, then the rest


# -- chats that cannot fit --------------------------------------------------------------------------------


def test_chat_longer_than_the_context_is_refused_before_rendering(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", chat_format="chatml", n_ctx=128)
    messages = [{"role": "user", "content": "hello there " * 4}] * 50_000
    start = time.monotonic()
    with pytest.raises(ContextOverflowError):
        llm.create_chat_completion(messages, max_tokens=1)
    assert time.monotonic() - start < 1.0
    out = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=1)
    assert out["choices"][0]["finish_reason"] in ("length", "stop")


# -- stop strings -----------------------------------------------------------------------------------------


def _old_cut(text: str, new: str, stops: list[str]) -> int:
    """The old search: every stop, over the text's tail plus the new piece."""
    start = max(0, len(text) - max(len(s) for s in stops))
    whole = text + new
    return min((i for i in (whole.find(s, start) for s in stops) if i >= 0), default=-1)


def _old_holdback(text: str, stops: list[str]) -> int:
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def test_stop_matchers_agree_with_the_old_search() -> None:
    rng = random.Random(7)
    for _ in range(400):
        alphabet = "ab" if rng.random() < 0.5 else "abc "
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8)))
                 for _ in range(rng.randrange(1, 4))]
        matchers = [StopMatcher(s) for s in stops]
        text = ""
        for _ in range(40):
            new = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 4)))
            expected = _old_cut(text, new, stops)
            cut = -1
            for m in matchers:
                end = m.feed(new)
                if end >= 0:
                    start = len(text) + end - len(m.stop)
                    cut = start if cut < 0 else min(cut, start)
            assert cut == expected, (stops, text, new)
            if cut >= 0:
                break
            text += new
            assert max(m.state for m in matchers) == _old_holdback(text, stops), (stops, text)
            assert stop_holdback(text, stops) == _old_holdback(text, stops)


def test_stream_with_long_stops_is_not_slowed(tiny_llm: Callable[..., Llama]) -> None:
    """2.4 MB of stop strings cost every token time quadratic in the text so far: 400 tokens took 4 s
    instead of 0.2 s."""
    llm = tiny_llm("llama", n_ctx=512, n_threads=1, logits_all=False)
    rng = random.Random(3)
    stops = ["".join(rng.choice("xyz") for _ in range(24_000)) for _ in range(100)]
    letters = LlamaGrammar.from_string("root ::= [a-w]{400}")

    def run(stop: list[str] | None) -> tuple[str, float]:
        start = time.monotonic()
        text = "".join(c["choices"][0]["text"] for c in llm.create_completion(
            "a", max_tokens=400, temperature=0.0, stream=True, stop=stop, grammar=letters))
        return text, time.monotonic() - start

    plain, t_plain = run(None)
    with_stops, t_stops = run(stops)
    assert len(plain) == 400
    assert with_stops == plain
    assert t_stops < 2 * t_plain + 1.0


def test_streamed_stop_cuts_like_the_whole_completion(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_ctx=128)
    args = {"max_tokens": 40, "temperature": 0.0, "grammar": LlamaGrammar.from_string("root ::= [a-e]{40}")}
    whole = llm.create_completion("a", **args)["choices"][0]["text"]
    assert len(whole) == 40
    stop = whole[20:23]
    expected = whole[: whole.find(stop)]
    chunks = list(llm.create_completion("a", stream=True, stop=["zz", stop, whole[21:30]], **args))
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert llm.create_completion("a", stop=[stop], **args)["choices"][0]["text"] == expected


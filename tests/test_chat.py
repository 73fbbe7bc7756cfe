"""Chat completions on the real models, and llama.cpp's template engine and tool-call parser on the
chat templates of the vocab-only GGUFs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama, _core
from llama_rewire.engine import SamplingParams
from llama_rewire.llama_chat_format import Jinja2ChatFormatter

VOCABS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def chat_llm(request: pytest.FixtureRequest) -> Iterator[Llama]:
    from llama_rewire.models import fetch

    model = Llama(str(fetch(request.param, progress=False)), n_ctx=1024, n_threads=2, verbose=False)
    yield model
    model.close()


def content(out: Any) -> str:
    return str(out["choices"][0]["message"]["content"])


# -- real models ----------------------------------------------------------------------------------

@pytest.mark.real_model
def test_chat_uses_the_gguf_template_or_the_family_format(chat_llm: Llama) -> None:
    has_template = "tokenizer.chat_template" in chat_llm.metadata
    assert chat_llm.chat_format == ("chat_template.default" if has_template else "gemma")
    out = chat_llm.create_chat_completion(MESSAGES, max_tokens=16, temperature=0.0)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


@pytest.mark.real_model
def test_template_chat_equals_a_completion_of_the_independently_rendered_prompt(smollm2_path: Path) -> None:
    """llama.cpp's Jinja engine and the jinja2 package render SmolLM2's template to the same prompt."""
    with Llama(str(smollm2_path), n_ctx=1024, verbose=False) as m:
        chat = m.create_chat_completion(MESSAGES, max_tokens=24, temperature=0.0)
        fmt = Jinja2ChatFormatter(m.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
        prompt = fmt(messages=MESSAGES).prompt
        tokens = m.tokenize(prompt.encode(), add_bos=True, special=True)
        # From an empty cache, as the chat was: a cache hit would evaluate the last prompt token alone, and
        # a batch of one runs other kernels than a batch of many (on AMX CPUs the greedy answer flips).
        m.reset()
        plain = m.create_completion(tokens, max_tokens=24, temperature=0.0, stop=["<|im_end|>"])
        assert content(chat) == plain["choices"][0]["text"]
        assert chat["usage"]["prompt_tokens"] == len(tokens)


@pytest.mark.real_model
def test_streamed_chat_concatenates_to_the_plain_answer(chat_llm: Llama) -> None:
    whole = chat_llm.create_chat_completion(MESSAGES, max_tokens=20, temperature=0.0)
    stream = chat_llm.create_chat_completion(MESSAGES, max_tokens=20, temperature=0.0, stream=True)
    chunks = list(stream)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == content(whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert stream.usage == whole["usage"]


@pytest.mark.real_model
def test_seeded_chat_is_reproducible(chat_llm: Llama) -> None:
    kw: dict[str, Any] = {"max_tokens": 16, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    a = content(chat_llm.create_chat_completion(MESSAGES, seed=11, **kw))
    b = content(chat_llm.create_chat_completion(MESSAGES, seed=11, **kw))
    assert a == b


@pytest.mark.real_model
def test_forced_tool_call_yields_valid_arguments(chat_llm: Llama) -> None:
    msgs = [{"role": "user", "content": "What's the weather like in Paris for the next 3 days?"}]
    out = chat_llm.create_chat_completion(
        msgs, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80, temperature=0.0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert set(args) == {"city", "unit", "days"}
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["days"], int)


@pytest.mark.real_model
def test_required_tool_choice_picks_one_of_the_tools(chat_llm: Llama) -> None:
    msgs = [{"role": "user", "content": "What time is it in Tokyo?"}]
    out = chat_llm.create_chat_completion(msgs, tools=[WEATHER, TIME], tool_choice="required",
                                          max_tokens=80, temperature=0.0)
    calls = out["choices"][0]["message"]["tool_calls"]
    assert calls and calls[0]["function"]["name"] in ("get_weather", "get_time")
    assert isinstance(json.loads(calls[0]["function"]["arguments"]), dict)


@pytest.mark.real_model
def test_response_format_json_schema_is_followed(smollm2_path: Path) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
              "required": ["name", "legs"], "additionalProperties": False}
    with Llama(str(smollm2_path), n_ctx=1024, verbose=False) as m:
        msgs = [{"role": "user", "content": "Describe a cat."}]
        for fmt in ({"type": "json_object", "schema": schema},
                    {"type": "json_schema", "json_schema": {"name": "animal", "schema": schema}}):
            out = m.create_chat_completion(msgs, response_format=fmt, max_tokens=60, temperature=0.0)
            doc = json.loads(content(out))
            assert set(doc) == {"name", "legs"} and isinstance(doc["legs"], int)
        out = m.create_chat_completion(msgs, response_format={"type": "json_object"}, max_tokens=120,
                                       temperature=0.0)
        assert isinstance(json.loads(content(out)), dict)


@pytest.mark.real_model
def test_chat_logprobs(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=1024, verbose=False) as m:
        out = m.create_chat_completion(MESSAGES, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=2)
        entries = out["choices"][0]["logprobs"]["content"]
        assert len(entries) == out["usage"]["completion_tokens"]
        assert "".join(e["token"] for e in entries) == content(out)
        for e in entries:
            assert len(e["top_logprobs"]) >= 2
            assert e["logprob"] <= 0.0
            assert e["logprob"] == pytest.approx(max(t["logprob"] for t in e["top_logprobs"]), abs=1e-5)


@pytest.mark.real_model
def test_rewiring_changes_the_chat_and_matches_a_fresh_rewired_model(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=1024, verbose=False) as m:
        before = content(m.create_chat_completion(MESSAGES, max_tokens=12, temperature=0.0))
        m.set_activations("*:relu")
        after = content(m.create_chat_completion(MESSAGES, max_tokens=12, temperature=0.0))
        with Llama(str(smollm2_path), n_ctx=1024, activations="*:relu", verbose=False) as fresh:
            assert after == content(fresh.create_chat_completion(MESSAGES, max_tokens=12, temperature=0.0))
        assert after != before


@pytest.mark.real_model
def test_bad_chat_requests_raise_value_errors(smollm2_path: Path) -> None:
    with Llama(str(smollm2_path), n_ctx=256, verbose=False) as m:
        with pytest.raises(TypeError):
            m.create_chat_completion("hello")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            m.create_chat_completion(MESSAGES, tools=[WEATHER],
                                     tool_choice={"type": "function", "function": {"name": "nope"}})
        with pytest.raises(ValueError, match="context window"):
            m.create_chat_completion([{"role": "user", "content": "word " * 400}], max_tokens=4)
        assert content(m.create_chat_completion(MESSAGES, max_tokens=2, temperature=0.0))


# -- templates of the vocab-only GGUFs ------------------------------------------------------------

def _vocabs_with_templates() -> list[str]:
    names = []
    for path in sorted(VOCABS.glob("ggml-vocab-*.gguf")):
        m = _core.Model(str(path), vocab_only=True)
        if m.chat_template():
            names.append(path.name)
        m.close()
    return names


def test_some_vocab_ggufs_carry_templates() -> None:
    assert len(_vocabs_with_templates()) >= 4


@pytest.mark.parametrize("name", _vocabs_with_templates())
def test_native_rendering_equals_jinja2_rendering(name: str) -> None:
    """llama.cpp's template engine and the jinja2 package agree on every vocab GGUF's template."""
    model = _core.Model(str(VOCABS / name), vocab_only=True)
    llm = Llama(str(VOCABS / name), vocab_only=True, verbose=False)
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
                {"role": "user", "content": "How are you?"}]
    native = _core.ChatTemplates(model).apply(json.dumps(messages), enable_thinking=False).prompt.decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
    eos = llm.detokenize([llm.token_eos()], special=True).decode() if llm.token_eos() >= 0 else ""
    rendered = Jinja2ChatFormatter(model.chat_template() or "", eos_token=eos, bos_token=bos)(
        messages=messages).prompt
    if model.add_bos() and rendered.startswith(bos):
        rendered = rendered[len(bos):]  # llama.cpp leaves the BOS to the tokenizer
    assert "How are you?" in native
    assert native == rendered


def test_a_tool_calling_template_gives_a_lazy_grammar_and_parses_calls() -> None:
    model = _core.Model(str(VOCABS / "ggml-vocab-gemma-4.gguf"), vocab_only=True)
    tmpl = _core.ChatTemplates(model)
    render = tmpl.apply(json.dumps([{"role": "user", "content": "Weather in Paris?"}]),
                        tools=json.dumps([WEATHER]), tool_choice="auto")
    assert "get_weather" in render.prompt.decode()
    assert render.grammar and render.grammar_lazy and render.grammar_triggers
    call = json.loads(render.parse('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,unit:<|"|>celsius<|"|>,'
                                   'days:3}<tool_call|>'))
    (tool_call,) = call["tool_calls"]
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius", "days": 3}
    assert json.loads(render.parse("It is sunny."))["content"] == "It is sunny."
    # the grammar compiles against the vocabulary, lazily: before its trigger any token may be sampled
    words = [v for kind, v, _ in render.grammar_triggers if kind == "word"]
    sampler = _core.Sampler(model, SamplingParams(temperature=0.0, grammar=render.grammar, grammar_lazy=True,
                                                  trigger_patterns=tuple(words)))
    logits = np.zeros(model.n_vocab(), dtype=np.float32)
    free = model.tokenize(b"Sunny", add_special=False)[0]
    logits[free] = 10.0
    assert sampler.sample_logits(logits) == free


def test_templates_reject_bad_input() -> None:
    model = _core.Model(str(VOCABS / "ggml-vocab-qwen2.gguf"), vocab_only=True)
    tmpl = _core.ChatTemplates(model)
    with pytest.raises(ValueError):
        tmpl.apply("not json")
    with pytest.raises(ValueError):
        tmpl.apply(json.dumps([{"role": "user", "content": "x"}]), tools="[{]")
    with pytest.raises(ValueError):
        _core.ChatTemplates(None, "{% if %}")
    with pytest.raises(ValueError):
        _core.ChatTemplates(None, "")

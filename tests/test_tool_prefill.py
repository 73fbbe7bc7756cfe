"""Forced and required tool calls on a template that knows tools (Qwen2.5) always yield a call.

llama.cpp's tool-call grammar for a forced/required choice starts with the template's generation
prompt (``<|im_start|>assistant\\n``), which the rendered prompt already ends with; llama.cpp feeds those
tokens to the grammar before sampling (common_sampler_init's prefill). Without that the grammar made
the model write the generation prompt again, and the output never parsed as a call (no ``tool_calls``,
``finish_reason="length"``). A required call also leaves no room for free text before it (llama.cpp's
grammar allowed any text up to ``<tool_call>``). The model here is random (its byte tokens can write any
text), so a call can only come out of the grammar.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import template_gen as tg

from llama_rewire import Llama, _chat

TEMPLATES = Path(__file__).parents[1] / "vendor" / "llama.cpp" / "models" / "templates"
QWEN = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"
TOOLS = [
    {"type": "function", "function": {
        "name": "set_unit", "description": "Choose the temperature unit",
        "parameters": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["unit"]}}},
    {"type": "function", "function": {
        "name": "set_mode", "description": "Choose the mode",
        "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}},
]
MESSAGES = [{"role": "user", "content": "Use celsius."}]


@pytest.fixture(scope="module")
def qwen_tiny(tiny: Callable[[str], tuple[Path, Any]], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Llama]:
    base, _ = tiny("llama")  # RoPE: no limit on positions; byte tokens: can write any text
    path = tg.write_with_template(base, QWEN.read_text(), tmp_path_factory.mktemp("qwen") / "qwen.gguf")
    llm = Llama(str(path), n_ctx=2048, verbose=False)
    yield llm
    llm.close()


def _calls(out: dict[str, Any]) -> list[dict[str, Any]]:
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert calls, choice
    for call in calls:
        json.loads(call["function"]["arguments"])  # the arguments parse
    return list(calls)


def test_the_grammar_starts_with_the_generation_prompt(qwen_tiny: Llama) -> None:
    render = _chat.TemplateChatHandler().render(qwen_tiny, MESSAGES, tools=TOOLS, tool_choice="required")
    assert render.generation_prompt == "<|im_start|>assistant\n"
    assert render.prompt.decode().endswith(render.generation_prompt)
    assert render.grammar and not render.grammar_lazy


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_tool_choice_yields_a_call(qwen_tiny: Llama, seed: int) -> None:
    out = qwen_tiny.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=300,
                                           seed=seed, temperature=1.0)
    assert {c["function"]["name"] for c in _calls(out)} <= {"set_unit", "set_mode"}


@pytest.mark.parametrize("seed", [1, 2])
def test_forced_tool_choice_yields_that_call(qwen_tiny: Llama, seed: int) -> None:
    forced = {"type": "function", "function": {"name": "set_mode"}}
    out = qwen_tiny.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=forced, max_tokens=300,
                                           seed=seed, temperature=1.0)
    calls = _calls(out)
    assert [c["function"]["name"] for c in calls] == ["set_mode"]
    assert isinstance(json.loads(calls[0]["function"]["arguments"])["on"], bool)


def test_forced_call_streams(qwen_tiny: Llama) -> None:
    forced = {"type": "function", "function": {"name": "set_unit"}}
    chunks = list(qwen_tiny.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=forced, max_tokens=300,
                                                   seed=4, stream=True))
    calls = [c for ch in chunks for c in ch["choices"][0]["delta"].get("tool_calls", [])]
    assert calls and calls[0]["function"]["name"] == "set_unit"
    assert json.loads(calls[0]["function"]["arguments"])["unit"] in ("c", "f")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

"""Chat with the template stored in the GGUF, rendered by llama.cpp's own Jinja engine.

Without tools, the rendered prompt goes through the generic formatter handler of
:mod:`llama_rewire.llama_chat_format` (which also handles ``response_format`` and generic tool calls).
When the template itself knows how to call tools (e.g. Qwen, Llama 3.x, Hermes), llama.cpp gives a
grammar, its triggers and a parser for the model's tool-call syntax: those are used instead, and the
output is parsed into ``tool_calls``.

Control tokens typed in the request (``<|im_end|>`` in a message, a tool's description, a call's
arguments) stay text: the render records which of its text came from the request, and where a template
transforms request text (``|tojson``, ``join``, string concatenation) that record is lost, so a request
holding the text of a control token is rendered a second time with each such text swapped for a
sentinel of digits, and the sentinels are tokenized back as plain text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .chat_completion import (
    ChatModel,
    ToolPlan,
    check_roles,
    sentinels_back,
    tokenize_prompt_parts,
    with_sentinels,
)
from .chat_formats import ChatFormatterResponse
from .engine.sampling import SamplingParams
from .llama_grammar import LlamaGrammar

DEFAULT_TEMPLATE_FORMAT = "chat_template.default"

# For a GGUF without a chat template: the published format of the architecture's model family.
FORMAT_BY_ARCH = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen": "qwen",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "phi3": "phi-3",
    "mistral": "mistral-instruct",
}


class SwappedRender:
    """A render whose prompt was rebuilt from a second render with the request's control-token texts
    swapped for sentinels; everything else (grammar, stops, parser) is the render of the request as is."""

    def __init__(self, render: _core.ChatRender, prompt: bytes, parts: list[tuple[bytes, bool]]) -> None:
        self._render = render
        self.prompt = prompt
        self.prompt_parts = parts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._render, name)


def render_with_typed_controls_as_text(render: Any, llama: ChatModel, request: dict[str, Any]) -> Any:
    """``render(request)``; where the request holds control-token texts, a SwappedRender whose prompt
    parts keep each of them plain text wherever the template put it."""
    rendered = render(request)
    swap = with_sentinels(llama, request)
    if swap is None:
        return rendered
    swapped, sentinel, found = swap
    # the second render's parts keep what came from the request (the text around the sentinels, which
    # the template may still have transformed into a control token's text), each sentinel its own text
    parts = sentinels_back(render(swapped).prompt_parts, sentinel, found)
    return SwappedRender(rendered, b"".join(p for p, _ in parts), parts)


def templates_of(llama: ChatModel) -> _core.ChatTemplates:
    if llama._chat_templates is None:
        llama._chat_templates = _core.ChatTemplates(llama.model)
    templates: _core.ChatTemplates = llama._chat_templates
    return templates


@dataclass
class TemplateResponse(ChatFormatterResponse):
    """A rendered template that knows which of its text came from the request (``from_user``): the
    chat handler tokenizes that text without turning typed control tokens into real ones."""

    prompt_parts: list[tuple[bytes, bool]] = field(default_factory=list)


def prompt_tokens(llama: ChatModel, render: _core.ChatRender) -> list[int]:
    """The rendered prompt's tokens (with the model's BOS if it wants one), control tokens only where
    the template put them."""
    return tokenize_prompt_parts(llama, render.prompt_parts, add_bos=True)


class TemplateChatHandler:
    """The handler for ``chat_format=None`` on a model whose GGUF carries a chat template."""

    def render(
        self,
        llama: ChatModel,
        messages: list[dict[str, Any]],
        *,
        tools: list[Any] | None = None,
        tool_choice: str = "auto",
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
    ) -> _core.ChatRender:
        """Thinking is off unless asked for: the template then renders as it does without the variable
        on templates that support both, and small models answer directly."""
        try:
            request = json.loads(json.dumps({"messages": messages, "tools": tools or []}))
        except (TypeError, ValueError) as e:
            raise TypeError(f"messages and tools must be JSON (strings, numbers, lists, dicts): {e}") \
                from None

        def apply(req: dict[str, Any]) -> _core.ChatRender:
            return templates_of(llama).apply(
                json.dumps(req["messages"]),
                tools=json.dumps(req["tools"]) if req["tools"] else "",
                tool_choice=tool_choice,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
            )

        return render_with_typed_controls_as_text(apply, llama, request)  # type: ignore[no-any-return]

    def __call__(
        self,
        *,
        llama: ChatModel,
        messages: list[dict[str, Any]],
        functions: Any = None,
        function_call: Any = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        stream: bool = False,
        enable_thinking: bool = False,
        **kwargs: Any,
    ) -> Any:
        from . import llama_chat_format

        check_roles(messages)
        plan = ToolPlan.from_request(functions, function_call, tools, tool_choice)
        if plan.mode != "none":
            render = self.render(
                llama,
                messages,
                tools=[plan.forced] if plan.forced is not None else plan.tools,
                tool_choice="auto" if plan.mode == "auto" else "required",
                enable_thinking=enable_thinking,
            )
            if render.grammar:  # the template knows tool calling: its grammar and parser
                return _native_tool_completion(llama, render, stream=stream, **kwargs)

        def formatter(*, messages: list[dict[str, Any]], **_: Any) -> Any:
            r = self.render(llama, messages, enable_thinking=enable_thinking)
            return TemplateResponse(
                prompt=r.prompt.decode("utf-8", errors="replace"), stop=list(r.additional_stops),
                prompt_parts=list(r.prompt_parts),
            )

        handler = llama_chat_format.chat_formatter_to_chat_completion_handler(formatter)
        return handler(
            llama=llama, messages=messages, functions=functions, function_call=function_call, tools=tools,
            tool_choice=tool_choice, stream=stream, **kwargs
        )


def _native_tool_completion(
    llama: ChatModel,
    render: _core.ChatRender,
    *,
    stream: bool,
    stop: Any = None,
    response_format: Any = None,
    grammar: Any = None,
    logprobs: Any = None,
    top_logprobs: Any = None,
    max_tokens: int | None = None,
    model: str | None = None,
    **kwargs: Any,
) -> Any:
    """Generate under the template's tool-call grammar and parse the output into a chat message."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    lazy = None
    if render.grammar_lazy:
        patterns, tokens = [], []
        for kind, value, token in render.grammar_triggers:
            if kind == "token":
                tokens.append(int(token))
            elif kind == "word":
                patterns.append(_regex_escape(value))
            elif kind == "pattern_full":
                patterns.append(
                    ("" if value.startswith("^") else "^") + value + ("" if value.endswith("$") else "$")
                )
            else:
                patterns.append(value)
        lazy = (patterns, tokens)
    sampling = {k: v for k, v in kwargs.items() if k in _SAMPLING_KEYS}
    grammar_ = PrefilledGrammar(_grammar=render.grammar)
    if lazy is None:
        # llama.cpp's common_sampler_init: a (non-lazy) tool-call grammar starts with the generation
        # prompt, which the rendered prompt already ends with, so the grammar is fed those tokens first
        grammar_.prefill = generation_prompt_tokens(llama, render.generation_prompt)
    out = llama.create_completion(
        prompt=prompt_tokens(llama, render),
        max_tokens=max_tokens,
        stream=False,
        stop=stops + list(render.additional_stops),
        grammar=grammar_,
        _grammar_lazy=lazy,
        model=model,
        **sampling,
    )
    assert isinstance(out, dict)
    text = out["choices"][0]["text"]
    message = json.loads(render.parse(text, False))
    tool_calls = message.get("tool_calls") or []
    for call in tool_calls:
        call.setdefault("id", f"call_{uuid.uuid4().hex[:24]}")
        call.setdefault("type", "function")
    msg: dict[str, Any] = {"role": "assistant", "content": message.get("content") or None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    finish = "tool_calls" if tool_calls else out["choices"][0]["finish_reason"]
    result = {
        "id": "chat" + out["id"],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": out["model"],
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
        "usage": out["usage"],
    }
    if not stream:
        return result
    return _Replay(_as_chunks(result), out["usage"])


class PrefilledGrammar(LlamaGrammar):
    """A grammar whose first tokens are already in the prompt: the sampler accepts ``prefill`` into
    the grammar before the first token is drawn."""

    prefill: list[int]

    def __init__(self, *, _grammar: str) -> None:
        super().__init__(_grammar=_grammar)
        self.prefill = []


def generation_prompt_tokens(llama: ChatModel, text: str) -> list[int]:
    """The tokens of the generation prompt, as llama.cpp's sampler computes its prefill: special tokens
    parsed, no BOS, and without a leading space token that some tokenizers put before the first
    special token when the text itself does not start with a space."""
    tokens = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if tokens and text and not text[0].isspace():
        first = llama.detokenize([tokens[0]], special=True)
        if first[:1].isspace():
            tokens = tokens[1:]
    return tokens


class _Replay:
    """A finished chat completion replayed as a stream (tool calls are only known at the end)."""

    def __init__(self, chunks: Iterator[dict[str, Any]], usage: dict[str, int]) -> None:
        self._chunks = chunks
        self.usage = usage

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def close(self) -> None:
        pass


def _as_chunks(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    base = {
        "id": result["id"],
        "object": "chat.completion.chunk",
        "created": result["created"],
        "model": result["model"],
    }
    msg = result["choices"][0]["message"]
    yield {
        **base,
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}],
    }
    delta: dict[str, Any] = {}
    if msg.get("content"):
        delta["content"] = msg["content"]
    if msg.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]
    if delta:
        yield {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
    yield {
        **base,
        "choices": [
            {
                "index": 0,
                "delta": {},
                "logprobs": None,
                "finish_reason": result["choices"][0]["finish_reason"],
            }
        ],
    }


# what a chat request passes on to create_completion as it is: the sampling parameters, seed and callbacks
_SAMPLING_KEYS = SamplingParams.names() | {"seed", "logits_processor", "stopping_criteria", "tfs_z"}


def _regex_escape(s: str) -> str:
    return "".join("\\" + c if c in r".^$*+?()[]{}|\/-" else c for c in s)

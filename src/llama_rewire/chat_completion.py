"""Chat completions on top of text completions.

A chat completion handler formats the messages into a prompt (a :class:`ChatFormatter`), runs
``llama.create_completion`` on it and reshapes the ``text_completion`` result (or stream of chunks) into
OpenAI's ``chat.completion`` (or ``chat.completion.chunk``) shape.

Tools and ``response_format`` are handled here, for every formatter:

- ``response_format={"type": "json_object"}`` constrains the output to JSON; with a ``"schema"`` (or
  OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}``) to that JSON schema.
- A forced tool (``tool_choice={"type": "function", "function": {"name": N}}``, or ``"required"`` with one
  tool) constrains the output to the tool's parameter schema; the output becomes the call's arguments.
- ``"required"`` with several tools constrains the output to ``{"name": ..., "arguments": {...}}``.
- ``"auto"`` (the default when tools are given) tells the model, in a system note, how to call a tool;
  an output that parses as such a call (optionally inside ``<tool_call>`` tags) becomes a tool call,
  anything else the message content. A chat template that renders ``tools`` itself gets no note.
"""

from __future__ import annotations

import bisect
import json
import re
import secrets
import sys
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union, cast

from .chat_formats import ChatFormatter, content_text

if TYPE_CHECKING:
    from . import _core
    from .llama_grammar import LlamaGrammar
    from .llama_types import (
        ChatCompletionRequestMessage,
        CreateChatCompletionResponse,
        CreateChatCompletionStreamResponse,
    )

ChatCompletionResult = Union["CreateChatCompletionResponse", Iterator["CreateChatCompletionStreamResponse"]]


class ChatModel(Protocol):
    """What chat formats and handlers use of the model they complete with: a ``Llama``, or the view of it
    that runs completions on its parallel slots. (Handlers also read ``verbose`` where it is set.)"""

    @property
    def model(self) -> _core.Model: ...
    def n_vocab(self) -> int: ...
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes: ...
    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any: ...

    # the Llama's caches: its vocabulary's control-token texts (a pattern), its chat templates
    _control_text_pattern: tuple[re.Pattern[str] | None] | None
    _chat_templates: Any


class LlamaChatCompletionHandler(Protocol):
    """``handler(*, llama, messages, ...)``: see :func:`chat_formatter_to_chat_completion_handler`;
    messages are ``ChatCompletionRequestMessage`` dicts."""

    def __call__(self, *, llama: ChatModel, messages: list[Any], **kwargs: Any) -> ChatCompletionResult: ...


# -- tools ---------------------------------------------------------------------------------------

_TOOL_CALL_TAGS = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
# what a tool call may start with; output that cannot is streamed as content at once
_CALL_OPENERS = ("{", "[", "<tool_call>", "```", "<|python_tag|>")


def _new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if s]


def _tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("function", {}).get("name", ""))


def _parameters(tool: Mapping[str, Any]) -> Any:
    return tool.get("function", {}).get("parameters") or {"type": "object", "properties": {}}


def _grammar_from_schema(schema: Any, verbose: bool) -> LlamaGrammar:
    """A grammar for a tool schema; falls back to generic JSON if the schema cannot be converted."""
    from .llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=verbose)
    except Exception as e:  # a schema feature the converter lacks: any JSON, as llama-cpp-python does
        if verbose:
            print(f"chat: falling back to generic JSON, tool schema not convertible: {e}", file=sys.stderr)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=verbose)


def parse_tool_calls(text: str, names: Sequence[str]) -> list[dict[str, Any]] | None:
    """The tool calls in a model's output, or None when it is not (only) tool calls.

    Accepts one ``{"name": N, "arguments": {...}}`` object (``"parameters"`` is taken for
    ``"arguments"``) or a list of them, bare, in a ```json fence or in ``<tool_call>`` tags; each name
    must be one of ``names``.
    """
    s = text.strip().removeprefix("<|python_tag|>").strip()
    fence = _FENCE.match(s)
    if fence:
        s = fence.group(1)
    tagged = _TOOL_CALL_TAGS.findall(s)
    if tagged:
        if _TOOL_CALL_TAGS.sub("", s).strip():
            return None
        pieces = tagged
    else:
        pieces = [s]
    objs: list[Any] = []
    for piece in pieces:
        try:
            obj = json.loads(piece)
        except ValueError:
            return None
        objs.extend(obj if isinstance(obj, list) else [obj])
    calls = []
    for obj in objs:
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if not isinstance(args, (dict, str)):
            return None
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append({"id": _new_call_id(), "type": "function",
                      "function": {"name": obj["name"], "arguments": arguments}})
    return calls or None


@dataclass
class ToolPlan:
    """What a request's tools ask of the model: mode none, auto, forced (one named tool) or required."""

    mode: str = "none"
    tools: list[Mapping[str, Any]] = field(default_factory=list)
    forced: Mapping[str, Any] | None = None
    legacy: bool = False  # the request used `functions`: the reply also carries `function_call`
    by_name: bool = False  # forced by naming the tool: the prompt is llama-cpp-python's, with no note

    @classmethod
    def from_request(cls, functions: Any, function_call: Any, tools: Any, tool_choice: Any) -> ToolPlan:
        legacy = functions is not None and tools is None
        if legacy:
            tools = [{"type": "function", "function": f} for f in functions]
        if function_call is not None and tool_choice is None:
            if function_call in ("none", "auto"):
                tool_choice = function_call
            elif isinstance(function_call, Mapping) and "name" in function_call:
                tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
        tools = list(tools or [])
        if not tools or tool_choice == "none":
            return cls("none", tools, legacy=legacy)
        if tool_choice in (None, "auto"):
            return cls("auto", tools, legacy=legacy)
        if tool_choice == "required":
            if len(tools) == 1:
                return cls("forced", tools, tools[0], legacy=legacy)
            return cls("required", tools, legacy=legacy)
        if isinstance(tool_choice, Mapping):
            name = tool_choice.get("function", {}).get("name")
            tool = next((t for t in tools if _tool_name(t) == name), None)
            if tool is None:
                raise ValueError(f"Tool choice '{name}' not found in tools: tool_choice must name one")
            return cls("forced", tools, tool, legacy=legacy, by_name=True)
        raise ValueError(
            f"tool_choice must be 'none', 'auto', 'required' or a named tool, got {tool_choice!r}"
        )

    @property
    def names(self) -> list[str]:
        return [_tool_name(t) for t in self.tools]

    def note(self) -> str:
        """The instructions the model gets about the tools (empty in mode none)."""
        if self.mode == "none":
            return ""
        if self.forced is not None:
            fn = self.forced.get("function", {})
            about = f" ({fn['description']})" if fn.get("description") else ""
            return (f"Call the tool `{_tool_name(self.forced)}`{about} now. Reply with nothing but its "
                    f"arguments, as a JSON object matching this JSON schema: "
                    f"{json.dumps(_parameters(self.forced), ensure_ascii=False)}")
        lines = ["You can call these tools:"]
        for tool in self.tools:
            fn = tool.get("function", {})
            spec = {"name": fn.get("name"), "description": fn.get("description", ""),
                    "parameters": _parameters(tool)}
            lines.append(json.dumps(spec, ensure_ascii=False))
        lines.append('To call a tool, reply with nothing but a JSON object: {"name": <tool name>, '
                     '"arguments": <an object matching its parameters>}.')
        if self.mode == "required":
            lines.append("You must call one of the tools now.")
        else:
            lines.append("If no tool is needed, answer normally.")
        return "\n".join(lines)

    def grammar(self, verbose: bool) -> LlamaGrammar | None:
        if self.forced is not None:
            return _grammar_from_schema(_parameters(self.forced), verbose)
        if self.mode == "required":
            variants = [
                {
                    "type": "object",
                    "properties": {"name": {"const": _tool_name(t)}, "arguments": _parameters(t)},
                    "required": ["name", "arguments"],
                }
                for t in self.tools
            ]
            return _grammar_from_schema({"anyOf": variants}, verbose)
        return None

    def calls(self, text: str) -> list[dict[str, Any]] | None:
        """The tool calls in a complete output (None: the output is content)."""
        if self.forced is not None:
            return [{"id": _new_call_id(), "type": "function",
                     # as generated (the grammar allows a space after the arguments), as llama-cpp-python
                     "function": {"name": _tool_name(self.forced), "arguments": text}}]
        if self.mode in ("auto", "required"):
            return parse_tool_calls(text, self.names)
        return None

    @property
    def finish_reason(self) -> str:
        return "function_call" if self.legacy else "tool_calls"


def with_tool_note(
    messages: Sequence[Mapping[str, Any]], note: str, system_role: bool
) -> list[dict[str, Any]]:
    """messages with note added to the system message; without one, as a new system message
    (system_role) or in front of the first user message."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        text = content_text(out[0].get("content"))
        out[0]["content"] = f"{text}\n\n{note}" if text else note
        return out
    if system_role:
        return [{"role": "system", "content": note}, *out]
    for m in out:
        if m.get("role") == "user":
            text = content_text(m.get("content"))
            m["content"] = f"{note}\n\n{text}"
            return out
    return [{"role": "user", "content": note}, *out]


# -- response_format -----------------------------------------------------------------------------


def grammar_for_response_format(response_format: Mapping[str, Any], verbose: bool) -> LlamaGrammar | None:
    """The grammar a ``response_format`` asks for (None for ``{"type": "text"}``)."""
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    else:
        raise ValueError(f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}")
    from .llama_grammar import JSON_GBNF, LlamaGrammar

    if schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=verbose)
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise TypeError(f"response_format: the schema is not JSON: {e}") from None
    try:
        return LlamaGrammar.from_json_schema(text, verbose=verbose)
    except ValueError as e:
        raise type(e)(f"response_format: {e}") from None


# -- completion -> chat --------------------------------------------------------------------------


def convert_logprobs(logprobs: Mapping[str, Any] | None, top_n: int | None = None) -> dict[str, Any] | None:
    """Text completion logprobs (parallel lists) to the chat shape (one entry per token).

    top_n keeps that many of each token's alternatives, most likely first (all when None).
    """
    if logprobs is None:
        return None
    content = []
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        alternatives = sorted((top or {}).items(), key=lambda kv: -kv[1])
        if top_n is not None:
            alternatives = alternatives[:top_n]
        content.append({
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in alternatives
            ],
        })
    return {"content": content, "refusal": None}


def _message(text: str, plan: ToolPlan) -> tuple[dict[str, Any], str | None]:
    """The assistant message for a complete output, and the finish reason it imposes (if any)."""
    calls = plan.calls(text)
    if calls is None:
        return {"role": "assistant", "content": text}, None
    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
    if plan.legacy:
        message["function_call"] = dict(calls[0]["function"])
    return message, plan.finish_reason


def completion_to_chat(completion: Mapping[str, Any], plan: ToolPlan | None = None,
                       top_logprobs: int | None = None) -> dict[str, Any]:
    """A ``text_completion`` dict as a ``chat.completion`` dict."""
    plan = plan or ToolPlan()
    choice = completion["choices"][0]
    message, finish = _message(choice["text"], plan)
    out = {
        "id": "chat" + completion["id"],
        "object": "chat.completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": convert_logprobs(choice.get("logprobs"), top_logprobs),
            "finish_reason": finish or choice["finish_reason"],
        }],
    }
    if "usage" in completion:
        out["usage"] = completion["usage"]
    return out


def _could_open_call(text: str) -> bool:
    s = text.lstrip()
    return any(s.startswith(p) or p.startswith(s) for p in _CALL_OPENERS)


def chunks_to_chat_chunks(chunks: Iterator[Mapping[str, Any]], plan: ToolPlan | None = None,
                          top_logprobs: int | None = None) -> Generator[dict[str, Any], None, None]:
    """A stream of ``text_completion`` chunks as ``chat.completion.chunk`` dicts: a first chunk with
    the role, content (or tool call) deltas, and a last chunk with an empty delta and the finish reason.

    In auto/required tool mode, output that may be a tool call is held back until it is complete.
    """
    plan = plan or ToolPlan()
    meta: dict[str, Any] = {}
    held = ""  # text held back while it may still turn out to be a tool call
    held_logprobs: list[Any] = []
    holding = plan.mode in ("auto", "required")
    forced_id = _new_call_id()

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**meta, "choices": [choice]}

    def content(text: str, logprobs: list[Any]) -> dict[str, Any]:
        return chunk({"content": text}, logprobs={"content": logprobs, "refusal": None} if logprobs else None)

    finished = False
    for source in chunks:  # read to the end, for the completion stream to settle its usage
        if finished:
            continue
        choice = source["choices"][0]
        if not meta:
            meta = {"id": "chat" + source["id"], "object": "chat.completion.chunk",
                    "created": source["created"], "model": source["model"]}
            if plan.forced is not None:
                call = {"index": 0, "id": forced_id, "type": "function",
                        "function": {"name": _tool_name(plan.forced), "arguments": ""}}
                yield chunk({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                yield chunk({"role": "assistant"})
        text = choice["text"]
        converted = convert_logprobs(choice.get("logprobs"), top_logprobs)
        entries = converted["content"] if converted else []
        if text and plan.forced is not None:
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": text}}]},
                        logprobs=converted)
        elif text and holding:
            held += text
            held_logprobs += entries
            if not _could_open_call(held):
                holding = False
                yield content(held, held_logprobs)
                held, held_logprobs = "", []
        elif text:
            yield content(text, entries)
        if choice["finish_reason"] is None:
            continue
        finish = choice["finish_reason"]
        if plan.forced is not None:
            finish = plan.finish_reason
        elif held:
            calls = plan.calls(held)
            if calls is None:
                yield content(held, held_logprobs)
            else:
                deltas = [{"index": i, **call} for i, call in enumerate(calls)]
                yield chunk({"tool_calls": deltas},
                            logprobs={"content": held_logprobs, "refusal": None} if held_logprobs else None)
                finish = plan.finish_reason
        yield chunk({}, finish)
        finished = True


class ChatCompletionStream:
    """The chunks of a streamed chat completion; ``close()`` and ``usage`` (set once the stream is
    exhausted) are those of the underlying completion stream."""

    def __init__(self, source: Iterator[Any], chunks: Generator[dict[str, Any], None, None]) -> None:
        self._source = source
        self._chunks = chunks

    def __iter__(self) -> ChatCompletionStream:
        return self

    def __next__(self) -> CreateChatCompletionStreamResponse:
        return cast("CreateChatCompletionStreamResponse", next(self._chunks))

    def close(self) -> None:
        self._chunks.close()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    @property
    def usage(self) -> dict[str, int] | None:
        usage: dict[str, int] | None = getattr(self._source, "usage", None)
        return usage


# -- roles and the prompt's tokens -----------------------------------------------------------------

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


def check_roles(messages: Sequence[Any]) -> None:
    """Every message's ``role`` is one of :data:`CHAT_ROLES` (a template inserts the role as is, so a
    free-form role could write any text, control tokens included, into the prompt)."""
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise ValueError(f"unknown message role {role!r} in messages[{i}].role (one of "
                             f"{', '.join(CHAT_ROLES)})")


def control_texts(llama: ChatModel) -> re.Pattern[str] | None:
    """A pattern matching the text of any control token of the vocabulary (cached per Llama)."""
    cached: tuple[re.Pattern[str] | None] | None = getattr(llama, "_control_text_pattern", None)
    if cached is None:
        model = getattr(llama, "model", None)
        if not hasattr(model, "token_is_control"):  # an object standing in for a Llama: no vocabulary
            return None
        texts = {model.token_to_piece(t, special=True).decode("utf-8", errors="ignore")
                 for t in range(llama.n_vocab()) if model.token_is_control(t)}
        texts.discard("")
        pattern = re.compile(_trie_pattern(texts)) if texts else None
        cached = (pattern,)
        llama._control_text_pattern = cached
    return cached[0]


def _trie_pattern(words: set[str]) -> str:
    """A regular expression for any of words (the longest where several match), factored by common
    prefixes, so that a vocabulary of thousands of control tokens is matched in one pass."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


def _swap_control_texts(value: Any, pattern: re.Pattern[str], sentinel: str, found: list[str]) -> Any:
    """value with every control-token text in its strings (and keys) swapped for a numbered sentinel."""
    if isinstance(value, str):
        def swap(m: re.Match[str]) -> str:
            found.append(m.group(0))
            return f"{sentinel}{len(found) - 1:09d}{sentinel}"

        return pattern.sub(swap, value)
    if isinstance(value, dict):
        return {_swap_control_texts(k, pattern, sentinel, found): _swap_control_texts(v, pattern, sentinel,
                                                                                    found)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_control_texts(v, pattern, sentinel, found) for v in value]
    return value


def with_sentinels(llama: ChatModel, request: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]] | None:
    """None where ``request`` holds no control-token text; else the request with each such text swapped
    for a numbered sentinel of random digits, the sentinel, and the texts in their numbers' order."""
    pattern = control_texts(llama)
    if pattern is None:
        return None
    found: list[str] = []
    sentinel = "".join(secrets.choice("0123456789") for _ in range(12))
    swapped = _swap_control_texts(request, pattern, sentinel, found)
    return (swapped, sentinel, found) if found else None


def sentinels_back(parts: Sequence[tuple[bytes, bool]], sentinel: str, found: list[str]
                   ) -> list[tuple[bytes, bool]]:
    """The ``(text, from_user)`` parts of a render of :func:`with_sentinels`' request with each sentinel
    turned back into its control-token text, a part of its own from the user (tokenized as text)."""
    numbered = re.compile(f"{sentinel}([0-9]{{9}}){sentinel}")
    out: list[tuple[bytes, bool]] = []
    for part, from_user in parts:
        text = part.decode("utf-8", errors="replace")
        at = 0
        for m in numbered.finditer(text):
            out.append((text[at:m.start()].encode("utf-8"), from_user))
            out.append((found[int(m.group(1))].encode("utf-8"), True))
            at = m.end()
        out.append((text[at:].encode("utf-8"), from_user))
    return [p for p in out if p[0]]


def typed_controls_as_parts(llama: ChatModel, format_prompt: Callable[..., str], request: dict[str, Any]
                            ) -> list[tuple[bytes, bool]] | None:
    """For a formatter written in Python (a named chat format): None where the request holds no
    control-token text; else the prompt of ``format_prompt(**request)`` as ``(text, from_user)`` parts,
    each control-token text of the request a part of its own (from the user: tokenized as text), found
    by formatting the request again with each of them swapped for a numbered sentinel."""
    # a content of text parts is formatted as their text joined: a control token's text cut between two
    # parts is found in it
    request = {**request, "messages": [_joined_text(m) for m in request.get("messages") or []]}
    swap = with_sentinels(llama, request)
    if swap is None:
        return None
    swapped, sentinel, found = swap
    return sentinels_back([(format_prompt(**swapped).encode("utf-8"), False)], sentinel, found)


def _joined_text(message: Any) -> Any:
    """message with a content made only of text parts as one string, as the formatters read it."""
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list) or not all(
            isinstance(p, str) or (isinstance(p, Mapping) and p.get("type") == "text") for p in content):
        return message
    return {**message, "content": content_text(content)}


def tokenize_prompt_parts(llama: ChatModel, parts: Sequence[tuple[bytes, bool]], *,
                          add_bos: bool) -> list[int]:
    """The tokens of a prompt given as ``(text, from_user)`` parts: control tokens only where the
    template wrote them. Text from the request that would tokenize to a control token is tokenized as
    plain text: a user typing ``<|im_end|>``, or a control token's text that the template assembled
    from request text, begun or ended by it (the pieces of a split, texts joined, one piece of it in
    each of two messages). The rest of the prompt is tokenized in one piece with special tokens parsed,
    exactly as a whole-string tokenization would; a template that wraps request text in a control
    token's ends (``'<|' + role + '|>'``) keeps that token."""
    plain = [from_user and (llama.tokenize(text, add_bos=False, special=True)
                            != llama.tokenize(text, add_bos=False, special=False))
             for text, from_user in parts]
    for i in _assembled_from_user(llama, parts):
        plain[i] = True
    runs: list[tuple[bytes, bool]] = []  # (text, parse special tokens)
    for (text, _), as_text in zip(parts, plain):
        if not as_text and runs and runs[-1][1]:
            runs[-1] = (runs[-1][0] + text, True)
        else:
            runs.append((text, not as_text))
    if not runs:
        return llama.tokenize(b"", add_bos=add_bos, special=True)
    tokens: list[int] = []
    for i, (text, special) in enumerate(runs):
        tokens += llama.tokenize(text, add_bos=add_bos and i == 0, special=special)
    return tokens


def _assembled_from_user(llama: ChatModel, parts: Sequence[tuple[bytes, bool]]) -> set[int]:
    """The request parts in a control token's text that runs across parts: they are to be tokenized as
    text, unless the template wrote both ends of the token around a message role (Phi-3's
    ``'<|' + role + '|>'``: a role is one of CHAT_ROLES, checked; a name or content would pick any token)."""
    if len(parts) < 2 or not any(from_user for _, from_user in parts):
        return set()
    pattern = control_texts(llama)
    if pattern is None:
        return set()
    texts = [text.decode("utf-8", errors="surrogateescape") for text, _ in parts]
    starts = [0]
    for text in texts:
        starts.append(starts[-1] + len(text))
    whole = "".join(texts)
    found: set[int] = set()
    for m in pattern.finditer(whole):
        first, last = bisect.bisect_right(starts, m.start()) - 1, bisect.bisect_right(starts, m.end() - 1) - 1
        if first == last:  # within one part: the check of that part alone covers it
            continue
        inside = [i for i in range(first, last + 1) if parts[i][1]]
        if not inside:
            continue
        if not (parts[first][1] or parts[last][1]):  # the template's ends: only a role may be inside
            between = "".join(texts[i] for i in inside)
            if between in CHAT_ROLES and m.group(0).count(between) == 1:
                continue
        found.update(inside)
    return found


# -- the handler ---------------------------------------------------------------------------------


def chat_formatter_to_chat_completion_handler(chat_formatter: ChatFormatter) -> LlamaChatCompletionHandler:
    """A chat completion handler (llama-cpp-python's signature) around a prompt formatter.

    The prompt is tokenized with special tokens parsed, and with the model's BOS unless the formatter
    says the prompt holds it (``added_special``). Stop strings are the formatter's plus the caller's.
    """

    def chat_completion_handler(
        *,
        llama: ChatModel,
        messages: Sequence[ChatCompletionRequestMessage],
        functions: Sequence[Any] | None = None,
        function_call: Any | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: Any | None = None,
        grammar: LlamaGrammar | None = None,
        logit_bias: dict[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        **kwargs: Any,
    ) -> ChatCompletionResult:
        verbose = bool(getattr(llama, "verbose", False))
        check_roles(messages)
        plan = ToolPlan.from_request(functions, function_call, tools, tool_choice)
        renders_tools = getattr(chat_formatter, "renders_tools", None)  # set on template formatters
        msgs: Sequence[Any] = messages
        # a tool named in tool_choice: the grammar alone forces its arguments, and the prompt is the
        # formatter's with the tools passed on (as llama-cpp-python does), so its greedy text is the same
        if plan.mode != "none" and not (plan.mode == "auto" and renders_tools) and not plan.by_name:
            msgs = with_tool_note(cast("Sequence[Mapping[str, Any]]", messages), plan.note(),
                                  system_role=renders_tools is None)
        request = {"messages": list(msgs), "functions": functions, "function_call": function_call,
                   "tools": plan.tools if plan.mode != "none" else None, "tool_choice": tool_choice}
        result = chat_formatter(**request)
        parts = getattr(result, "prompt_parts", None)  # set by formatters that know what came from the user
        if parts is None:  # a control token's text typed in the request stays text here too
            parts = typed_controls_as_parts(llama, lambda **r: chat_formatter(**r).prompt, request)
        add_bos = not result.added_special
        prompt = (tokenize_prompt_parts(llama, parts, add_bos=add_bos) if parts is not None
                  else llama.tokenize(result.prompt.encode("utf-8"), add_bos=add_bos, special=True))
        if response_format is not None:
            grammar = grammar_for_response_format(response_format, verbose) or grammar
        grammar = plan.grammar(verbose) or grammar
        n_top = (top_logprobs or 0) if logprobs else None
        completion = llama.create_completion(
            prompt=prompt, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            typical_p=typical_p, logprobs=n_top, stream=stream,
            stop=_stop_list(result.stop) + _stop_list(stop), seed=seed, max_tokens=max_tokens,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
            logits_processor=logits_processor, stopping_criteria=result.stopping_criteria,
            grammar=grammar, logit_bias=logit_bias,
        )
        if stream:
            source = cast("Iterator[dict[str, Any]]", completion)
            return ChatCompletionStream(source, chunks_to_chat_chunks(source, plan, n_top))
        chat = completion_to_chat(cast("dict[str, Any]", completion), plan, n_top)
        return cast("CreateChatCompletionResponse", chat)

    return chat_completion_handler

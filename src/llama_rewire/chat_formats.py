"""The built-in chat prompt formats: each turns a list of OpenAI-style messages into one prompt string.

Each formatter follows the prompt format its model family publishes (model cards, the reference code or
the chat template shipped with the weights) and returns the strings that end an assistant turn as
``stop``. None of them but saiga (whose every turn opens with ``<s>``) writes the leading BOS token: the
prompt is tokenized with the model's own BOS (``added_special=False``), so a format never doubles it.
Separators inside the prompt (``</s><s>`` between Llama-2 exchanges, say) are written out and parsed as
special tokens.

Messages are normalized first (:func:`chat_turns`): content parts are joined, an assistant's tool calls
become the JSON object the model is asked to write (``{"name": ..., "arguments": {...}}``), and tool or
function results become user turns. Formats without a system role put the system prompt where their
reference does (most often in front of the first user message).

These functions are registered by name in :mod:`llama_rewire.llama_chat_format`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import ChatFormatError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .llama_types import ChatCompletionRequestMessage

    Messages = Sequence[ChatCompletionRequestMessage]

# (input_ids, logits) -> stop now? (llama-cpp-python's StoppingCriteria)
StoppingCriteria = Callable[["npt.NDArray[np.intc]", "npt.NDArray[np.single]"], bool]


@dataclass
class ChatFormatterResponse:
    """A formatted prompt; ``added_special`` means the prompt already holds the BOS text."""

    prompt: str
    stop: str | list[str] | None = None
    stopping_criteria: StoppingCriteria | None = None
    added_special: bool = False


class ChatFormatter(Protocol):
    """``formatter(*, messages, **kwargs)``: messages are ``ChatCompletionRequestMessage`` dicts; kwargs
    may hold ``functions``, ``function_call``, ``tools`` and ``tool_choice``."""

    def __call__(self, *, messages: list[Any], **kwargs: Any) -> ChatFormatterResponse: ...


Turn = tuple[str, str]  # (role, text) with role one of system, user, assistant


def content_text(content: object) -> str:
    """A message's content as text: a string, None (empty) or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatFormatError(f"message content part of type {kind!r} is not supported")
        return "".join(texts)
    raise ChatFormatError(f"message content must be a string, a list of parts or None, got {content!r}")


def tool_calls_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """Tool calls as the JSON the model is asked to write: one object, or a list of them."""
    objs = []
    for call in calls:
        fn = call.get("function", call)
        args: Any = fn.get("arguments", {})
        if isinstance(args, str):
            with contextlib.suppress(ValueError):  # not JSON: kept as text
                args = json.loads(args)
        objs.append({"name": fn.get("name"), "arguments": args})
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def chat_turns(messages: Sequence[Mapping[str, Any]]) -> list[Turn]:
    """Messages as (role, text) turns with role system, user or assistant (see the module docstring)."""
    turns: list[Turn] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message:
            raise ChatFormatError(f"a message must be a dict with a 'role', got {message!r}")
        role = message["role"]
        text = content_text(message.get("content"))
        if role in ("system", "user"):
            turns.append((role, text))
        elif role == "assistant":
            calls = list(message.get("tool_calls") or [])
            if message.get("function_call"):
                calls.append({"function": message["function_call"]})
            for call in calls:
                if call.get("id"):
                    call_names[str(call["id"])] = str(call.get("function", {}).get("name", ""))
            if calls:
                text = (text + "\n" if text else "") + tool_calls_text(calls)
            turns.append(("assistant", text))
        elif role in ("tool", "function"):
            name = message.get("name") or call_names.get(str(message.get("tool_call_id")), "")
            turns.append(("user", f"Result of {name or 'the tool call'}: {text}"))
        else:
            raise ChatFormatError(f"unknown message role {role!r} in messages (system, user, assistant, "
                                  "tool)")
    return turns


def _split_system(turns: list[Turn], default: str = "") -> tuple[str, list[Turn]]:
    """The system prompt (all system turns, joined) and the other turns, for formats without a system role."""
    system = [text for role, text in turns if role == "system"]
    return ("\n\n".join(system) if system else default), [t for t in turns if t[0] != "system"]


def _merge_system_into_first_user(turns: list[Turn], sep: str = "\n\n") -> list[Turn]:
    system, rest = _split_system(turns)
    if not system:
        return rest
    for i, (role, text) in enumerate(rest):
        if role == "user":
            return [*rest[:i], ("user", system + sep + text), *rest[i + 1 :]]
    return [("user", system), *rest]


def _roles_prompt(turns: list[Turn], templates: Mapping[str, str], generation: str) -> str:
    """Each turn through its role's template ('{text}' marks the content), then the generation prompt."""
    return "".join(templates[role].format(text=text) for role, text in turns) + generation


def _messages(messages: Messages) -> list[Turn]:
    return chat_turns(messages)


# -- ChatML family -------------------------------------------------------------------------------


def format_chatml(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """ChatML (OpenAI; most fine-tunes): ``<|im_start|>role\\n...<|im_end|>\\n`` per turn."""
    turn = "<|im_start|>{role}\n{{text}}<|im_end|>\n"
    templates = {r: turn.format(role=r) for r in ("system", "user", "assistant")}
    prompt = _roles_prompt(_messages(messages), templates, "<|im_start|>assistant\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<|im_end|>"])


def format_qwen(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Qwen (1.5/2): ChatML with a default system prompt when the conversation has none."""
    turns = _messages(messages)
    if not turns or turns[0][0] != "system":
        turns = [("system", "You are a helpful assistant."), *turns]
    turn = "<|im_start|>{role}\n{{text}}<|im_end|>\n"
    templates = {r: turn.format(role=r) for r in ("system", "user", "assistant")}
    prompt = _roles_prompt(turns, templates, "<|im_start|>assistant\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<|im_end|>", "<|endoftext|>"])


# -- Meta Llama ----------------------------------------------------------------------------------


def format_llama2(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Llama 2 chat (Meta's reference ``chat_completion``)::

        <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST]

    Contents are stripped, as in the reference; the first ``<s>`` is the tokenizer's BOS.
    """
    system, rest = _split_system(_messages(messages))
    if system:
        rest = _merge_system_into_first_user(
            [("system", f"<<SYS>>\n{system}\n<</SYS>>"), *rest], sep="\n\n"
        )
    parts: list[str] = []
    for role, text in rest:
        if role == "user":
            if parts and parts[-1].endswith("</s>"):
                parts.append("<s>")
            parts.append(f"[INST] {text.strip()} [/INST]")
        else:
            parts.append(f" {text.strip()} </s>")
    return ChatFormatterResponse(prompt="".join(parts), stop=[])


def format_llama3(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Llama 3 instruct: a header per turn, contents trimmed as in Meta's chat template."""
    templates = {
        r: f"<|start_header_id|>{r}<|end_header_id|>\n\n{{text}}<|eot_id|>"
        for r in ("system", "user", "assistant")
    }
    turns = [(role, text.strip()) for role, text in _messages(messages)]
    prompt = _roles_prompt(turns, templates, "<|start_header_id|>assistant<|end_header_id|>\n\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<|eot_id|>"])


# -- Mistral, Gemma, Phi -------------------------------------------------------------------------


def format_mistral_instruct(
    *, messages: Messages, **kwargs: Any
) -> ChatFormatterResponse:
    """Mistral instruct, as the models' own template renders it::

        <s>[INST] {user} [/INST]{answer}</s>[INST] {user} [/INST]

    There is no system role: the system prompt leads the first user message.
    """
    turns = _merge_system_into_first_user(_messages(messages))
    templates = {"user": "[INST] {text} [/INST]", "assistant": "{text}</s>"}
    return ChatFormatterResponse(prompt=_roles_prompt(turns, templates, ""), stop=["</s>"])


def format_gemma(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Gemma: ``<start_of_turn>user|model\\n...<end_of_turn>\\n``, contents trimmed; the system prompt
    leads the first user turn (as Gemma 2/3 templates do)."""
    turns = [(role, text.strip()) for role, text in _merge_system_into_first_user(_messages(messages))]
    templates = {
        "user": "<start_of_turn>user\n{text}<end_of_turn>\n",
        "assistant": "<start_of_turn>model\n{text}<end_of_turn>\n",
    }
    prompt = _roles_prompt(turns, templates, "<start_of_turn>model\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<end_of_turn>"])


def format_phi3(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Phi-3 / Phi-3.5: ``<|role|>\\n...<|end|>\\n`` per turn (an empty system turn is left out)."""
    turns = [(role, text) for role, text in _messages(messages) if role != "system" or text]
    templates = {r: f"<|{r}|>\n{{text}}<|end|>\n" for r in ("system", "user", "assistant")}
    prompt = _roles_prompt(turns, templates, "<|assistant|>\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<|end|>", "<|endoftext|>"])


# -- community fine-tunes ------------------------------------------------------------------------


ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SNOOZY_SYSTEM = (
    "The prompt below is a question to answer, a task to complete, or a conversation to respond to; "
    "decide which and write an appropriate response."
)
SAIGA_SYSTEM = (
    "Ты — Сайга, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и помогаешь им."  # noqa: RUF001
)


def format_alpaca(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Stanford Alpaca: a preamble, then ``### Instruction:`` / ``### Response:`` blocks."""
    system, turns = _split_system(_messages(messages), ALPACA_SYSTEM)
    templates = {"user": "### Instruction:\n{text}\n\n", "assistant": "### Response:\n{text}\n\n"}
    prompt = system + "\n\n" + _roles_prompt(turns, templates, "### Response:\n")
    return ChatFormatterResponse(prompt=prompt, stop=["### Instruction:", "### Response:"])


def format_vicuna(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Vicuna v1.1 (FastChat): ``{system} USER: {user} ASSISTANT: {answer}</s>USER: ...``."""
    system, turns = _split_system(_messages(messages), VICUNA_SYSTEM)
    templates = {"user": "USER: {text} ", "assistant": "ASSISTANT: {text}</s>"}
    prompt = system + " " + _roles_prompt(turns, templates, "ASSISTANT:")
    return ChatFormatterResponse(prompt=prompt, stop=["USER:"])


def format_zephyr(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Zephyr (HuggingFaceH4): ``<|role|>\\n...</s>\\n`` per turn."""
    templates = {r: f"<|{r}|>\n{{text}}</s>\n" for r in ("system", "user", "assistant")}
    prompt = _roles_prompt(_messages(messages), templates, "<|assistant|>\n")
    return ChatFormatterResponse(prompt=prompt, stop=["</s>"])


def format_openchat(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """OpenChat 3.5: ``GPT4 Correct User: ...<|end_of_turn|>GPT4 Correct Assistant:``."""
    templates = {
        "system": "{text}<|end_of_turn|>",
        "user": "GPT4 Correct User: {text}<|end_of_turn|>",
        "assistant": "GPT4 Correct Assistant: {text}<|end_of_turn|>",
    }
    prompt = _roles_prompt(_messages(messages), templates, "GPT4 Correct Assistant:")
    return ChatFormatterResponse(prompt=prompt, stop=["<|end_of_turn|>"])


def format_phind(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Phind CodeLlama v2: ``### System Prompt`` / ``### User Message`` / ``### Assistant`` sections."""
    system, turns = _split_system(_messages(messages), "You are an intelligent programming assistant.")
    templates = {"user": "### User Message\n{text}\n\n", "assistant": "### Assistant\n{text}\n\n"}
    prompt = f"### System Prompt\n{system}\n\n" + _roles_prompt(turns, templates, "### Assistant\n")
    return ChatFormatterResponse(prompt=prompt, stop=["### User Message"])


def format_intel(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Intel neural-chat: ``### System:`` / ``### User:`` / ``### Assistant:`` sections."""
    templates = {
        "system": "### System:\n{text}\n",
        "user": "### User:\n{text}\n",
        "assistant": "### Assistant:\n{text}\n",
    }
    prompt = _roles_prompt(_messages(messages), templates, "### Assistant:\n")
    return ChatFormatterResponse(prompt=prompt, stop=["### User:"])


def format_saiga(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Saiga (IlyaGusev): ``<s>{role}\\n{text}</s>`` per turn with roles system/user/bot.

    Every turn starts with ``<s>``, the first included, so the prompt carries its own BOS.
    """
    turns = _messages(messages)
    if not turns or turns[0][0] != "system":
        turns = [("system", SAIGA_SYSTEM), *turns]
    templates = {
        "system": "<s>system\n{text}</s>",
        "user": "<s>user\n{text}</s>",
        "assistant": "<s>bot\n{text}</s>",
    }
    prompt = _roles_prompt(turns, templates, "<s>bot\n")
    return ChatFormatterResponse(prompt=prompt, stop=["</s>"], added_special=True)


def format_pygmalion(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Pygmalion 2: ``<|system|>``, ``<|user|>`` and ``<|model|>`` markers, concatenated."""
    templates = {"system": "<|system|>{text}", "user": "<|user|>{text}", "assistant": "<|model|>{text}"}
    prompt = _roles_prompt(_messages(messages), templates, "<|model|>")
    return ChatFormatterResponse(prompt=prompt, stop=["<|user|>"])


def format_oasst_llama(
    *, messages: Messages, **kwargs: Any
) -> ChatFormatterResponse:
    """OpenAssistant (LLaMA): ``<|system|>``, ``<|prompter|>`` and ``<|assistant|>`` turns, each ending
    in ``</s>``."""
    templates = {
        "system": "<|system|>{text}</s>",
        "user": "<|prompter|>{text}</s>",
        "assistant": "<|assistant|>{text}</s>",
    }
    prompt = _roles_prompt(_messages(messages), templates, "<|assistant|>")
    return ChatFormatterResponse(prompt=prompt, stop=["</s>"])


def _baichuan(messages: Messages, user: str, assistant: str) -> str:
    system, turns = _split_system(_messages(messages))
    templates = {"user": user + "{text}", "assistant": assistant + "{text}"}
    return system + _roles_prompt(turns, templates, assistant)


def format_baichuan(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Baichuan-13B-Chat: the system text, then reserved tokens 102 (user) and 103 (assistant)."""
    return ChatFormatterResponse(prompt=_baichuan(messages, "<reserved_102>", "<reserved_103>"), stop=[])


def format_baichuan2(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """Baichuan 2 chat: the system text, then reserved tokens 106 (user) and 107 (assistant)."""
    return ChatFormatterResponse(prompt=_baichuan(messages, "<reserved_106>", "<reserved_107>"), stop=[])


def format_redpajama_incite(
    *, messages: Messages, **kwargs: Any
) -> ChatFormatterResponse:
    """RedPajama-INCITE chat: ``<human>: ...\\n<bot>: ...\\n`` (a system prompt leads, on its own line)."""
    system, turns = _split_system(_messages(messages))
    templates = {"user": "<human>: {text}\n", "assistant": "<bot>: {text}\n"}
    prompt = (system + "\n" if system else "") + _roles_prompt(turns, templates, "<bot>:")
    return ChatFormatterResponse(prompt=prompt, stop=["<human>"])


def format_snoozy(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """GPT4All snoozy: ``### Instruction:`` (the system prompt), ``### Prompt:``, ``### Response:``."""
    system, turns = _split_system(_messages(messages), SNOOZY_SYSTEM)
    templates = {"user": "### Prompt:\n{text}\n", "assistant": "### Response:\n{text}\n"}
    prompt = f"### Instruction:\n{system}\n" + _roles_prompt(turns, templates, "### Response:\n")
    return ChatFormatterResponse(prompt=prompt, stop=["### Prompt:", "### Instruction:"])


OPENBUDDY_SYSTEM = (
    "You are a helpful, respectful and honest assistant named Buddy, talking to a human User. Answer as "
    "helpfully and logically as you can; if you do not know an answer, say so."
)
OPEN_ORCA_SYSTEM = (
    "You are a helpful assistant. Answer truthfully and think step by step; if you are not sure, say so."
)


def format_openbuddy(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """OpenBuddy: a system preamble, then ``User: ...`` / ``Assistant: ...`` lines."""
    system, turns = _split_system(_messages(messages), OPENBUDDY_SYSTEM)
    templates = {"user": "User: {text}\n", "assistant": "Assistant: {text}\n"}
    prompt = system + "\n\n" + _roles_prompt(turns, templates, "Assistant:")
    return ChatFormatterResponse(prompt=prompt, stop=["\nUser:"])


def format_open_orca(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """OpenOrca (OpenChat style): ``User: ...<|end_of_turn|>`` / ``Assistant: ...<|end_of_turn|>``."""
    system, turns = _split_system(_messages(messages), OPEN_ORCA_SYSTEM)
    templates = {"user": "User: {text}<|end_of_turn|>\n", "assistant": "Assistant: {text}<|end_of_turn|>\n"}
    prompt = system + "<|end_of_turn|>\n" + _roles_prompt(turns, templates, "Assistant: ")
    return ChatFormatterResponse(prompt=prompt, stop=["<|end_of_turn|>", "User:"])


def format_mistrallite(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """MistralLite (Amazon): ``<|prompter|>...</s><|assistant|>...</s>``; no system role, so the system
    prompt opens the first user message."""
    turns = _merge_system_into_first_user(_messages(messages))
    templates = {"user": "<|prompter|>{text}</s>", "assistant": "<|assistant|>{text}</s>"}
    prompt = _roles_prompt(turns, templates, "<|assistant|>")
    return ChatFormatterResponse(prompt=prompt, stop=["</s>"])


def format_chatglm3(*, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """ChatGLM3 (THUDM): ``<|system|>``, ``<|user|>``, ``<|assistant|>``, each followed by a newline."""
    templates = {r: f"<|{r}|>\n{{text}}" for r in ("system", "user", "assistant")}
    prompt = _roles_prompt(_messages(messages), templates, "<|assistant|>\n")
    return ChatFormatterResponse(prompt=prompt, stop=["<|user|>", "<|observation|>", "</s>"])


BUILTIN_FORMATS: dict[str, ChatFormatter] = {
    "chatml": format_chatml,
    "qwen": format_qwen,
    "llama-2": format_llama2,
    "llama-3": format_llama3,
    "mistral-instruct": format_mistral_instruct,
    "gemma": format_gemma,
    "phi-3": format_phi3,
    "alpaca": format_alpaca,
    "vicuna": format_vicuna,
    "zephyr": format_zephyr,
    "openchat": format_openchat,
    "phind": format_phind,
    "intel": format_intel,
    "saiga": format_saiga,
    "pygmalion": format_pygmalion,
    "oasst_llama": format_oasst_llama,
    "baichuan": format_baichuan,
    "baichuan-2": format_baichuan2,
    "redpajama-incite": format_redpajama_incite,
    "snoozy": format_snoozy,
    "openbuddy": format_openbuddy,
    "open-orca": format_open_orca,
    "mistrallite": format_mistrallite,
    "chatglm3": format_chatglm3,
}

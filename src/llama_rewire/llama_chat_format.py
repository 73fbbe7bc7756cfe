"""Chat formats: the registry of chat completion handlers, and Jinja chat templates.

The public names are llama-cpp-python's (``llama_cpp.llama_chat_format``)::

    from llama_rewire.llama_chat_format import get_chat_completion_handler
    handler = get_chat_completion_handler("chatml")
    reply = handler(llama=llm, messages=[{"role": "user", "content": "Hi"}])

Built-in formats are in :mod:`llama_rewire.chat_formats`; turning a formatter into a handler (tools,
``response_format``, reshaping completions into chat completions) is in
:mod:`llama_rewire.chat_completion`. A model's own chat template (GGUF ``tokenizer.chat_template``) is
rendered by :class:`Jinja2ChatFormatter`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

from ._multimodal import (
    Gemma4ChatHandler,
    Llama3VisionAlpha,
    Llama3VisionAlphaChatHandler,
    Llava15ChatHandler,
    Llava16ChatHandler,
    MiniCPMv26ChatHandler,
    MoondreamChatHandler,
    MTMDChatHandler,
    NanoLlavaChatHandler,
    ObsidianChatHandler,
    Qwen25VLChatHandler,
)
from .chat_completion import (
    ChatCompletionStream,
    LlamaChatCompletionHandler,
    chat_formatter_to_chat_completion_handler,
    completion_to_chat,
    parse_tool_calls,
)
from .chat_formats import (
    BUILTIN_FORMATS,
    ChatFormatter,
    ChatFormatterResponse,
    format_alpaca,
    format_baichuan,
    format_baichuan2,
    format_chatglm3,
    format_chatml,
    format_gemma,
    format_intel,
    format_llama2,
    format_llama3,
    format_mistral_instruct,
    format_mistrallite,
    format_oasst_llama,
    format_open_orca,
    format_openbuddy,
    format_openchat,
    format_phi3,
    format_phind,
    format_pygmalion,
    format_qwen,
    format_redpajama_incite,
    format_saiga,
    format_snoozy,
    format_vicuna,
    format_zephyr,
)
from .errors import ChatFormatError

if TYPE_CHECKING:
    import jinja2
    import jinja2.ext
    import jinja2.parser

    from .llama_types import ChatCompletionRequestMessage

F = TypeVar("F", bound=ChatFormatter)
H = TypeVar("H", bound=Callable[..., Any])


# The chat templates of a few families as Jinja text (for Jinja2ChatFormatter, or to compare with a GGUF's
# tokenizer.chat_template), with the BOS/EOS texts they are rendered with.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_BOS_TOKEN = "<s>"
CHATML_EOS_TOKEN = "<|im_end|>"

# [INST] user [/INST] answer</s> ..., roles alternating from a user turn
_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token@AFTER_EOS@ }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
MISTRAL_INSTRUCT_CHAT_TEMPLATE = _MISTRAL_TEMPLATE.replace("@AFTER_EOS@", " + ' '")
MISTRAL_INSTRUCT_BOS_TOKEN = "<s>"
MISTRAL_INSTRUCT_EOS_TOKEN = "</s>"
MIXTRAL_INSTRUCT_CHAT_TEMPLATE = _MISTRAL_TEMPLATE.replace("@AFTER_EOS@", "")

LLAMA3_INSTRUCT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# -- registry ------------------------------------------------------------------------------------


class LlamaChatCompletionHandlerNotFoundException(ValueError):
    """No chat completion handler is registered under the name asked for."""


class LlamaChatCompletionHandlerRegistry:
    """The chat completion handlers by name. One instance per process: every construction returns it."""

    _instance: LlamaChatCompletionHandlerRegistry | None = None
    _chat_handlers: dict[str, LlamaChatCompletionHandler]

    def __new__(cls) -> LlamaChatCompletionHandlerRegistry:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance._chat_handlers = {}
        return cls._instance

    def register_chat_completion_handler(
        self, name: str, chat_handler: LlamaChatCompletionHandler, overwrite: bool = False
    ) -> None:
        """Register a handler; a name in use raises ValueError unless overwrite."""
        if not overwrite and name in self._chat_handlers:
            raise ValueError(f"Chat format '{name}' is already registered (overwrite=True replaces it)")
        self._chat_handlers[name] = chat_handler

    def unregister_chat_handler(self, name: str) -> None:
        if name not in self._chat_handlers:
            raise ValueError(f"No chat format named '{name}' is registered")
        del self._chat_handlers[name]

    def get_chat_completion_handler_by_name(self, name: str) -> LlamaChatCompletionHandler:
        try:
            return self._chat_handlers[name]
        except KeyError:
            known = ", ".join(sorted(self._chat_handlers))
            raise LlamaChatCompletionHandlerNotFoundException(
                f"Invalid chat handler: {name} (valid formats: {known})") from None

    # short names
    register = register_chat_completion_handler
    unregister = unregister_chat_handler
    get = get_chat_completion_handler_by_name

    def names(self) -> list[str]:
        return sorted(self._chat_handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._chat_handlers


def get_chat_completion_handler(name: str) -> LlamaChatCompletionHandler:
    """The handler registered as name; ValueError (listing the known names) if there is none."""
    return LlamaChatCompletionHandlerRegistry().get_chat_completion_handler_by_name(name)


def register_chat_completion_handler(name: str) -> Callable[[H], H]:
    """Decorator: register a chat completion handler under name."""

    def decorator(handler: H) -> H:
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler)
        return handler

    return decorator


def register_chat_format(name: str) -> Callable[[F], F]:
    """Decorator: register a prompt formatter (wrapped into a chat completion handler) under name."""

    def decorator(formatter: F) -> F:
        handler = chat_formatter_to_chat_completion_handler(formatter)
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler)
        return formatter

    return decorator


for _name, _formatter in BUILTIN_FORMATS.items():
    register_chat_format(_name)(_formatter)

format = format_vicuna

# ChatML with tools: the ChatML handler answers tools / tool_choice / functions (see chat_completion)
chatml_function_calling: LlamaChatCompletionHandler = get_chat_completion_handler("chatml")
register_chat_completion_handler("chatml-function-calling")(chatml_function_calling)


def _functionary(name: str) -> LlamaChatCompletionHandler:
    def handler(*, llama: Any, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"the {name} chat handler (functionary models' own prompt format and tokenizer) is not "
            "available in llama-rewire: use the model's GGUF chat template (chat_format=None) or "
            "chat_format='chatml-function-calling'"
        )

    handler.__name__ = handler.__qualname__ = name.replace("-", "_") + "_chat_handler"
    return handler


functionary_chat_handler = _functionary("functionary")
functionary_v1_v2_chat_handler = _functionary("functionary-v1-v2")
for _name, _handler in (("functionary", functionary_chat_handler),
                        ("functionary-v1", functionary_v1_v2_chat_handler),
                        ("functionary-v2", functionary_v1_v2_chat_handler)):
    register_chat_completion_handler(_name)(_handler)


# -- Jinja chat templates ------------------------------------------------------------------------


def _raise_exception(message: str) -> NoReturn:
    raise ChatFormatError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # as transformers renders templates: plain json.dumps, where Jinja's own tojson would escape
    # HTML characters and sort keys
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _generation_extension() -> type[jinja2.ext.Extension]:
    """``{% generation %}...{% endgeneration %}``, which transformers uses to mark the assistant's part of
    a training prompt: rendered as its body."""
    import jinja2.ext
    import jinja2.nodes

    class GenerationExtension(jinja2.ext.Extension):
        tags = {"generation"}  # noqa: RUF012  # Jinja's own declaration style

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    return GenerationExtension


class Jinja2ChatFormatter:
    """Renders a Jinja chat template (as stored in GGUF ``tokenizer.chat_template``).

    The template sees ``messages``, ``tools``, ``tool_choice``, ``functions``, ``function_call``,
    ``bos_token``, ``eos_token``, ``add_generation_prompt`` and the functions ``raise_exception`` and
    ``strftime_now``; it runs in Jinja's immutable sandbox with ``trim_blocks``/``lstrip_blocks``, as
    transformers runs it. Invalid templates and failed renders raise :class:`ChatFormatError`.

    A prompt that starts with the BOS text is tokenized as is; otherwise the model's BOS is added if
    the model asks for one (as llama.cpp's server does). The stop string is the EOS text; with
    ``stop_token_ids`` generation also stops after any of those tokens.
    """

    def __init__(
        self,
        template: str,
        eos_token: str,
        bos_token: str,
        add_generation_prompt: bool = True,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        import jinja2.ext
        import jinja2.meta
        import jinja2.sandbox

        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = None if stop_token_ids is None else frozenset(int(t) for t in stop_token_ids)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _generation_extension()],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template: jinja2.Template = env.from_string(template)
            variables = jinja2.meta.find_undeclared_variables(env.parse(template))
        except jinja2.TemplateError as e:
            raise ChatFormatError(f"invalid chat template: {e}") from e
        # the template shows the model its tools itself (no tool note needed in auto mode)
        self.renders_tools = "tools" in variables
        self.reads_generation_prompt = "add_generation_prompt" in variables

    def render(self, messages: Sequence[Any], **variables: Any) -> str:
        """The template rendered on messages (plus any extra template variables)."""
        # variables that are None are left undefined, so that `tools is defined` and
        # `{% for tool in tools %}` both work without tools
        context = {
            "messages": messages,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_generation_prompt": self.add_generation_prompt,
            **{k: v for k, v in variables.items() if v is not None},
        }
        try:
            return self._template.render(**context)
        except ChatFormatError:
            raise
        except Exception as e:  # anything a template can raise: TemplateError, TypeError on None + str, ...
            raise ChatFormatError(f"chat template failed: {type(e).__name__}: {e}") from e

    def __call__(
        self,
        *,
        messages: Sequence[ChatCompletionRequestMessage],
        functions: Sequence[Any] | None = None,
        function_call: Any | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any | None = None,
        **kwargs: Any,
    ) -> ChatFormatterResponse:
        prompt = self.render(messages, functions=functions, function_call=function_call, tools=tools,
                             tool_choice=tool_choice)
        stopping_criteria = None
        if self.stop_token_ids:
            ids = self.stop_token_ids

            def stop_on_token(input_ids: Any, logits: Any) -> bool:
                return len(input_ids) > 0 and int(input_ids[-1]) in ids

            stopping_criteria = stop_on_token
        return ChatFormatterResponse(
            prompt=prompt,
            stop=[self.eos_token] if self.eos_token else [],
            stopping_criteria=stopping_criteria,
            added_special=bool(self.bos_token) and prompt.startswith(self.bos_token),
        )

    def to_chat_handler(self) -> LlamaChatCompletionHandler:
        return chat_formatter_to_chat_completion_handler(self)


class _TokenizerConfigChatFormatter(Jinja2ChatFormatter):
    """A tokenizer config's template, opened for the answer as llama-cpp-python opens it.

    Templates written before ``add_generation_prompt`` existed (Mistral's, Llama 2's) cannot open the
    assistant's turn themselves; llama-cpp-python renders them with an empty assistant message appended
    (giving e.g. ``<s>[INST] Hello [/INST]</s>`` for Mistral), and so do we, for those templates only:
    one that reads ``add_generation_prompt`` opens the turn itself.
    """

    def render(self, messages: Sequence[Any], **variables: Any) -> str:
        if self.add_generation_prompt and not self.reads_generation_prompt:
            messages = [*messages, {"role": "assistant", "content": ""}]
        return super().render(messages, **variables)

    def __call__(self, *, messages: Sequence[ChatCompletionRequestMessage], **kwargs: Any
                 ) -> ChatFormatterResponse:
        response = super().__call__(messages=messages, **kwargs)
        response.stop = [t for t in (self.eos_token, self.bos_token) if t]
        return response


def hf_tokenizer_config_to_chat_formatter(
    tokenizer_config: Mapping[str, Any], add_generation_prompt: bool = True
) -> Jinja2ChatFormatter:
    """The chat formatter of a Hugging Face ``tokenizer_config.json`` (already loaded as a dict).

    It stops at the EOS or the BOS text; a template that ignores ``add_generation_prompt`` gets an
    empty assistant message after the conversation, as in llama-cpp-python.
    """

    def token_text(key: str) -> str:
        token = tokenizer_config.get(key)
        if isinstance(token, Mapping):  # a serialized AddedToken
            token = token.get("content")
        return token if isinstance(token, str) else ""

    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    if not isinstance(template, str):
        raise ChatFormatError("the tokenizer config has no (default) chat_template")
    return _TokenizerConfigChatFormatter(template, eos_token=token_text("eos_token"),
                                         bos_token=token_text("bos_token"),
                                         add_generation_prompt=add_generation_prompt)


def hf_tokenizer_config_to_chat_completion_handler(
    tokenizer_config: Mapping[str, Any], add_generation_prompt: bool = True
) -> LlamaChatCompletionHandler:
    """The chat completion handler of :func:`hf_tokenizer_config_to_chat_formatter`."""
    formatter = hf_tokenizer_config_to_chat_formatter(tokenizer_config, add_generation_prompt)
    return chat_formatter_to_chat_completion_handler(formatter)


def hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path: str) -> ChatFormatter:
    """A formatter rendering with a Hugging Face tokenizer's ``apply_chat_template`` (needs
    transformers); the prompt holds the BOS text, and generation stops at the tokenizer's EOS text."""
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError("hf_autotokenizer_to_chat_formatter needs the transformers package: "
                          "pip install transformers") from None
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)

    def format_autotokenizer(*, messages: list[Any], **kwargs: Any) -> ChatFormatterResponse:
        tokenizer.use_default_system_prompt = False
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        if not isinstance(prompt, str):
            raise ChatFormatError("the tokenizer's apply_chat_template did not return text")
        return ChatFormatterResponse(prompt=prompt, stop=tokenizer.eos_token, added_special=True)

    return format_autotokenizer


def hf_autotokenizer_to_chat_completion_handler(pretrained_model_name_or_path: str
                                                ) -> LlamaChatCompletionHandler:
    """The chat completion handler of :func:`hf_autotokenizer_to_chat_formatter`."""
    return chat_formatter_to_chat_completion_handler(
        hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path))


def chat_template_handlers(
    metadata: Mapping[str, str],
    *,
    bos_token: str,
    eos_token: str,
    stop_token_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, LlamaChatCompletionHandler]:
    """Handlers for a model's chat templates, named as llama-cpp-python names them:
    ``chat_template.default`` for ``tokenizer.chat_template`` and ``chat_template.<name>`` for
    ``tokenizer.chat_template.<name>``. A template that does not compile is left out."""
    handlers: dict[str, LlamaChatCompletionHandler] = {}
    for key, template in metadata.items():
        if key == "tokenizer.chat_template":
            name = "chat_template.default"
        elif key.startswith("tokenizer.chat_template."):
            name = key.removeprefix("tokenizer.")
        else:
            continue
        try:
            formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token,
                                            stop_token_ids=stop_token_ids)
        except ChatFormatError as e:
            if verbose:
                print(f"chat: ignoring {key}: {e}", file=sys.stderr)
            continue
        handlers[name] = formatter.to_chat_handler()
    return handlers


_PROBES: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "You are a probe."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
    ],
    [  # also without a system prompt (and for templates that reject one)
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
    ],
]


def guess_chat_format_from_gguf_metadata(
    metadata: Mapping[str, str], *, bos_token: str = "<s>", eos_token: str = "</s>"
) -> str | None:
    """The built-in format that renders exactly as the model's chat template, or None.

    Each built-in format and the template are rendered on the same probe conversations (the template
    with these BOS/EOS texts; pass the model's own). A template that renders differently from all of
    them (extra default system prompts, tool support, ...) is best used as it is.
    """
    template = metadata.get("tokenizer.chat_template")
    if not template:
        return None
    try:
        formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token)
    except ChatFormatError:
        return None
    rendered: list[tuple[list[dict[str, Any]], str]] = []
    for probe in _PROBES:
        try:
            prompt = formatter(messages=probe).prompt  # type: ignore[arg-type]
        except ChatFormatError:  # e.g. a template without a system role
            continue
        rendered.append((probe, prompt.removeprefix(bos_token) if bos_token else prompt))
    if not rendered:
        return None
    for name, builtin in BUILTIN_FORMATS.items():
        if all(builtin(messages=probe).prompt == prompt for probe, prompt in rendered):
            return name
    return None


__all__ = [
    "CHATML_BOS_TOKEN",
    "CHATML_CHAT_TEMPLATE",
    "CHATML_EOS_TOKEN",
    "LLAMA3_INSTRUCT_CHAT_TEMPLATE",
    "MISTRAL_INSTRUCT_BOS_TOKEN",
    "MISTRAL_INSTRUCT_CHAT_TEMPLATE",
    "MISTRAL_INSTRUCT_EOS_TOKEN",
    "MIXTRAL_INSTRUCT_CHAT_TEMPLATE",
    "ChatCompletionStream",
    "ChatFormatter",
    "ChatFormatterResponse",
    "Gemma4ChatHandler",
    "Jinja2ChatFormatter",
    "Llama3VisionAlpha",
    "Llama3VisionAlphaChatHandler",
    "LlamaChatCompletionHandler",
    "LlamaChatCompletionHandlerNotFoundException",
    "LlamaChatCompletionHandlerRegistry",
    "Llava15ChatHandler",
    "Llava16ChatHandler",
    "MTMDChatHandler",
    "MiniCPMv26ChatHandler",
    "MoondreamChatHandler",
    "NanoLlavaChatHandler",
    "ObsidianChatHandler",
    "Qwen25VLChatHandler",
    "chat_formatter_to_chat_completion_handler",
    "chat_template_handlers",
    "chatml_function_calling",
    "completion_to_chat",
    "format",
    "format_alpaca",
    "format_baichuan",
    "format_baichuan2",
    "format_chatglm3",
    "format_chatml",
    "format_gemma",
    "format_intel",
    "format_llama2",
    "format_llama3",
    "format_mistral_instruct",
    "format_mistrallite",
    "format_oasst_llama",
    "format_open_orca",
    "format_openbuddy",
    "format_openchat",
    "format_phi3",
    "format_phind",
    "format_pygmalion",
    "format_qwen",
    "format_redpajama_incite",
    "format_saiga",
    "format_snoozy",
    "format_vicuna",
    "format_zephyr",
    "functionary_chat_handler",
    "functionary_v1_v2_chat_handler",
    "get_chat_completion_handler",
    "guess_chat_format_from_gguf_metadata",
    "hf_autotokenizer_to_chat_completion_handler",
    "hf_autotokenizer_to_chat_formatter",
    "hf_tokenizer_config_to_chat_completion_handler",
    "hf_tokenizer_config_to_chat_formatter",
    "parse_tool_calls",
    "register_chat_completion_handler",
    "register_chat_format",
]

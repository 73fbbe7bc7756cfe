"""Chat formats: exact prompts of the built-in formats, the handler registry, Jinja chat templates (the
ones stored in llama.cpp's vocab-only GGUFs and templates folder), and the reshaping of text completions
into chat completions (with a fake model, and end to end on a tiny one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from llama_rewire import Llama
from llama_rewire.chat_completion import ChatCompletionStream, parse_tool_calls
from llama_rewire.chat_formats import chat_turns
from llama_rewire.errors import ChatFormatError
from llama_rewire.llama_chat_format import (
    ChatFormatterResponse,
    Jinja2ChatFormatter,
    LlamaChatCompletionHandlerRegistry,
    chat_formatter_to_chat_completion_handler,
    chat_template_handlers,
    get_chat_completion_handler,
    guess_chat_format_from_gguf_metadata,
    hf_tokenizer_config_to_chat_formatter,
    register_chat_completion_handler,
    register_chat_format,
)
from llama_rewire.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

MODELS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"
TEMPLATES = MODELS / "templates"

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a color."},
]
NO_SYSTEM = CONV[1:]

# -- the built-in formats, on CONV ---------------------------------------------------------------

EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>"],
    ),
    "qwen": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>", "<|endoftext|>"],
    ),
    "llama-2": (
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Name a color. [/INST]",
        [],
    ),
    "llama-3": (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>"],
    ),
    "mistral-instruct": (
        "[INST] You are terse.\n\nHi [/INST]Hello!</s>[INST] Name a color. [/INST]",
        ["</s>"],
    ),
    "gemma": (
        "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n",
        ["<end_of_turn>"],
    ),
    "phi-3": (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nName a color.<|end|>\n<|assistant|>\n",
        ["<|end|>", "<|endoftext|>"],
    ),
    "alpaca": (
        "You are terse.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
        "### Instruction:\nName a color.\n\n### Response:\n",
        ["### Instruction:", "### Response:"],
    ),
    "vicuna": (
        "You are terse. USER: Hi ASSISTANT: Hello!</s>USER: Name a color. ASSISTANT:",
        ["USER:"],
    ),
    "zephyr": (
        "<|system|>\nYou are terse.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nName a color.</s>\n<|assistant|>\n",
        ["</s>"],
    ),
    "openchat": (
        "You are terse.<|end_of_turn|>GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant: Hello!"
        "<|end_of_turn|>GPT4 Correct User: Name a color.<|end_of_turn|>GPT4 Correct Assistant:",
        ["<|end_of_turn|>"],
    ),
    "phind": (
        "### System Prompt\nYou are terse.\n\n### User Message\nHi\n\n### Assistant\nHello!\n\n"
        "### User Message\nName a color.\n\n### Assistant\n",
        ["### User Message"],
    ),
    "intel": (
        "### System:\nYou are terse.\n### User:\nHi\n### Assistant:\nHello!\n### User:\nName a color.\n"
        "### Assistant:\n",
        ["### User:"],
    ),
    "saiga": (
        "<s>system\nYou are terse.</s><s>user\nHi</s><s>bot\nHello!</s><s>user\nName a color.</s><s>bot\n",
        ["</s>"],
    ),
    "pygmalion": (
        "<|system|>You are terse.<|user|>Hi<|model|>Hello!<|user|>Name a color.<|model|>",
        ["<|user|>"],
    ),
    "oasst_llama": (
        "<|system|>You are terse.</s><|prompter|>Hi</s><|assistant|>Hello!</s><|prompter|>Name a color.</s>"
        "<|assistant|>",
        ["</s>"],
    ),
    "baichuan": (
        "You are terse.<reserved_102>Hi<reserved_103>Hello!<reserved_102>Name a color.<reserved_103>",
        [],
    ),
    "baichuan-2": (
        "You are terse.<reserved_106>Hi<reserved_107>Hello!<reserved_106>Name a color.<reserved_107>",
        [],
    ),
    "redpajama-incite": (
        "You are terse.\n<human>: Hi\n<bot>: Hello!\n<human>: Name a color.\n<bot>:",
        ["<human>"],
    ),
    "snoozy": (
        "### Instruction:\nYou are terse.\n### Prompt:\nHi\n### Response:\nHello!\n"
        "### Prompt:\nName a color.\n### Response:\n",
        ["### Prompt:", "### Instruction:"],
    ),
}

# formats with a default system prompt, or another rendering without one
EXPECTED_NO_SYSTEM = {
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
            "<|im_start|>assistant\n",
    "llama-2": "[INST] Hi [/INST] Hello! </s><s>[INST] Name a color. [/INST]",
    "mistral-instruct": "[INST] Hi [/INST]Hello!</s>[INST] Name a color. [/INST]",
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
              "### Instruction:\nName a color.\n\n### Response:\n",
    "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello!</s>"
              "USER: Name a color. ASSISTANT:",
    "phind": "### System Prompt\nYou are an intelligent programming assistant.\n\n### User Message\nHi\n\n"
             "### Assistant\nHello!\n\n### User Message\nName a color.\n\n### Assistant\n",
    "saiga": "<s>system\nТы — Сайга, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и "  # noqa: RUF001
             "помогаешь им.</s><s>user\nHi</s><s>bot\nHello!</s><s>user\nName a color.</s><s>bot\n",
    "snoozy": "### Instruction:\nThe prompt below is a question to answer, a task to complete, or a "
              "conversation to respond to; decide which and write an appropriate response.\n### Prompt:\nHi\n"
              "### Response:\nHello!\n### Prompt:\nName a color.\n### Response:\n",
    "redpajama-incite": "<human>: Hi\n<bot>: Hello!\n<human>: Name a color.\n<bot>:",
}

REQUIRED_FORMATS = ["chatml", "llama-2", "llama-3", "mistral-instruct", "gemma", "alpaca", "vicuna", "zephyr",
                    "openchat", "qwen", "phi-3"]


def formatter_of(name: str) -> Callable[..., ChatFormatterResponse]:
    from llama_rewire.chat_formats import BUILTIN_FORMATS

    return BUILTIN_FORMATS[name]


def test_every_registered_builtin_has_an_expected_prompt() -> None:
    names = LlamaChatCompletionHandlerRegistry().names()
    assert set(REQUIRED_FORMATS) <= set(names)
    assert set(EXPECTED) <= set(names)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_format_prompt_and_stops(name: str) -> None:
    prompt, stops = EXPECTED[name]
    result = formatter_of(name)(messages=CONV)
    assert result.prompt == prompt
    assert result.stop == stops
    assert result.added_special is (name == "saiga")  # saiga writes its own <s>; the others get the BOS
    assert result.stopping_criteria is None


@pytest.mark.parametrize("name", sorted(EXPECTED_NO_SYSTEM))
def test_builtin_format_without_system_prompt(name: str) -> None:
    assert formatter_of(name)(messages=NO_SYSTEM).prompt == EXPECTED_NO_SYSTEM[name]


@pytest.mark.parametrize("name", ["llama-3", "gemma", "llama-2"])
def test_formats_that_trim_contents(name: str) -> None:
    padded = [{"role": "user", "content": "  Hi \n"}]
    plain = [{"role": "user", "content": "Hi"}]
    assert formatter_of(name)(messages=padded).prompt == formatter_of(name)(messages=plain).prompt


def test_single_user_message_generation_prompts() -> None:
    one = [{"role": "user", "content": "Hi"}]
    assert formatter_of("chatml")(messages=one).prompt == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert formatter_of("llama-2")(messages=one).prompt == "[INST] Hi [/INST]"
    assert formatter_of("gemma")(messages=one).prompt == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    assert formatter_of("mistral-instruct")(messages=one).prompt == "[INST] Hi [/INST]"
    assert formatter_of("zephyr")(messages=one).prompt == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_content_parts_tool_calls_and_tool_results() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in "},
                                     {"type": "text", "text": "Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "function", "name": "clock", "content": "12:00"},
    ]
    assert chat_turns(messages) == [
        ("user", "Weather in Oslo?"),
        ("assistant", '{"name": "weather", "arguments": {"city": "Oslo"}}'),
        ("user", "Result of weather: -3 C"),
        ("user", "Result of clock: 12:00"),
    ]
    with pytest.raises(ChatFormatError, match="image_url"):
        chat_turns([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(ChatFormatError, match="unknown message role 'narrator'"):
        chat_turns([{"role": "narrator", "content": "x"}])
    with pytest.raises(ChatFormatError):
        chat_turns(["not a dict"])  # type: ignore[list-item]


# -- registry ------------------------------------------------------------------------------------


def test_registry_lookup_and_unknown_names() -> None:
    assert LlamaChatCompletionHandlerRegistry() is LlamaChatCompletionHandlerRegistry()
    assert callable(get_chat_completion_handler("chatml"))
    with pytest.raises(ValueError, match="no-such-format") as info:
        get_chat_completion_handler("no-such-format")
    for name in REQUIRED_FORMATS:
        assert name in str(info.value)


def test_register_chat_format_and_handler() -> None:
    registry = LlamaChatCompletionHandlerRegistry()

    @register_chat_format("test-echo-format")
    def echo_format(*, messages: list[dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt="|".join(str(m["content"]) for m in messages), stop=["|"])

    try:
        assert echo_format(messages=[{"content": "a"}, {"content": "b"}]).prompt == "a|b"  # returned as is
        llm = FakeLlama(text="ok")
        out = get_chat_completion_handler("test-echo-format")(llama=llm, messages=NO_SYSTEM)
        assert out["choices"][0]["message"]["content"] == "ok"
        assert llm.prompts == ["Hi|Hello!|Name a color."]
        with pytest.raises(ValueError, match="already registered"):
            register_chat_format("test-echo-format")(echo_format)
    finally:
        registry.unregister("test-echo-format")
    assert "test-echo-format" not in registry
    with pytest.raises(ValueError):
        registry.unregister("test-echo-format")

    @register_chat_completion_handler("test-handler")
    def handler(*, llama: Any, messages: list[Any], **kwargs: Any) -> Any:
        return {"handled": len(messages)}

    try:
        assert get_chat_completion_handler("test-handler")(llama=None, messages=CONV) == {"handled": 4}
        registry.register("test-handler", lambda **kw: "replaced", overwrite=True)
        assert registry.get("test-handler")(llama=None, messages=[]) == "replaced"
    finally:
        registry.unregister_chat_handler("test-handler")


# -- Jinja chat templates ------------------------------------------------------------------------


def vocab_template(name: str) -> tuple[str, str, str, dict[str, str]]:
    """(template, bos text, eos text, metadata) of a vocab-only GGUF."""
    llm = Llama(str(MODELS / f"ggml-vocab-{name}.gguf"), vocab_only=True, verbose=False)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        bos = llm.model.token_to_piece(llm.token_bos(), True).decode()
        eos = llm.model.token_to_piece(llm.token_eos(), True).decode()
        return template, bos, eos, dict(llm.metadata)
    finally:
        llm.close()


def test_which_vocab_ggufs_carry_a_chat_template() -> None:
    carrying = []
    for path in sorted(MODELS.glob("ggml-vocab-*.gguf")):
        llm = Llama(str(path), vocab_only=True, verbose=False)
        if "tokenizer.chat_template" in llm.metadata:
            carrying.append(path.name.removeprefix("ggml-vocab-").removesuffix(".gguf"))
        llm.close()
    assert carrying == ["command-r", "gemma-4", "phi-3", "qwen2", "qwen35"]


def test_phi3_vocab_template() -> None:
    template, bos, eos, _ = vocab_template("phi-3")
    assert (bos, eos) == ("<s>", "<|endoftext|>")
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, stop_token_ids=[32000])
    result = formatter(messages=NO_SYSTEM)
    assert result.prompt == ("<s><|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
                             "<|user|>\nName a color.<|end|>\n<|assistant|>\n")
    assert result.stop == ["<|endoftext|>"]
    assert result.added_special  # the template wrote the BOS
    # the built-in phi-3 format renders the same conversation the same way, BOS aside
    assert "<s>" + formatter_of("phi-3")(messages=NO_SYSTEM).prompt == result.prompt
    assert result.stopping_criteria is not None
    assert result.stopping_criteria([5, 32000], None)  # type: ignore[arg-type]
    assert not result.stopping_criteria([32000, 5], None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["qwen2", "qwen35"])
def test_qwen_vocab_template(name: str) -> None:
    template, bos, eos, _ = vocab_template(name)
    assert bos == eos == "<|endoftext|>"
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    one = formatter(messages=[{"role": "user", "content": "Hi"}])
    assert one.prompt == ("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert not one.added_special  # no BOS text: the tokenizer decides (Qwen adds none)
    # with a system message it is plain ChatML
    assert formatter(messages=CONV).prompt == formatter_of("chatml")(messages=CONV).prompt
    no_prompt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=False)
    assert no_prompt(messages=CONV).prompt == formatter_of("chatml")(messages=CONV).prompt.removesuffix(
        "<|im_start|>assistant\n")


def test_command_r_vocab_templates() -> None:
    template, bos, eos, metadata = vocab_template("command-r")
    assert (bos, eos) == ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    messages = [{"role": "system", "content": "Sys"}, {"role": "user", "content": " Hi "}]
    assert formatter(messages=messages).prompt == (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Sys<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    # raise_exception in the template -> ChatFormatError (a ValueError)
    with pytest.raises(ChatFormatError, match="Conversation roles must alternate"):
        formatter(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    handlers = chat_template_handlers(metadata, bos_token=bos, eos_token=eos)
    assert sorted(handlers) == ["chat_template.default", "chat_template.rag", "chat_template.tool_use"]
    # the tool_use template renders the tools it is given (in Cohere's own tool format)
    tool_use = Jinja2ChatFormatter(metadata["tokenizer.chat_template.tool_use"], eos_token=eos, bos_token=bos)
    assert tool_use.renders_tools and not formatter.renders_tools
    city = {"description": "The city", "type": "str", "required": True}
    cohere_tool = {"name": "get_weather", "description": "The weather in a city",
                   "parameter_definitions": {"city": city}}
    prompt = tool_use(messages=[{"role": "user", "content": "Weather?"}], tools=[cohere_tool]).prompt
    assert "def get_weather(city: str) -> List[Dict]:" in prompt and "city (str): The city" in prompt


def test_gemma4_vocab_template() -> None:
    template, bos, eos, _ = vocab_template("gemma-4")
    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    prompt = formatter(messages=NO_SYSTEM).prompt
    # thinking off (no enable_thinking): an empty thought channel opens the answer
    assert prompt == ("<bos><|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n"
                      "<|turn>user\nName a color.<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert formatter.renders_tools
    with_tools = formatter(messages=NO_SYSTEM, tools=[WEATHER_TOOL]).prompt
    assert "get_weather" in with_tools and "get_weather" not in prompt


@pytest.mark.parametrize(("template", "bos", "builtin", "messages"), [
    ("microsoft-Phi-3.5-mini-instruct", "", "phi-3", CONV),
    ("google-gemma-2-2b-it", "<bos>", "gemma", NO_SYSTEM),
])
def test_builtin_formats_match_the_published_templates(template: str, bos: str, builtin: str,
                                                        messages: list[dict[str, str]]) -> None:
    formatter = Jinja2ChatFormatter((TEMPLATES / f"{template}.jinja").read_text(), eos_token="<eos>",
                                    bos_token=bos)
    assert formatter(messages=messages).prompt == bos + formatter_of(builtin)(messages=messages).prompt


def test_every_stored_template_compiles_and_renders() -> None:
    needs_other_variables = {"fireworks-ai-llama-3-firefunction-v2.jinja"}  # needs `functions` text
    failures = {}
    for path in sorted(TEMPLATES.glob("*.jinja")):
        try:
            Jinja2ChatFormatter(path.read_text(), eos_token="</s>", bos_token="<s>")(messages=NO_SYSTEM)
        except ChatFormatError as e:
            failures[path.name] = str(e)
    assert set(failures) == needs_other_variables, failures


def test_template_errors_and_globals() -> None:
    with pytest.raises(ChatFormatError, match="invalid chat template"):
        Jinja2ChatFormatter("{% for m in messages %}", eos_token="", bos_token="")
    with pytest.raises(ChatFormatError, match="chat template failed"):
        Jinja2ChatFormatter("{{ messages[5]['content'] + 1 }}", eos_token="", bos_token="")(messages=[])
    failing = Jinja2ChatFormatter("{{ raise_exception('custom failure') }}", eos_token="", bos_token="")
    with pytest.raises(ChatFormatError, match=r"^custom failure$"):
        failing(messages=[])
    year = Jinja2ChatFormatter("{{ strftime_now('%Y') }}", eos_token="", bos_token="")(messages=[]).prompt
    assert len(year) == 4 and year.isdigit()
    # tojson as transformers has it: no HTML escaping, keys in order, ensure_ascii off by default
    text = Jinja2ChatFormatter("{{ tools | tojson }}", eos_token="", bos_token="")(
        messages=[], tools=[{"b": "<é>", "a": 1}]).prompt
    assert text == '[{"b": "<é>", "a": 1}]'
    # the sandbox refuses to mutate
    with pytest.raises(ChatFormatError):
        Jinja2ChatFormatter("{{ messages.append(1) }}", eos_token="", bos_token="")(messages=[])
    # transformers' {% generation %} marker renders its body
    gen = Jinja2ChatFormatter("{% generation %}x{% endgeneration %}", eos_token="", bos_token="")
    assert gen(messages=[]).prompt == "x"
    # without tools, `tools` is undefined rather than None
    probe = Jinja2ChatFormatter("{{ 'yes' if tools is defined else 'no' }}", eos_token="", bos_token="")
    assert probe(messages=[]).prompt == "no" and probe(messages=[], tools=[]).prompt == "yes"


def test_guess_chat_format_from_gguf_metadata() -> None:
    phi35 = {"tokenizer.chat_template": (TEMPLATES / "microsoft-Phi-3.5-mini-instruct.jinja").read_text()}
    assert guess_chat_format_from_gguf_metadata(phi35, bos_token="<s>", eos_token="<|endoftext|>") == "phi-3"
    # the Phi-3 (3.0) template drops system messages, which the built-in phi-3 format keeps
    _, bos, eos, metadata = vocab_template("phi-3")
    assert guess_chat_format_from_gguf_metadata(metadata, bos_token=bos, eos_token=eos) is None
    # a default system prompt the built-in formats do not have: the template is used as is
    _, bos, eos, metadata = vocab_template("qwen2")
    assert guess_chat_format_from_gguf_metadata(metadata, bos_token=bos, eos_token=eos) is None
    gemma2 = {"tokenizer.chat_template": (TEMPLATES / "google-gemma-2-2b-it.jinja").read_text()}
    assert guess_chat_format_from_gguf_metadata(gemma2, bos_token="<bos>", eos_token="<eos>") == "gemma"
    assert guess_chat_format_from_gguf_metadata({}) is None
    assert guess_chat_format_from_gguf_metadata({"tokenizer.chat_template": "{% if %}"}) is None


def test_hf_tokenizer_config() -> None:
    template = (TEMPLATES / "google-gemma-2-2b-it.jinja").read_text()
    config = {"chat_template": template, "bos_token": {"content": "<bos>", "lstrip": False},
              "eos_token": "<eos>"}
    formatter = hf_tokenizer_config_to_chat_formatter(config)
    assert formatter(messages=NO_SYSTEM).prompt == "<bos>" + formatter_of("gemma")(messages=NO_SYSTEM).prompt
    assert formatter.eos_token == "<eos>"
    templates = [{"name": "default", "template": "{{ bos_token }}D"}, {"name": "rag", "template": "R"}]
    named = {"chat_template": templates, "bos_token": "<s>"}
    assert hf_tokenizer_config_to_chat_formatter(named)(messages=[]).prompt == "<s>D"
    with pytest.raises(ChatFormatError):
        hf_tokenizer_config_to_chat_formatter({"bos_token": "<s>"})


def test_format_prompts_tokenize_to_special_tokens() -> None:
    """The separators the formats write are parsed as the vocabularies' special tokens."""
    spm = Llama(str(MODELS / "ggml-vocab-llama-spm.gguf"), vocab_only=True, verbose=False)
    qwen = Llama(str(MODELS / "ggml-vocab-qwen2.gguf"), vocab_only=True, verbose=False)
    phi3 = Llama(str(MODELS / "ggml-vocab-phi-3.gguf"), vocab_only=True, verbose=False)
    try:
        ids = spm.tokenize(formatter_of("llama-2")(messages=NO_SYSTEM).prompt.encode(), special=True)
        assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1  # <s> ... </s><s> ...
        ids = qwen.tokenize(formatter_of("chatml")(messages=CONV).prompt.encode(), special=True)
        assert ids.count(151644) == 5 and ids.count(151645) == 4  # <|im_start|>, <|im_end|>
        ids = phi3.tokenize(formatter_of("phi-3")(messages=NO_SYSTEM).prompt.encode(), special=True)
        assert ids[0] == 1 and ids.count(32007) == 3  # BOS, <|end|>
    finally:
        for llm in (spm, qwen, phi3):
            llm.close()


# -- from completions to chat completions (fake model) -------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]},
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
              "properties": {"zone": {"type": "string"}}}}}


class FakeStream:
    """What Llama.create_completion(stream=True) returns: chunks, close(), usage once exhausted."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._it = iter(chunks)
        self.usage: dict[str, int] | None = None
        self.closed = False

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._it)
        except StopIteration:
            self.usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            raise

    def close(self) -> None:
        self.closed = True


class FakeLlama:
    """Returns canned completions of ``text`` and records what it was asked."""

    verbose = False

    def __init__(self, text: str = "Blue.", pieces: list[str] | None = None, finish: str = "stop",
                 logprobs: dict[str, Any] | None = None) -> None:
        self.text = text
        self.pieces = pieces if pieces is not None else [text]
        self.finish = finish
        self.logprobs = logprobs
        self.calls: list[dict[str, Any]] = []
        self.tokenized: list[tuple[bytes, bool, bool]] = []
        self.streams: list[FakeStream] = []

    @property
    def prompts(self) -> list[str]:
        return [bytes(c["prompt"]).decode() for c in self.calls]

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.tokenized.append((text, add_bos, special))
        return list(text)  # one "token" per byte, so the prompt can be read back

    def create_completion(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        meta = {"id": "cmpl-42", "object": "text_completion", "created": 1700000000, "model": "fake.gguf"}
        if not kwargs.get("stream"):
            return {**meta, "choices": [{"text": self.text, "index": 0, "logprobs": self.logprobs,
                                         "finish_reason": self.finish}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        chunks = [{**meta, "choices": [{"text": p, "index": 0, "logprobs": None, "finish_reason": None}]}
                  for p in self.pieces]
        chunks.append({**meta, "choices": [{"text": "", "index": 0, "logprobs": None,
                                            "finish_reason": self.finish}]})
        stream = FakeStream(chunks)
        self.streams.append(stream)
        return stream


def chat(llm: FakeLlama, fmt: str = "chatml", **kwargs: Any) -> Any:
    return get_chat_completion_handler(fmt)(llama=llm, messages=kwargs.pop("messages", CONV), **kwargs)


def test_chat_completion_shape_and_arguments() -> None:
    llm = FakeLlama("Blue.")
    out = chat(llm, stop="STOP", max_tokens=7, seed=3, temperature=0.5, top_k=9, model="m")
    assert out == {
        "id": "chatcmpl-42",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fake.gguf",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Blue."}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    assert llm.prompts == [EXPECTED["chatml"][0]]
    assert llm.tokenized == [(EXPECTED["chatml"][0].encode(), True, True)]  # model's BOS, specials parsed
    call = llm.calls[0]
    assert call["stop"] == ["<|im_end|>", "STOP"]
    assert [call[k] for k in ("max_tokens", "seed", "temperature", "top_k", "model")] == [7, 3, 0.5, 9, "m"]
    assert (call["top_p"], call["min_p"], call["typical_p"], call["repeat_penalty"]) == (0.95, 0.05, 1.0, 1.0)
    assert call["stream"] is False and call["grammar"] is None and call["logprobs"] is None
    for key in ("presence_penalty", "frequency_penalty", "tfs_z", "mirostat_mode", "mirostat_tau",
                "mirostat_eta", "logits_processor", "stopping_criteria", "logit_bias"):
        assert key in call


def test_user_stop_list_and_template_bos() -> None:
    llm = FakeLlama()
    chat(llm, stop=["A", "B"])
    assert llm.calls[0]["stop"] == ["<|im_end|>", "A", "B"]
    handler = Jinja2ChatFormatter("{{ bos_token }}{{ messages[0]['content'] }}", eos_token="</s>",
                                  bos_token="<s>").to_chat_handler()
    handler(llama=llm, messages=[{"role": "user", "content": "x"}])
    assert llm.tokenized[-1] == (b"<s>x", False, True)  # the template wrote the BOS: none added
    assert llm.calls[-1]["stop"] == ["</s>"]


def test_chat_completion_stream() -> None:
    llm = FakeLlama(pieces=["Bl", "ue", "."], finish="length")
    stream = chat(llm, stream=True)
    assert isinstance(stream, ChatCompletionStream)
    assert stream.usage is None
    chunks = list(stream)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant"}, {"content": "Bl"}, {"content": "ue"}, {"content": "."}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "length"]
    assert {c["id"] for c in chunks} == {"chatcmpl-42"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(c["model"] == "fake.gguf" and c["created"] == 1700000000 for c in chunks)
    assert stream.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert llm.calls[0]["stream"] is True
    stream.close()
    assert llm.streams[0].closed


def test_closing_a_stream_early_closes_the_completion() -> None:
    llm = FakeLlama(pieces=["a", "b"])
    stream = chat(llm, stream=True)
    assert next(stream)["choices"][0]["delta"] == {"role": "assistant"}
    stream.close()
    assert llm.streams[0].closed
    with pytest.raises(StopIteration):
        next(stream)


def test_logprobs_conversion() -> None:
    lp = {"tokens": ["Bl", "ue"], "text_offset": [0, 2], "token_logprobs": [-0.5, -0.25],
          "top_logprobs": [{"Bl": -0.5, "Re": -1.5, "Gr": -2.0}, {"ue": -0.25}]}
    llm = FakeLlama("Blue", logprobs=lp)
    out = chat(llm, logprobs=True, top_logprobs=2)
    assert llm.calls[0]["logprobs"] == 2
    assert out["choices"][0]["logprobs"] == {
        "content": [
            {"token": "Bl", "logprob": -0.5, "bytes": [66, 108],
             "top_logprobs": [{"token": "Bl", "logprob": -0.5, "bytes": [66, 108]},
                              {"token": "Re", "logprob": -1.5, "bytes": [82, 101]}]},
            {"token": "ue", "logprob": -0.25, "bytes": [117, 101],
             "top_logprobs": [{"token": "ue", "logprob": -0.25, "bytes": [117, 101]}]},
        ],
        "refusal": None,
    }
    llm = FakeLlama("Blue", logprobs=lp)
    chat(llm, logprobs=False, top_logprobs=2)
    assert llm.calls[0]["logprobs"] is None


@pytest.mark.parametrize(("response_format", "schema"), [
    ({"type": "json_object"}, None),
    ({"type": "json_object", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
     {"type": "object", "properties": {"a": {"type": "integer"}}}),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "items": {}}}},
     {"type": "array", "items": {}}),
])
def test_response_format_grammars(response_format: dict[str, Any], schema: dict[str, Any] | None) -> None:
    llm = FakeLlama('{"a": 1}')
    chat(llm, response_format=response_format)
    grammar = llm.calls[0]["grammar"]
    assert grammar.grammar == (JSON_GBNF if schema is None else json_schema_to_gbnf(json.dumps(schema)))


def test_response_format_text_and_unknown() -> None:
    llm = FakeLlama()
    chat(llm, response_format={"type": "text"})
    assert llm.calls[0]["grammar"] is None
    with pytest.raises(ValueError, match="response_format type"):
        chat(llm, response_format={"type": "yaml"})


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "get_weather"}},
    "required",
])
def test_forced_tool_call(tool_choice: Any) -> None:
    tools = [WEATHER_TOOL] if tool_choice == "required" else [CLOCK_TOOL, WEATHER_TOOL]
    llm = FakeLlama('{"city": "Oslo"}')
    out = chat(llm, messages=NO_SYSTEM, tools=tools, tool_choice=tool_choice)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert "function_call" not in message
    params = WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]
    assert llm.calls[0]["grammar"].grammar == json_schema_to_gbnf(json.dumps(params))
    prompt = llm.prompts[0]
    if tool_choice == "required":  # the model is told what to call
        note = "Call the tool `get_weather` (The weather in a city) now."
        assert prompt.startswith("<|im_start|>system\n" + note)
    else:  # a tool named: llama-cpp-python's prompt, the grammar alone forces the call
        assert "get_weather" not in prompt and prompt.startswith("<|im_start|>user\n")


def test_forced_tool_call_stream() -> None:
    llm = FakeLlama(pieces=['{"city": ', '"Oslo"}'])
    chunks = list(chat(llm, tools=[WEATHER_TOOL], tool_choice="required", stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    first = deltas[0]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert first["tool_calls"][0]["id"].startswith("call_")
    assert deltas[1:] == [
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_unknown_forced_tool() -> None:
    with pytest.raises(ValueError, match="Tool choice 'nope' not found"):
        chat(FakeLlama(), tools=[WEATHER_TOOL],
             tool_choice={"type": "function", "function": {"name": "nope"}})


def test_auto_tool_call_and_plain_answer() -> None:
    llm = FakeLlama('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    out = chat(llm, tools=[WEATHER_TOOL, CLOCK_TOOL])  # tool_choice defaults to auto
    message = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert llm.calls[0]["grammar"] is None
    system = llm.prompts[0].split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.\n\nYou can call these tools:\n")
    assert '"name": "get_weather"' in system and '"name": "get_time"' in system

    llm = FakeLlama("It is sunny.")
    out = chat(llm, tools=[WEATHER_TOOL], tool_choice="auto")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny."}
    assert out["choices"][0]["finish_reason"] == "stop"

    llm = FakeLlama('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    out = chat(llm, tools=[WEATHER_TOOL], tool_choice="none")
    assert out["choices"][0]["message"]["content"] == llm.text
    assert llm.prompts[0] == EXPECTED["chatml"][0]  # no tool note


def test_auto_tool_call_stream() -> None:
    llm = FakeLlama(pieces=[' {"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'])
    chunks = list(chat(llm, tools=[WEATHER_TOOL], stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant"}
    [call] = deltas[1]["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert deltas[2] == {} and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # content is streamed as soon as it cannot be a tool call
    llm = FakeLlama(pieces=["It", " is", " sunny"])
    deltas = [c["choices"][0]["delta"] for c in chat(llm, tools=[WEATHER_TOOL], stream=True)]
    assert deltas == [{"role": "assistant"}, {"content": "It"}, {"content": " is"}, {"content": " sunny"}, {}]

    # JSON that is not a tool call comes out as content at the end
    llm = FakeLlama(pieces=["{", '"a": 1}'])
    deltas = [c["choices"][0]["delta"] for c in chat(llm, tools=[WEATHER_TOOL], stream=True)]
    assert deltas == [{"role": "assistant"}, {"content": '{"a": 1}'}, {}]


def test_required_with_several_tools() -> None:
    llm = FakeLlama('{"name": "get_time", "arguments": {"zone": "UTC"}}')
    out = chat(llm, tools=[WEATHER_TOOL, CLOCK_TOOL], tool_choice="required")
    assert out["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_time", "arguments": '{"zone": "UTC"}'}
    grammar = llm.calls[0]["grammar"].grammar
    assert "get_time" in grammar and "get_weather" in grammar
    assert "You must call one of the tools now." in llm.prompts[0]


def test_legacy_functions() -> None:
    llm = FakeLlama('{"city": "Oslo"}')
    out = chat(llm, functions=[WEATHER_TOOL["function"]], function_call={"name": "get_weather"})
    choice = out["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_note_placement() -> None:
    # a built-in format gets a system message; a template (which may reject one) a note in the user turn
    llm = FakeLlama("x")
    chat(llm, "gemma", messages=[{"role": "user", "content": "Q"}], tools=[WEATHER_TOOL])
    assert llm.prompts[0].startswith("<start_of_turn>user\nYou can call these tools:")
    assert llm.prompts[0].endswith(
        "If no tool is needed, answer normally.\n\nQ<end_of_turn>\n<start_of_turn>model\n")
    gemma2 = Jinja2ChatFormatter((TEMPLATES / "google-gemma-2-2b-it.jinja").read_text(), eos_token="<eos>",
                                 bos_token="<bos>")
    llm = FakeLlama("x")
    gemma2.to_chat_handler()(llama=llm, messages=[{"role": "user", "content": "Q"}], tools=[WEATHER_TOOL])
    assert llm.prompts[0].startswith("<bos><start_of_turn>user\nYou can call these tools:")


def test_parse_tool_calls() -> None:
    names = ["get_weather", "get_time"]
    one = parse_tool_calls('<tool_call>\n{"name": "get_time", "parameters": {}}\n</tool_call>', names)
    assert one is not None and one[0]["function"] == {"name": "get_time", "arguments": "{}"}
    two = parse_tool_calls('[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": '
                           '"{\\"city\\": \\"x\\"}"}]', names)
    assert two is not None and [c["function"]["arguments"] for c in two] == ["{}", '{"city": "x"}']
    fenced = parse_tool_calls('```json\n{"name": "get_time", "arguments": {"zone": "é"}}\n```', names)
    assert fenced is not None and fenced[0]["function"]["arguments"] == '{"zone": "é"}'
    assert parse_tool_calls('{"name": "other", "arguments": {}}', names) is None
    assert parse_tool_calls('{"name": "get_time", "arguments": 3}', names) is None
    assert parse_tool_calls("Sure! <tool_call>{}</tool_call>", names) is None
    assert parse_tool_calls("not json", names) is None


def test_formatter_to_handler_accepts_plain_callables() -> None:
    def formatter(*, messages: list[dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt="P", stop="S", added_special=True)

    llm = FakeLlama()
    chat_formatter_to_chat_completion_handler(formatter)(llama=llm, messages=CONV, stop=None)
    assert llm.calls[0]["stop"] == ["S"]
    assert llm.tokenized == [(b"P", False, True)]


# -- end to end on a tiny model ------------------------------------------------------------------


def test_chat_on_a_tiny_model(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    handler = get_chat_completion_handler("llama-2")
    letters = LlamaGrammar.from_string("root ::= [a-z]+")  # the tiny model's bytes are otherwise random
    out = handler(llama=llm, messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=1,
                  grammar=letters)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(out["choices"][0]["message"]["content"], str)
    prompt_ids = llm.tokenize(b"[INST] hi [/INST]", add_bos=True, special=True)
    assert out["usage"]["prompt_tokens"] == len(prompt_ids)
    stream = handler(llama=llm, messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=1,
                     grammar=letters, stream=True)
    chunks: Iterator[Any] = iter(stream)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == out["choices"][0]["message"]["content"]
    assert len(text) == 4 and text.isalpha() and text.islower()
    assert stream.usage == out["usage"]
    # response_format json_object constrains the output to JSON
    out = handler(llama=llm, messages=[{"role": "user", "content": "hi"}], max_tokens=3, seed=1,
                  response_format={"type": "json_object"})
    assert out["choices"][0]["message"]["content"].lstrip()[:1] in ("{", "[")

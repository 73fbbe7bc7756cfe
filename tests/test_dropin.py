"""Code written for llama-cpp-python runs with only its import changed (``import llama_rewire as
llama_cpp``): the high-level names exist, and the README-style snippets of llama-cpp-python work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llama_rewire as llama_cpp

# the high-level public names of llama_cpp (llama_cpp.llama, llama_types, llama_grammar, llama_cache,
# llama_chat_format) and the constants commonly passed to Llama(...)
HIGH_LEVEL = [
    "Llama", "LlamaGrammar", "LlamaCache", "LlamaRAMCache", "LlamaDiskCache", "LlamaState",
    "BaseLlamaCache", "LogitsProcessor", "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList",
    "llama_chat_format", "llama_types", "llama_grammar", "llama_cache",
    "LLAMA_SPLIT_MODE_LAYER", "LLAMA_POOLING_TYPE_MEAN", "LLAMA_POOLING_TYPE_UNSPECIFIED",
    "LLAMA_ROPE_SCALING_TYPE_YARN", "GGML_TYPE_F16", "GGML_TYPE_Q8_0", "LLAMA_DEFAULT_SEED",
]
CHAT_FORMAT_NAMES = [
    "ChatFormatter", "ChatFormatterResponse", "Jinja2ChatFormatter", "LlamaChatCompletionHandler",
    "LlamaChatCompletionHandlerRegistry", "register_chat_format", "register_chat_completion_handler",
    "get_chat_completion_handler", "chat_formatter_to_chat_completion_handler",
]
TYPE_NAMES = [
    "CreateCompletionResponse", "CreateCompletionStreamResponse", "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse", "ChatCompletionRequestMessage", "ChatCompletionTool",
    "ChatCompletionMessageToolCall", "CreateEmbeddingResponse", "CompletionLogprobs", "JsonType",
]


@pytest.mark.parametrize("name", HIGH_LEVEL)
def test_high_level_names(name: str) -> None:
    assert hasattr(llama_cpp, name), name


def test_submodule_names() -> None:
    for name in CHAT_FORMAT_NAMES:
        assert hasattr(llama_cpp.llama_chat_format, name), name
    for name in TYPE_NAMES:
        assert hasattr(llama_cpp.llama_types, name), name
    assert hasattr(llama_cpp.llama_grammar, "LlamaGrammar")
    assert llama_cpp.LLAMA_POOLING_TYPE_MEAN == 1 and llama_cpp.GGML_TYPE_F16 == 1


@pytest.mark.real_model
def test_readme_snippets_of_llama_cpp_python(smollm2_path: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(smollm2_path), n_gpu_layers=-1, seed=1337, n_ctx=2048,
                          verbose=False, n_threads=2, last_n_tokens_size=64, use_mlock=False,
                          numa=False, some_future_option=True)
    output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"], echo=True)
    assert isinstance(output, dict)
    assert output["choices"][0]["text"].startswith("Q: Name the planets")
    assert output["object"] == "text_completion" and output["usage"]["prompt_tokens"] > 0

    out: Any = llm.create_chat_completion(
        messages=[{"role": "system", "content": "You are an assistant who perfectly describes images."},
                  {"role": "user", "content": "Describe this image in detail please."}])
    assert out["choices"][0]["message"]["role"] == "assistant"

    out = llm.create_chat_completion(
        messages=[{"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
                  {"role": "user", "content": "Who won the world series in 2020"}],
        response_format={"type": "json_object",
                         "schema": {"type": "object", "properties": {"team_name": {"type": "string"}},
                                    "required": ["team_name"]}},
        temperature=0.7, max_tokens=64)
    assert isinstance(json.loads(out["choices"][0]["message"]["content"])["team_name"], str)

    tokens = llm.tokenize(b"Hello, world!")
    assert llm.detokenize(tokens) == b"Hello, world!"
    llm.set_cache(llama_cpp.LlamaRAMCache())
    state = llm.save_state()
    assert isinstance(state, llama_cpp.LlamaState)
    llm.load_state(state)
    assert llm.n_ctx() == 2048 and llm.n_vocab() > 0 and llm.token_eos() >= 0
    llm.close()


def test_register_a_custom_chat_format() -> None:
    from llama_rewire.llama_chat_format import (
        ChatFormatterResponse,
        get_chat_completion_handler,
        register_chat_format,
    )

    @register_chat_format("test-upper")
    def format_upper(messages: list[Any], **kwargs: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt="".join(m["content"].upper() for m in messages), stop=["X"])

    handler = get_chat_completion_handler("test-upper")

    class FakeLlama:
        verbose = False

        def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
            self.prompt = text
            return [1, 2, 3]

        def create_completion(self, **kwargs: Any) -> dict[str, Any]:
            self.kwargs = kwargs
            return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [{"text": "ok", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    fake = FakeLlama()
    out: Any = handler(llama=fake, messages=[{"role": "user", "content": "hi"}])  # type: ignore[arg-type]
    assert fake.prompt == b"HI" and "X" in fake.kwargs["stop"]
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "ok"}

"""Code written for llama-cpp-python runs with only its import changed (``import llama_rewire as
llama_cpp``): the high-level names exist, and the README-style snippets of llama-cpp-python work."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llama_rewire as llama_cpp
from llama_rewire import Llama

# llama-cpp-python 0.3.36's public names, recorded from its sources by
# scripts/record_llama_cpp_python_api.py --names
NAMES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "llama_cpp_python_names.json").read_text(encoding="utf-8"))
# the ctypes C API and multimodal bindings (llama_rewire.llama_cpp has its own tests); the server's modules
# are laid out differently (tests/test_server*.py)
NOT_HERE = ("llama_cpp.llama_cpp", "llama_cpp.llava_cpp", "llama_cpp.mtmd_cpp",
            "llama_cpp._ctypes_extensions", "llama_cpp._ggml", "llama_cpp.llama_cpp_ext", "llama_cpp.server")
HIGH_LEVEL_MODULES = sorted(m for m in NAMES["modules"] if m != "llama_cpp" and not m.startswith(NOT_HERE))

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


# -- every public name of llama-cpp-python's high-level modules ---------------------------------------


@pytest.mark.parametrize("module", HIGH_LEVEL_MODULES)
def test_every_public_name_of_the_module(module: str) -> None:
    ours = importlib.import_module("llama_rewire" + module[len("llama_cpp"):])
    missing = [n for n in NAMES["modules"][module] if not hasattr(ours, n)]
    assert not missing, f"{module}: {missing}"


def test_the_top_level_names_of_llama_cpp() -> None:
    """llama_cpp re-exports llama.py's names (with llama_types' and the names llama.py imports)."""
    expected = set(NAMES["modules"]["llama_cpp.llama"]) | set(NAMES["modules"]["llama_cpp.llama_types"])
    expected |= {"LlamaGrammar", "BaseLlamaCache", "LlamaCache", "LlamaDiskCache", "LlamaRAMCache",
                 "BaseLlamaTokenizer", "LlamaTokenizer", "LlamaDraftModel", "llama_chat_format",
                 "set_verbose", "suppress_stdout_stderr"}
    assert not [n for n in sorted(expected) if not hasattr(llama_cpp, n)]


def test_every_member_of_llama(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    assert not [n for n in NAMES["Llama"] if not hasattr(llm, n)]


# -- Llama's attributes mean what they mean in llama-cpp-python ----------------------------------------


def test_context_and_model_params_by_attribute(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    path, _ = tiny("llama")
    with Llama(str(path), n_ctx=0, n_batch=32, n_ubatch=16, n_threads=1, n_threads_batch=2, n_gpu_layers=-1,
               embedding=False, kv_overrides={"general.name": "x"}, tensor_split=[1.0], verbose=False) as llm:
        cp, mp = llm.context_params, llm.model_params
        assert cp.n_ctx == llm.n_ctx() > 0  # n_ctx=0: the model's training context, as llama.cpp chose it
        assert (cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch) == (32, 16, 1, 2)
        assert cp["n_ctx"] == cp.n_ctx and cp.embeddings is False and cp["logits_all"] is False
        assert mp.n_gpu_layers == 0x7FFFFFFF and mp.vocab_only is False and mp.use_mmap is True
        assert (llm.n_batch, llm.n_threads, llm.n_threads_batch) == (32, 1, 2)
        assert llm.kv_overrides == {"general.name": "x"} and llm.tensor_split == [1.0]
        assert (llm.lora_base, llm.lora_path, llm.lora_scale, llm.numa, llm.spm_infill) == (
            None, None, 1.0, False, False)
        with pytest.raises(AttributeError, match="read-only"):
            cp.n_ctx = 5
        with pytest.raises(AttributeError, match="no field"):
            cp.no_such_field  # noqa: B018


def test_eval_tokens_and_eval_logits(tiny_llm: Callable[..., Llama]) -> None:
    for logits_all in (True, False):
        llm = tiny_llm("llama", logits_all=logits_all)
        llm.eval(llm.tokenize(b"hello world"))
        n = llm.n_tokens
        assert list(llm.eval_tokens) == llm.input_ids[:n].tolist() and llm.eval_tokens.maxlen == llm.n_ctx()
        rows = llm.eval_logits
        assert len(rows) == (n if logits_all else 1) and len(rows[-1]) == llm.n_vocab()
        assert np.allclose(rows[-1], llm.last_logits) and np.allclose(rows[0], llm.scores[n - len(rows)])


def test_tokenizer_and_a_tokenizer_given_to_llama(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    from llama_rewire.llama_tokenizer import BaseLlamaTokenizer, LlamaHFTokenizer, LlamaTokenizer

    path, _ = tiny("llama")
    with Llama(str(path), verbose=False) as llm:
        tok = llm.tokenizer()
        assert isinstance(tok, LlamaTokenizer) and isinstance(llm.tokenizer_, BaseLlamaTokenizer)
        ids = llm.tokenize(b"hello world")
        assert tok.tokenize(b"hello world") == ids == tok.encode("hello world")
        assert tok.decode(ids) == llm.detokenize(ids).decode() == "hello world"
        greedy = llm("hello", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert LlamaTokenizer.from_ggml_file(str(path)).tokenize(b"hello world") == ids

    class Letters:  # a Hugging Face-like tokenizer: 30 a space, 31... the letters, BOS 1 if special
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return ([1] if add_special_tokens else []) + [31 + ord(c) - ord("a") if c.isalpha() else 30
                                                          for c in text]

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(" " if i == 30 else chr(ord("a") + i - 31) for i in ids if i >= 30)

    hf = LlamaHFTokenizer(Letters())
    assert hf.tokenize(b"ab", special=False) == [31, 32] and hf.tokenize(b"ab")[0] == 1
    assert hf.detokenize([32], prev_tokens=[31]) == b"b" and hf.detokenize([30, 31]) == b" a"
    with Llama(str(path), tokenizer=hf, verbose=False) as custom:
        # as in llama-cpp-python, the HF tokenizer adds its special tokens when `special` is asked for
        assert custom.tokenize(b"hello world") == Letters().encode("hello world", add_special_tokens=False)
        assert custom.tokenize(b"hi", special=True) == [1, 38, 39]
        assert custom.tokenizer_ is hf and custom.tokenizer().tokenize(b"hello world") == ids
        other = custom("hello", max_tokens=6, temperature=0.0)["choices"][0]["text"]
        assert custom.input_ids[:6].tolist() == Letters().encode("hello")  # the prompt as it tokenizes it
    assert isinstance(other, str) and isinstance(greedy, str)
    with pytest.raises(TypeError, match="BaseLlamaTokenizer"):
        Llama(str(path), tokenizer=Letters(), verbose=False)
    with pytest.raises(TypeError, match="encode"):
        LlamaHFTokenizer(object())


def test_create_chat_completion_openai_v1(tiny_llm: Callable[..., Llama]) -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    llm = tiny_llm("llama", n_ctx=256, logits_all=False)
    messages = [{"role": "user", "content": "hello"}]
    out = llm.create_chat_completion_openai_v1(messages=messages, max_tokens=4, temperature=0.0)
    assert isinstance(out, ChatCompletion) and out.choices[0].message.role == "assistant"
    plain = llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0.0)
    assert out.choices[0].message.content == plain["choices"][0]["message"]["content"]
    chunks = list(llm.create_chat_completion_openai_v1(messages=messages, max_tokens=4, temperature=0.0,
                                                       stream=True))
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)


def test_pickling_loads_the_model_again(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    path, _ = tiny("llama")
    with Llama(str(path), n_ctx=768, n_batch=64, seed=7, verbose=False) as llm:
        text = llm("hello", max_tokens=6, temperature=0.0)["choices"][0]["text"]
        state = pickle.dumps(llm)
    with pickle.loads(state) as again:
        assert again.n_ctx() == 768 and again.context_params.n_ctx == 768 and again.n_batch == 64
        assert again("hello", max_tokens=6, temperature=0.0)["choices"][0]["text"] == text


def _fake_hub(files: list[str], fail: Exception | None, local: Path) -> types.ModuleType:
    hub = types.ModuleType("huggingface_hub")
    calls: list[dict[str, Any]] = []

    def list_repo_files(repo_id: str) -> list[str]:
        if fail is not None:
            raise fail
        return files

    def hf_hub_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(local)

    hub.list_repo_files = list_repo_files  # type: ignore[attr-defined]
    hub.hf_hub_download = hf_hub_download  # type: ignore[attr-defined]
    hub.calls = calls  # type: ignore[attr-defined]
    return hub


def test_from_pretrained(tiny: Callable[[str], tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = tiny("llama")
    files = ["README.md", "q4/model-Q4_0.gguf", "q8/model-Q8_0.gguf", "model-00002-of-00002.gguf"]
    hub = _fake_hub(files, None, path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with Llama.from_pretrained("org/model", "*Q4_0.gguf", additional_files=["*00002*"], verbose=False,
                               n_ctx=768) as llm:
        assert llm.model_path == str(path) and llm.n_ctx() == 768
    assert [c["filename"] for c in hub.calls] == ["q4/model-Q4_0.gguf", "model-00002-of-00002.gguf"]
    with pytest.raises(ValueError, match=r"2 files .* match 'q\*/\*\.gguf'"):
        Llama.from_pretrained("org/model", "q*/*.gguf")
    with pytest.raises(ValueError, match=r"No file in org/model match 'x\.gguf'"):
        Llama.from_pretrained("org/model", "x.gguf")
    monkeypatch.setitem(sys.modules, "huggingface_hub", _fake_hub(files, OSError("offline"), path))
    with pytest.raises(ConnectionError, match=r"cannot list the files of org/model .*offline"):
        Llama.from_pretrained("org/model", "*.gguf")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ImportError, match="pip install huggingface-hub"):
        Llama.from_pretrained("org/model", "*.gguf")


def test_min_tokens_logits_processor(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", logits_all=False)
    eos = llm.token_eos()

    def eos_first(input_ids: Any, scores: Any) -> Any:  # without the processor, EOS at once
        scores[eos] = 1e9
        return scores

    procs = llama_cpp.LogitsProcessorList([eos_first, llama_cpp.MinTokensLogitsProcessor(3, eos)])
    out = llm("hello", max_tokens=8, temperature=0.0, logits_processor=procs)
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "stop"
    alone = llm("hello", max_tokens=8, temperature=0.0, logits_processor=eos_first)
    assert alone["usage"]["completion_tokens"] == 0


def test_unknown_arguments_are_silent_without_verbose(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    path, _ = tiny("llama")
    code = ("import sys; from llama_rewire import Llama; "
            f"Llama({str(path)!r}, verbose=sys.argv[1] == '1', f16_kv=True, n_parts=1).close()")
    quiet = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, timeout=120,
                           check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert "ignoring unknown Llama arguments: f16_kv, n_parts" in loud.stderr


# -- the chat formats, handlers and grammar names -------------------------------------------------------


def test_chat_template_constants_render_their_formats() -> None:
    from llama_rewire import llama_chat_format as cf

    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}]

    def render(template: str, bos: str, eos: str) -> str:
        return cf.Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=conv).prompt

    assert render(cf.CHATML_CHAT_TEMPLATE, cf.CHATML_BOS_TOKEN, cf.CHATML_EOS_TOKEN) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n"
        "Bye<|im_end|>\n<|im_start|>assistant\n")
    bos, eos = cf.MISTRAL_INSTRUCT_BOS_TOKEN, cf.MISTRAL_INSTRUCT_EOS_TOKEN
    assert render(cf.MISTRAL_INSTRUCT_CHAT_TEMPLATE, bos, eos) == (
        "<s>[INST] Hi [/INST]Hello!</s> [INST] Bye [/INST]")
    assert render(cf.MIXTRAL_INSTRUCT_CHAT_TEMPLATE, bos, eos) == (
        "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]")
    assert render(cf.LLAMA3_INSTRUCT_CHAT_TEMPLATE, "<B>", "<E>") == (
        "<B><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    metadata = {"tokenizer.chat_template": cf.CHATML_CHAT_TEMPLATE}
    assert cf.guess_chat_format_from_gguf_metadata(metadata) == "chatml"


def test_more_builtin_formats() -> None:
    from llama_rewire import llama_chat_format as cf

    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    expected = {
        "chatglm3": "<|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\nBye<|assistant|>\n",
        "mistrallite": "<|prompter|>Be brief.\n\nHi</s><|assistant|>Hello!</s><|prompter|>Bye</s>"
                       "<|assistant|>",
        "open-orca": "Be brief.<|end_of_turn|>\nUser: Hi<|end_of_turn|>\nAssistant: Hello!<|end_of_turn|>\n"
                     "User: Bye<|end_of_turn|>\nAssistant: ",
        "openbuddy": "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:",
    }
    formatters = {"chatglm3": cf.format_chatglm3, "mistrallite": cf.format_mistrallite,
                  "open-orca": cf.format_open_orca, "openbuddy": cf.format_openbuddy}
    for name, prompt in expected.items():
        assert formatters[name](messages=conv).prompt == prompt, name
        assert name in cf.LlamaChatCompletionHandlerRegistry()
    assert cf.format is cf.format_vicuna


def test_chat_handlers_that_exist_and_those_that_say_they_cannot() -> None:
    from llama_rewire import llama_chat_format as cf

    assert cf.get_chat_completion_handler("chatml-function-calling") is cf.chatml_function_calling
    with pytest.raises(cf.LlamaChatCompletionHandlerNotFoundException, match="no-such"):
        cf.get_chat_completion_handler("no-such")
    assert issubclass(cf.LlamaChatCompletionHandlerNotFoundException, ValueError)
    for cls in (cf.Llava15ChatHandler, cf.Llava16ChatHandler, cf.MTMDChatHandler, cf.Qwen25VLChatHandler,
                cf.MiniCPMv26ChatHandler, cf.MoondreamChatHandler, cf.NanoLlavaChatHandler,
                cf.Gemma4ChatHandler, cf.ObsidianChatHandler, cf.Llama3VisionAlpha):
        with pytest.raises(NotImplementedError, match="no image or audio encoder"):
            cls(clip_model_path="mmproj.gguf")
    for handler in (cf.functionary_chat_handler, cf.functionary_v1_v2_chat_handler,
                    cf.get_chat_completion_handler("functionary-v2")):
        with pytest.raises(NotImplementedError, match="functionary"):
            handler(llama=None, messages=[])
    with pytest.raises(ImportError, match="pip install transformers"):
        cf.hf_autotokenizer_to_chat_formatter("org/model")
    config = {"chat_template": cf.CHATML_CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "<|im_end|>"}
    assert callable(cf.hf_tokenizer_config_to_chat_completion_handler(config))


def test_chatml_function_calling_calls_a_tool(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_ctx=512, logits_all=False)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 5}}, "required": ["city"]}}}
    from llama_rewire.llama_chat_format import chatml_function_calling

    out: Any = chatml_function_calling(llama=llm, messages=[{"role": "user", "content": "hi"}], tools=[tool],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       max_tokens=48, temperature=0.0)
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])


def test_schema_converter_and_sample_grammars() -> None:
    from llama_rewire import _core, llama_grammar

    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
              "required": ["a", "b"]}
    conv = llama_grammar.SchemaConverter(prop_order={"a": 0, "b": 1}, allow_fetch=False, dotall=False,
                                         raw_pattern=False)
    assert conv.visit(conv.resolve_refs(schema, "stdin"), "") == "root"
    grammar = conv.format_grammar()
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.index("a-kv") < root.index("b-kv")  # prop_order over the schema's order
    assert llama_grammar.LlamaGrammar.from_string(grammar).grammar == grammar
    plain = llama_grammar.SchemaConverter()
    plain.visit(schema, "root")
    assert plain.format_grammar() == "\n".join(sorted(llama_grammar.json_schema_to_gbnf(json.dumps(schema))
                                                      .strip().splitlines()))
    with pytest.raises(NotImplementedError):
        llama_grammar.SchemaConverter(dotall=True)
    with pytest.raises(NotImplementedError):
        conv.visit(schema, "person")
    for name in ("ARITHMETIC_GBNF", "C_GBNF", "CHESS_GBNF", "JAPANESE_GBNF", "JSON_ARR_GBNF", "LIST_GBNF"):
        assert _core.grammar_check(None, getattr(llama_grammar, name)), name
    rules = "\n".join(f"{k} ::= {r.content}" for k, r in {**llama_grammar.PRIMITIVE_RULES,
                                                           **llama_grammar.STRING_FORMAT_RULES}.items())
    head = f"root ::= value date-time-string uuid\nspace ::= {llama_grammar.SPACE_RULE}\n"
    assert _core.grammar_check(None, head + rules)


def test_json_schema_grammars_accept_what_llama_cpp_pythons_accept() -> None:
    # llama-cpp-python's converter allows one optional space between JSON tokens (also before a comma and
    # after the document) and no newlines; constrained greedy text is the same only with the same language
    # (but for raw control characters in strings, which it allows and which make invalid JSON)
    from llama_rewire import _core, llama_grammar

    props = {"a": {"type": "string", "maxLength": 8}, "b": {"type": "array", "items": {"type": "integer"}},
             "c": {"type": "object", "properties": {"d": {"type": "boolean"}}}}
    schema = {"type": "object", "properties": props, "required": ["a", "b"]}
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    rules = dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())
    assert rules["space"] == '" "?' == llama_grammar.SPACE_RULE
    assert '"\\n"' not in grammar  # llama.cpp's own space rule allows newlines and indentation
    assert rules["root"].endswith(") space")
    assert all(r.count('"," space') == r.count('space "," space') for r in rules.values())
    # its escapes, "\/" included; no raw control characters (llama-cpp-python's would make invalid JSON)
    assert rules["char"] == r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
    assert _core.grammar_check(None, grammar)
    assert llama_grammar.LlamaGrammar.from_json_schema(schema, verbose=False).grammar == grammar


def test_utils_logger_and_internals(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    from llama_rewire import _internals, _logger, _utils

    with _utils.suppress_stdout_stderr(disable=False):
        print("hidden")
        os.write(2, b"hidden native\n")
    with _utils.suppress_stdout_stderr():  # disable=True by default: nothing changes
        print("shown")
    out, err = capfd.readouterr()
    assert out == "shown\n" and "hidden" not in err
    assert _logger.logger.name == "llama_rewire" and callable(_logger.set_verbose)
    assert _internals.normalize_embedding([3.0, 4.0]) == [0.6, 0.8]
    assert _internals.normalize_embedding([0.0, 0.0]) == [0.0, 0.0]
    with pytest.raises(NotImplementedError, match="not provided by llama-rewire"):
        _internals.LlamaModel(path_model="m.gguf", params=None)

"""API fuzzing: random values and types for every parameter of ``Llama(...)``, ``create_completion`` and
``create_chat_completion``, each call run in a child process that a crash or a hang cannot outlive.

A case is drawn from ``random.Random(f"{seed}:{index}")``, so that any process can rebuild case
``index`` of a seed (the parent only passes indices to its children, and rebuilds a case to report it).
It changes one to three parameters of a valid call, each to a value of one of these families: a valid
value, a near miss (off by one, just out of range, a typo of a name), an extreme (0, negative, huge,
NaN, inf), a wrong type, an empty or nested junk container, None. Unknown keyword arguments are
added now and then: they must be ignored, as llama-cpp-python does.

The property (:func:`judge`): the call returns a valid result (a completion, a stream that runs to its
end, a chat completion; a ``Llama`` that then completes), or raises ``ValueError`` / ``TypeError``
(subclasses included) whose message names one of the changed parameters; ``ContextOverflowError`` (a
prompt that does not fit) is the one ValueError that may say so in its own words. Anything else (another
exception type, a message naming none of them, a signal, a hang) is a failure.

:func:`run_cases` runs cases in batches in a child (``python api_gen.py child ...``) that prints a line
before and after each case; the parent reads them with a deadline per case, so a child that dies or
stops answering identifies its case, which is recorded as a crash or a hang, and a new child goes on
with the next case.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent

# the models a child opens: a plain tiny llama, the same with a chat template in its metadata, and one
# with logits_all and speculative decoding (echo with logprobs, drafts verified in one decode)
KINDS = ("llama", "llama_template", "llama_speculative")
CTX = {"n_ctx": 64, "n_threads": 1, "verbose": False}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# ---------------------------------------------------------------- values


class Junk:
    """An object of no expected type (its repr names it, for the report)."""

    def __repr__(self) -> str:
        return "Junk()"


class _Returns:
    """A callback that returns a fixed value (a repr that is the same in every process)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"returns({self.value!r:.40})"


class _Identity:
    def __call__(self, ids: Any, logits: Any) -> Any:
        return logits

    def __repr__(self) -> str:
        return "identity"


def _callable_returning(value: Any) -> Any:
    return _Returns(value)


NAN, INF = math.nan, math.inf
GENERIC = [None, 0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**63, -(2**63), 10**30, 1e300, -1e300, NAN, INF, -INF,
           0.5, True, False, "", "x", "0", "nan", "1e9", b"bytes", bytearray(b"ba"), [], [1], [None],
           {}, {"a": 1}, (1, 2), set(), frozenset({1}), 1 + 2j, Junk(), [[["x"]]], {"k": {"k": [None, {}]}},
           "a" * 5000, np.int64(5), np.float32(NAN), np.array([1, 2]), np.array(3.0), range(3),
           _callable_returning(None), Path("no/such/file"), Ellipsis]

COUNTS = [0, 1, 2, 3, 7, 8, 16, 31, 32, 63, 64, 65, 100, 256, 512, 4096, 2**16, 2**20, 2**22, 2**31 - 1,
          2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**64, -1, -2, -(2**31), -(2**63), True, False,
          1.0, 2.5, -0.0, NAN, INF, "16", np.int32(8), np.uint64(2**63), np.int8(-3)]
FLOATS = [0.0, -0.0, 1.0, 0.5, 0.95, -0.5, -1.0, 2.0, 1e-30, 1e-45, 1e30, 3.4e38, 3.5e38, 1e39, 1e308, NAN,
          INF, -INF, 1, 0, -3, 10**400, True, "0.5", np.float32(0.5), np.float64(NAN), np.float16(2.0),
          np.int64(2), 2**64]


def _enum(lo: int, hi: int) -> list[Any]:
    return [*range(lo, hi + 1), lo - 1, hi + 1, hi + 1000, -1000, 2**31, -(2**31) - 1, 0.0, float(hi),
            str(lo), NAN]


BOOLS = [True, False, 0, 1, 2, -1, "yes", "false", "", None, [], [0], np.bool_(True), 0.0, NAN]
NAMES = ["", " ", "x", "chatml", "llama-2", "llama-3", "gemma", "mistral-instruct", "chatml ", "ChatML",
         "chat_ml", "llama2", "zephyr", "qwen", "phi-3", "vicuna", "\x00", "é" * 3, "chatml\n"]
STOPS = ["", "\n", "a", "the", "<|im_end|>", "\x00", "é", "\ud800", "a" * 300, "🙂"]
WIRING = ["", "*:relu", "0:gelu", "0-2:skip=ffn", "9:relu", "*:relu@nan", "0:heads_off=[0,9]", "*:nope",
          "0:ffn_scale=inf", "*:gelu, 1:skip=layer", "x*sigmoid(1.5*x)", "0:", ":relu", "*:relu,"]


def _prompts(rng: random.Random) -> list[Any]:
    return ["", " ", "hi", "Hello, world", "\x00\x01", "é🙂\ud800", "a" * 200, "a" * 5000,
            "<|im_start|>user\nx<|im_end|>", [1, 2, 3], [], [1], [0], [-1], [259], [260], [2**31], [1.5],
            [True], ["a"], [[1]], [1] * 63, [1] * 64, [1] * 200, np.array([1, 5, 9]), np.array([[1, 2]]),
            np.array([1.5]), (1, 2), range(1, 5), b"bytes", None, 5, {"a": 1},
            [rng.randrange(-5, 300) for _ in range(rng.randrange(1, 40))]]


def _messages(rng: random.Random) -> list[Any]:
    user = {"role": "user", "content": "hi"}
    return [
        [user], [], None, "hi", [user, {"role": "assistant", "content": "yo"}, user],
        [{"role": "system", "content": "be brief"}, user], [{"role": "user"}], [{"content": "hi"}],
        [{"role": 5, "content": "hi"}], [{"role": "user", "content": None}], [{"role": "user", "content": 5}],
        [{"role": "user", "content": ["a", 1]}], [{"role": "user", "content": [{"type": "text",
            "text": "x"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": {"a": [1]}}],
        [{"role": "bogus", "content": "hi"}], [{"role": "", "content": ""}], [{"role": "user",
            "content": NAN}],
        [{"role": "tool", "content": "3", "tool_call_id": "x"}],
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function",
                                                               "function": {"name": "f",
                                                                   "arguments": "{"}}]}],
        [{"role": "assistant", "tool_calls": "junk"}], [{"role": "user", "content": "hi", "name": 5}],
        [user, 5], [None], [[user]], [{"role": "user", "content": "a" * 3000}],
        [{"role": "user", "content": "\x00\ud800é🙂"}], [{"role": "user", "content": "{{ 7*7 }} {% if %}"}],
        [{"role": "user", "content": "hi"} for _ in range(rng.randrange(2, 30))],
        [{"role": "user", "content": "x", "extra": Junk()}],
    ]


def _tool(name: Any = "get_weather", params: Any = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": params if params is not None else {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


TOOLS = [[_tool()], [_tool(), _tool("other")], [], None, "junk", [None], [{}], [{"type": "function"}],
         [{"type": "function", "function": None}], [{"type": "function", "function": {"name": 5}}],
         [_tool(params={"type": "nonsense"})], [_tool(params={"$ref": "#/nope"})], [_tool(params="junk")],
         [_tool(params={"type": "object", "properties": {"a": {"type": "integer", "minimum": NAN}}})],
         [_tool(name="")], [_tool(name="a b\n")], [_tool()] * 40]
TOOL_CHOICES = ["auto", "none", "required", None, "", "Auto", "junk", 5, {}, {"type": "function"},
                {"type": "function", "function": {"name": "get_weather"}},
                {"type": "function", "function": {"name": "nope"}}, {"type": "function", "function": None},
                {"function": {"name": 5}}, []]
RESPONSE_FORMATS = [None, {"type": "text"}, {"type": "json_object"},
                    {"type": "json_object", "schema": {"type": "object",
                        "properties": {"a": {"type": "string"}}}},
                    {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}},
                    {"type": "json_schema", "json_schema": None}, {"type": "json_schema"},
                        {"type": "jsn_object"},
                    {"type": None}, {}, "json_object", 5, [], {"type": "json_object", "schema": "junk"},
                    {"type": "json_object", "schema": {"type": "integer", "minimum": NAN}},
                    {"type": "json_object", "schema": {"$ref": "#/definitions/x"}},
                    {"type": "json_object", "schema": {"type": "object", "properties": {"a": Junk()}}}]


def _grammars() -> list[Any]:
    from llama_rewire import LlamaGrammar

    return [None, "root ::= \"a\"", "", 5, Junk(), LlamaGrammar.from_string('root ::= "yes" | "no"'),
            LlamaGrammar(_grammar="root ::= "), LlamaGrammar(_grammar="not a grammar"),
            LlamaGrammar(_grammar='root ::= <[99999]>'), LlamaGrammar(_grammar='root ::= "a"*'),
            LlamaGrammar(_grammar='root ::= [^\\x00-\\x7f]+'), LlamaGrammar(_grammar="root ::= root")]


def _logit_biases(rng: random.Random) -> list[Any]:
    return [None, {}, {1: 5.0}, {"1": 5.0}, {2: -INF}, {2: INF}, {3: NAN}, {-1: 1.0}, {260: 1.0},
        {2**40: 1.0},
            {"x": 1.0}, {1.5: 1.0}, {None: 1.0}, {1: "x"}, {1: None}, {1: 10**400}, [1, 2], "junk", 5,
            dict.fromkeys(range(260), -INF), {rng.randrange(300): rng.uniform(-100, 100) for _ in range(20)}]


def _processors() -> list[Any]:
    ok = _Identity()
    return [None, ok, [ok], [ok, ok], 5, "x", _callable_returning(None), _callable_returning(5),
            _callable_returning(np.zeros(3, np.float32)), _callable_returning(np.zeros(260)),
            _callable_returning(np.full(260, NAN, np.float32)), _callable_returning(np.full(260, -INF,
                np.float32)),
            _callable_returning([0.0] * 260), _callable_returning(np.zeros((2, 260), np.float32)),
            _callable_returning(np.zeros(260, np.int32)), _callable_returning("junk")]


def _criteria() -> list[Any]:
    return [None, _callable_returning(False), _callable_returning(True), _callable_returning(None),
            _callable_returning(np.bool_(True)), _callable_returning("yes"), _callable_returning([]),
            _callable_returning(np.array([True, False])), 5, "x", [_callable_returning(False)]]


def _paths(root: Path) -> list[Any]:
    return [str(root / "llama.gguf"), root / "llama.gguf", str(root / "nope.gguf"), str(root), "", " ",
            str(root / "garbage.gguf"), str(root / "empty.gguf"), 5, b"bytes/path", ["x"], "\x00", "é" * 300,
            str(root / "llama.gguf") + "\x00junk"]


# ---------------------------------------------------------------- parameters


@dataclass
class Param:
    """One parameter: the values that are valid or nearly so for it (drawn half of the time)."""

    name: str
    values: Any  # a list, or a callable (rng, root) -> list


def _p(name: str, values: Any) -> Param:
    return Param(name, values)


def _llama_params() -> list[Param]:
    return [
        _p("model_path", lambda rng, root: _paths(root)), _p("n_gpu_layers", [0, -1, 1, 999, 2**31, *COUNTS]),
        _p("split_mode", _enum(0, 2)), _p("main_gpu", [0, 1, -1, 99, 2**31, "0"]),
        _p("tensor_split", [None, [], [1.0], [0.5, 0.5], [NAN], [-1.0], [INF], [1.0] * 300, "x", [None], 5]),
        _p("rpc_servers", [None, "", "localhost:50052", "localhost", "h:0", ["127.0.0.1:1"], 5]),
        _p("vocab_only", BOOLS), _p("use_mmap", BOOLS),
        _p("use_mlock", BOOLS), _p("use_extra_bufts", BOOLS),
        _p("kv_overrides", [None, {}, {"llama.context_length": 128}, {"llama.block_count": 0},
                            {"llama.block_count": 2**40}, {"llama.expert_count": 5}, {"": 1}, {"k" * 200: 1},
                            {"x": "v" * 200}, {"x": None}, {"x": [1]}, {5: 1}, {"general.name": "é"},
                            {"llama.attention.layer_norm_rms_epsilon": NAN}, {"llama.rope.freq_base": -1.0},
                            {"tokenizer.ggml.bos_token_id": 99999}, "junk", [("a", 1)]]),
        _p("seed", [0, 1, -1, 0xFFFFFFFF, 2**32, 2**64, -(2**63), 1.5, NAN, "1", None]),
        _p("n_ctx", [0, 1, 2, 8, 32, 64, 96, 256, 257, 4096, 2**16, *COUNTS]),
        _p("n_batch", [1, 2, 8, 32, 64, 512, *COUNTS]), _p("n_ubatch", [1, 2, 8, 32, 64, 512, *COUNTS]),
        _p("n_threads", [None, 1, 2, 4, 0, -1, 512, 513, 4096, *COUNTS]),
        _p("n_threads_batch", [None, 1, 2, 0, -1, 512, 513, *COUNTS]),
        _p("rope_scaling_type", [None, *_enum(-1, 4)]), _p("pooling_type", _enum(-1, 4)),
        _p("attention_type", _enum(-1, 1)),
        *[_p(n, FLOATS) for n in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor",
                                  "yarn_beta_fast", "yarn_beta_slow", "lora_scale", "ffn_stats_eps")],
        _p("yarn_orig_ctx", COUNTS), _p("logits_all", BOOLS), _p("embedding", BOOLS), _p("offload_kqv",
            BOOLS),
        _p("flash_attn", BOOLS), _p("op_offload", [None, *BOOLS]), _p("swa_full", [None, *BOOLS]),
        _p("no_perf", BOOLS), _p("last_n_tokens_size", [0, 1, 64, 2**20, *COUNTS]),
        _p("lora_base", [None, "", "x.gguf"]),
        _p("lora_path", lambda rng, root: [None, "", str(root / "nope.gguf"), str(root / "llama.gguf"),
                                           str(root / "garbage.gguf"), str(root), 5]),
        _p("chat_format", [None, *NAMES, 5]), _p("chat_handler", [None, 5, "chatml",
            _callable_returning(None)]),
        _p("type_k", [None, *_enum(0, 40)]), _p("type_v", [None, *_enum(0, 40)]),
        _p("draft_model", [None, 5, "x", _callable_returning([1, 2]), _callable_returning([]),
                           _callable_returning([-1, 99999]), _callable_returning(None),
                           _callable_returning(np.array([[1, 2]])), _callable_returning("abc")]),
        _p("verbose", BOOLS), _p("activations", [None, *WIRING, {"0": "relu"}, {0: NAN}, 5]),
        _p("wiring", [None, *WIRING, {"*": {"skip": "ffn"}}, {"x": 1}, 5]), _p("observe_ffn", BOOLS),
    ]


_SAMPLING = [
    _p("temperature", FLOATS), _p("top_p", FLOATS), _p("min_p", FLOATS), _p("typical_p", FLOATS),
    _p("frequency_penalty", FLOATS), _p("presence_penalty", FLOATS), _p("repeat_penalty", FLOATS),
    _p("top_k", [0, 1, 40, 259, 260, 261, -1, 2**31, *COUNTS]), _p("tfs_z", FLOATS),
    _p("mirostat_mode", [*_enum(0, 2), None]), _p("mirostat_tau", FLOATS), _p("mirostat_eta", FLOATS),
    _p("seed", [None, 0, 1, -1, 0xFFFFFFFF, 2**32, 2**64, -(2**63), 1.5, NAN, "3", True]),
    _p("max_tokens", [None, 0, 1, 4, 16, -1, -(2**31), 2**31, 2**63, 1.5, "5", NAN, True]),
    _p("stop", [None, [], *STOPS, list(STOPS), [None], [5], ["a", 5], "", [""], ["a"] * 1000, 5, ("a",)]),
    _p("stream", BOOLS), _p("model", [None, "", "m", 5, Junk()]),
    _p("logits_processor", lambda rng, root: _processors()),
    _p("grammar", lambda rng, root: _grammars()),
    _p("logit_bias", lambda rng, root: _logit_biases(rng)),
]


def _completion_params() -> list[Param]:
    return [_p("prompt", lambda rng, root: _prompts(rng)), _p("suffix", [None, "", "x", 5]),
            _p("logprobs", [None, 0, 1, 5, 260, 261, 2**31, -1, 1.5, True, "3"]), _p("echo", BOOLS),
            _p("stopping_criteria", lambda rng, root: _criteria()), *_SAMPLING]


def _chat_params() -> list[Param]:
    return [_p("messages", lambda rng, root: _messages(rng)), _p("tools", TOOLS), _p("tool_choice",
        TOOL_CHOICES),
            _p("functions", [None, [], [{"name": "f", "parameters": {}}], [{"name": 5}], "junk", [None]]),
            _p("function_call", [None, "auto", "none", {"name": "f"}, {"name": None}, "junk", 5]),
            _p("response_format", RESPONSE_FORMATS), _p("logprobs", [None, *BOOLS]),
            _p("top_logprobs", [None, 0, 1, 5, 20, 260, 2**31, -1, 1.5, "2", True]),
            *[p for p in _SAMPLING if p.name != "max_tokens"],
            _p("max_tokens", [None, 0, 1, 4, 8, -1, 2**31, 1.5, "5", NAN])]


PARAMS = {"init": _llama_params(), "completion": _completion_params(), "chat": _chat_params()}
# the arguments a case starts from, before its changes (kept short: a case is a call, not a benchmark)
BASE = {"init": {}, "completion": {"prompt": "hi", "max_tokens": 4},
        "chat": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}
UNKNOWN_KWARGS = [{"n_parallel": 2}, {"bogus": Junk()}, {"logits_all_": True}, {"numa": False},
                  {"n_probs": 3}, {"penalize_nl": True}]


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    index: int
    target: str                  # init | completion | chat
    kind: str                    # the model: llama | llama_template
    kwargs: dict[str, Any]
    changed: list[str]           # the parameters given values of their own by this case
    families: list[str] = field(default_factory=list)

    def describe(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"#{self.index} {self.target}[{self.kind}]({args})"


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:60] + f"...<{len(r)} chars>"


def _draw(rng: random.Random, param: Param, root: Path) -> tuple[Any, str]:
    values = param.values(rng, root) if callable(param.values) else param.values
    if rng.random() < 0.6:
        return rng.choice(values), "own"
    return rng.choice(GENERIC), "generic"


def make_case(seed: int, index: int, root: Path) -> Case:
    """Case ``index`` of ``seed`` (the same in every process); seed REGRESSIONS: the regression cases."""
    if seed == REGRESSIONS:
        return regression_case(index, root)
    rng = random.Random(f"{seed}:{index}")
    target = rng.choices(("init", "completion", "chat"), weights=(2, 5, 4))[0]
    kind = rng.choice(KINDS) if target != "init" else "llama"
    params = PARAMS[target]
    kwargs = dict(BASE[target])
    changed: list[str] = []
    families: list[str] = []
    for param in rng.sample(params, rng.choice((1, 1, 1, 2, 2, 3))):
        value, family = _draw(rng, param, root)
        kwargs[param.name] = value
        changed.append(param.name)
        families.append(family)
    if rng.random() < 0.05:
        kwargs.update(rng.choice(UNKNOWN_KWARGS))
    if target == "init":
        kwargs.setdefault("model_path", str(root / "llama.gguf"))
        for k, v in CTX.items():
            kwargs.setdefault(k, v)
    return Case(index, target, kind, kwargs, changed, families)


# ---------------------------------------------------------------- regressions

REGRESSIONS = -1  # the "seed" of the regression cases
CRASH_PROBE, HANG_PROBE = -1, -2  # indices a child answers by dying or hanging (to test the harness)


def _regressions(root: Path) -> list[tuple[str, str, dict[str, Any], str, str]]:
    """(target, model, arguments, verdict, a fragment of the message): calls the fuzzer found to crash or
    to raise another exception type (or one naming no parameter), each with what it gives now."""
    from llama_rewire import LlamaGrammar
    from llama_rewire.llama_grammar import JSON_GBNF

    return [
        # SIGSEGV in ggml's threadpool
        ("init", "llama", {"n_threads": 100000}, "ValueError", "n_threads must be at most 512"),
        ("init", "llama", {"n_threads_batch": 2**31 - 1}, "ValueError",
            "n_threads_batch must be at most"),
        # RuntimeError from llama_init_from_model (n_ctx padded past uint32; a quantized V cache)
        ("init", "llama", {"n_ctx": 2**32 - 1}, "ValueError", "n_ctx must be in [0, 2147483647]"),
        ("init", "llama", {"type_v": 3}, "ValueError", "type_v=3 is a quantized V cache"),
        ("init", "llama", {"n_ctx": 2**31 - 1}, "ValueError",
            "the context does not fit in memory (n_ctx="),
        # OSError, ValueError naming nothing, ModelLoadError naming no parameter
        ("init", "llama", {"model_path": "é" * 300}, "ValueError", "Model path does not exist"),
        ("init", "llama", {"rpc_servers": np.array([1, 2])}, "TypeError",
            "rpc_servers must be a string"),
        ("init", "llama", {"lora_path": np.array([1, 2])}, "TypeError", "lora_path must be a path"),
        ("init", "llama", {"lora_path": str(root / "nope.gguf")}, "ValueError", "lora_path: failed"),
        ("init", "llama", {"wiring": np.array([1, 2])}, "ValueError", "wiring must be a spec string"),
        ("init", "llama", {"activations": ":relu"}, "ValueError", "activations: spec entry ':relu'"),
        ("init", "llama", {"kv_overrides": {"llama.block_count": 2**40}}, "ValueError",
         "llama.block_count is 1099511627776: llama.cpp supports at most 512 layers (1..512) (kv_overrides"),
        ("init", "llama", {"draft_model": _callable_returning("abc")}, "TypeError",
         "draft_model must return a list of token ids"),
        # TypeError / ValueError naming nothing, AttributeError, OverflowError, UnicodeEncodeError
        ("completion", "llama", {"stop": 5}, "TypeError", "stop must be a string or a list"),
        ("completion", "llama", {"logit_bias": "0"}, "TypeError",
            "logit_bias must be a dict"),
        ("completion", "llama", {"temperature": []}, "TypeError",
            "temperature must be a number"),
        ("completion", "llama", {"top_p": "x"}, "TypeError", "top_p must be a number"),
        ("completion", "llama", {"temperature": 10**400}, "ValueError",
            "temperature is too large"),
        ("completion", "llama", {"mirostat_mode": None}, "TypeError",
            "mirostat_mode must be an"),
        ("completion", "llama", {"top_k": 2**40}, "ValueError", "top_k must be in"),
        ("completion", "llama", {"seed": "3"}, "TypeError", "seed must be an integer"),
        ("completion", "llama", {"logits_processor": 5}, "TypeError",
            "logits_processor must be"),
        ("completion", "llama", {"logits_processor": _callable_returning(None)}, "ValueError",
         "logits_processor must return a 1-D array"),
        ("completion", "llama", {"stopping_criteria": _callable_returning(np.array([1, 0]))},
         "TypeError", "stopping_criteria must return a bool"),
        ("completion", "llama", {"prompt": [1, 260]}, "ValueError", "prompt: token id 260 is out of range"),
        ("completion", "llama", {"prompt": "a\ud800"}, "ValueError", "prompt is not valid text"),
        ("completion", "llama", {"prompt": Junk()}, "TypeError",
            "prompt must be a str or a list of token ids"),
        ("completion", "llama", {"model": np.array([1, 2])}, "ok", ""),
        # a GrammarError from the sampler: a negative typical_p kept a token the grammar bans
        ("completion", "llama", {"typical_p": -1.0,
            "grammar": LlamaGrammar.from_string(JSON_GBNF),
                                 "max_tokens": 8}, "ok", ""),
        # UnicodeDecodeError: the grammar error's message held a token's partial UTF-8
        ("completion", "llama", {"grammar": LlamaGrammar(_grammar="root ::= <[99999]>")},
         "ValueError", "grammar: the token <[99999]> is out of range"),
        ("chat", "llama", {"response_format": 5}, "TypeError",
            "response_format must be a dict"),
        ("chat", "llama", {"tools": "junk"}, "TypeError", "tools must be a list"),
        ("chat", "llama", {"stop": 5}, "TypeError", "stop must be a string or a list"),
        ("chat", "llama", {"messages": [{"role": "assistant", "tool_calls": "junk"}]}, "TypeError",
         "messages[0].tool_calls must be a list"),
        ("chat", "llama_template", {"functions": [{"name": 5}]}, "TypeError",
         "functions[0].name must be a non-empty string"),
        ("chat", "llama_template", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "ValueError", "messages[0].content[0] is a part of type 'image_url': only text parts"),
        ("chat", "llama", {"messages": [{"role": "bogus", "content": "hi"}]}, "ValueError",
         "unknown message role 'bogus' in messages"),
        ("chat", "llama_template", {"messages": [{"role": "user", "content": "a\ud800"}]}, "ValueError",
         "messages[0].content is not valid text"),
        ("chat", "llama_template", {"messages": [{"role": "user", "content": "x", "extra": Junk()}]},
         "TypeError", "messages and tools must be JSON"),
        ("chat", "llama", {"response_format": {"type": "json_object",
            "schema": {"a": Junk()}}},
         "TypeError", "response_format: the schema is not JSON"),
    ]


def regression_case(index: int, root: Path) -> Case:
    target, kind, changes, _, _ = _regressions(root)[index]
    kwargs = {**BASE[target], **({"model_path": str(root / "llama.gguf"), **CTX} if target == "init" else {})}
    return Case(index, target, kind, {**kwargs, **changes}, list(changes))


def regression_expectations(root: Path) -> list[tuple[str, str]]:
    return [(verdict, fragment) for *_, verdict, fragment in _regressions(root)]


# ---------------------------------------------------------------- one call, judged


def _consume(result: Any) -> Any:
    """A stream is read to its end (that is part of the call); a result must be a dict."""
    if isinstance(result, dict):
        return result
    chunks = list(result)
    if not all(isinstance(c, dict) for c in chunks):
        raise AssertionError(f"a stream yielded {chunks!r:.200}")
    return chunks


def _check_result(target: str, out: Any) -> None:
    if target == "init":
        return
    if isinstance(out, list):  # stream
        assert out, "an empty stream"
        last = out[-1]["choices"][0]
        assert last.get("finish_reason") in ("stop", "length", "tool_calls", "function_call"), last
        return
    choice = out["choices"][0]
    if target == "completion":
        assert isinstance(choice["text"], str), choice
    else:
        assert choice["message"]["role"] == "assistant", choice
    assert choice["finish_reason"] in ("stop", "length", "tool_calls", "function_call"), choice


def call_case(case: Case, models: dict[str, Any], root: Path) -> Any:
    """Make the call of a case (a Llama for init, closed again after one completion)."""
    from llama_rewire import Llama

    if case.target == "init":
        llm = Llama(**case.kwargs)
        try:
            if llm._ctx is not None:
                out = llm.create_completion("hi", max_tokens=2)
                _check_result("completion", _consume(out))
        finally:
            llm.close()
        return None
    llm = models[case.kind]
    if case.target == "completion":
        out = _consume(llm.create_completion(**case.kwargs))
    else:
        out = _consume(llm.create_chat_completion(**case.kwargs))
    _check_result(case.target, out)
    return out


def judge(case: Case, exc: BaseException | None) -> tuple[str, str]:
    """(verdict, detail): ok | ValueError | TypeError (naming a changed parameter) | other."""
    from llama_rewire.errors import ContextOverflowError

    if exc is None:
        return "ok", ""
    msg = " ".join(str(exc).split())
    detail = f"{type(exc).__name__}: {msg[:300]}"
    if isinstance(exc, (ValueError, TypeError)):
        verdict = "ValueError" if isinstance(exc, ValueError) else "TypeError"
        if isinstance(exc, ContextOverflowError):
            return verdict, detail
        names = list(case.changed)
        if "model_path" in case.changed:  # llama-cpp-python's "Model path does not exist: ...", the file
            names += ["Model path",
                *[str(case.kwargs["model_path"])] * (len(str(case.kwargs["model_path"])) > 2)]
        if any(n in msg for n in names):
            return verdict, detail
        return "unnamed", detail
    return "other", detail


# ---------------------------------------------------------------- the child


def write_models(root: Path) -> None:
    """The tiny models (and junk files) the cases use, into ``root``."""
    sys.path.insert(0, str(TESTS_DIR))
    sys.path.insert(0, str(HERE))
    import gguf_mutate
    import tiny_models
    from gguf import GGUFValueType as VT

    root.mkdir(parents=True, exist_ok=True)
    plain = root / "llama.gguf"
    if not plain.exists():
        tiny_models.WRITERS["llama"](plain)
    templated = root / "llama_template.gguf"
    if not templated.exists():
        img = gguf_mutate.read_image(plain)
        img.kvs.append(gguf_mutate.KV("tokenizer.chat_template", VT.STRING, CHATML))
        gguf_mutate.write_image(img, templated)
    (root / "garbage.gguf").write_bytes(b"GGUF" + os.urandom(200))
    (root / "empty.gguf").write_bytes(b"")


def child(seed: int, indices: list[int], root: Path) -> None:
    """Run cases, printing 'start i' before and 'done i <json>' after each."""
    import warnings

    from llama_rewire import Llama

    warnings.simplefilter("ignore")
    from llama_rewire import LlamaPromptLookupDecoding

    models = {k: Llama(str(root / f"{k}.gguf"), **CTX) for k in KINDS[:2]}
    models["llama_speculative"] = Llama(str(root / "llama.gguf"), **CTX, logits_all=True,
                                        draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4))
    for i in indices:
        print(f"start {i}", flush=True)
        if seed != REGRESSIONS and i in (CRASH_PROBE, HANG_PROBE):
            if i == CRASH_PROBE:
                os.abort()
            time.sleep(3600)
        case = make_case(seed, i, root)
        exc: BaseException | None = None
        try:
            call_case(case, models, root)
        except Exception as e:
            exc = e
        verdict, detail = judge(case, exc)
        print(f"done {i} {json.dumps([verdict, detail])}", flush=True)


# ---------------------------------------------------------------- the parent


@dataclass
class Outcome:
    index: int
    verdict: str  # ok | ValueError | TypeError | unnamed | other | crash | hang
    detail: str
    seconds: float = 0.0


def _spawn(seed: int, indices: list[int], root: Path, mem_limit: int, stderr: Any) -> subprocess.Popen[bytes]:
    code = ("import resource, sys\n"
            f"lim = {mem_limit}\n"
            "if lim: resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
            f"sys.path.insert(0, {str(HERE)!r})\n"
            "import api_gen\n"
            f"api_gen.child({seed}, {indices!r}, api_gen.Path({str(root)!r}))\n")
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    return subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], stdout=subprocess.PIPE,
                            stderr=stderr, env=env)


def _lines(proc: subprocess.Popen[bytes], timeout: float) -> Iterator[str | None]:
    """The child's stdout lines; None when none came within timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", errors="replace")
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            yield None
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            return
        buf += data


def run_cases(seed: int, indices: list[int], root: Path, *, batch: int = 200, timeout: float = 30.0,
              mem_limit: int = 8 << 30) -> Iterator[Outcome]:
    """Every case of ``indices``, in children of ``batch`` cases; a case that kills its child is a crash,
    one that runs past ``timeout`` seconds a hang (its child is killed); the next child goes on."""
    todo = list(indices)
    while todo:
        part, todo = todo[:batch], todo[batch:]
        finished: set[int] = set()
        for outcome in _run_child(seed, part, root, timeout, mem_limit):
            finished.add(outcome.index)
            yield outcome
        todo = [i for i in part if i not in finished] + todo


def _run_child(seed: int, part: list[int], root: Path, timeout: float, mem_limit: int) -> Iterator[Outcome]:
    """The outcomes of one child, up to the case that ended it (if one did)."""
    with tempfile.TemporaryFile() as err:
        proc = _spawn(seed, part, root, mem_limit, err)
        current: int | None = None
        started = spawned = time.monotonic()
        hung = False
        try:
            for line in _lines(proc, timeout):
                if line is None:
                    if current is not None or time.monotonic() - spawned > 4 * timeout:
                        hung = True  # the case has not finished in time (or the child never started)
                        break
                    continue  # still loading the models
                if line.startswith("start "):
                    current, started = int(line.split()[1]), time.monotonic()
                elif line.startswith("done "):
                    _, i, rest = line.split(" ", 2)
                    verdict, detail = json.loads(rest)
                    current = None
                    yield Outcome(int(i), verdict, detail, time.monotonic() - started)
        finally:
            if proc.poll() is None:
                proc.kill()
            rc = proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    if current is None:
        if rc != 0 or hung:
            raise RuntimeError(f"an API fuzz child failed outside any case (exit {rc}): {stderr[-2000:]}")
        return
    if hung:
        yield Outcome(current, "hang", f"no answer in {timeout:.0f}s", time.monotonic() - started)
        return
    tail = " | ".join(stderr.strip().splitlines()[-4:])[-600:]
    name = signal.Signals(-rc).name if rc < 0 and -rc in signal.valid_signals() else f"exit {rc}"
    yield Outcome(current, "crash", f"{name}: {tail}", time.monotonic() - started)

if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(int(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4]))

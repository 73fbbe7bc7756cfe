"""Checks of the arguments of ``Llama(...)``, ``create_completion`` and ``create_chat_completion``, made
in Python before any value reaches the native layer: a wrong type is a ``TypeError`` and a wrong value a
``ValueError``, each naming the parameter and the value.

They accept what llama-cpp-python accepts: bools and numpy scalars where numbers go, ints where floats go,
any object with a truth value where a flag goes, negative counts where llama.cpp reads them as "all" or
"default". Values that would reach a C type they do not fit (a count past ``int32``, a NaN sampling
parameter) are refused.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import rpc

INT32 = (-(2**31), 2**31 - 1)
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_THREADS = 512  # GGML_MAX_N_THREADS


def _repr(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:60] + f"... ({len(r)} characters)"


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (a bool or a numpy integer counts) in [lo, hi]."""
    if isinstance(value, (float, np.floating, str, bytes)) or value is None:
        raise TypeError(f"{name} must be an integer, got {_repr(value)}")
    try:
        x = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_repr(value)}") from None
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {x}")
    return x


def optional_integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    return None if value is None else integer(name, value, lo, hi)


def argument_error(kind: type[Exception], name: str, message: str) -> Exception:
    """``kind(message)`` that names the argument it is about (``.param``: its name without an index), so
    that a server can say which request field was wrong."""
    error = kind(message)
    error.param = name.partition("[")[0]  # type: ignore[attr-defined]
    return error


def number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           infinite: bool = False) -> float:
    """A real number (int, float, bool, numpy scalar), finite unless ``infinite``, within float32 when
    finite (it goes to a C ``float``), in [lo, hi]."""
    if isinstance(value, (str, bytes, complex, np.complexfloating)) or value is None:
        raise argument_error(TypeError, name, f"{name} must be a number, got {_repr(value)}")
    try:
        x = float(value)
    except OverflowError:
        raise argument_error(ValueError, name, f"{name} is too large, got {_repr(value)}") from None
    except (TypeError, ValueError):
        raise argument_error(TypeError, name, f"{name} must be a number, got {_repr(value)}") from None
    if math.isnan(x) or (math.isinf(x) and not infinite):
        raise argument_error(ValueError, name, f"{name} must be a finite number, got {_repr(value)}")
    if math.isfinite(x) and abs(x) > FLOAT32_MAX:
        raise argument_error(ValueError, name, f"{name} does not fit in a 32-bit float, got {_repr(value)}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise argument_error(ValueError, name, f"{name} must be in [{lo}, {hi}], got {_repr(value)}")
    return x


def flag(name: str, value: Any) -> bool:
    """Any object with a truth value, as llama-cpp-python's ctypes flags take it."""
    try:
        return bool(value)
    except Exception:
        raise TypeError(f"{name} must be a bool, got {_repr(value)}") from None


def path(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {_repr(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str path, got {_repr(value)}")
    if "\x00" in text:
        raise ValueError(f"{name} holds a NUL character: {_repr(text)}")
    try:
        text.encode("utf-8")
    except UnicodeError:
        raise ValueError(f"{name} is not valid UTF-8 text: {_repr(text)}") from None
    return text


def model_file(file: str) -> None:
    """A GGUF path that can be opened (llama-cpp-python's messages)."""
    try:
        is_dir = os.path.isdir(file)
        exists = is_dir or os.path.exists(file)
        if exists and not is_dir:
            os.stat(file)
    except (OSError, ValueError) as e:
        raise ValueError(f"Model path cannot be read: {file}: {e}") from None
    if not exists:
        raise ValueError(f"Model path does not exist: {file}")
    if is_dir:
        raise ValueError(f"Model path is a directory, not a GGUF file: {file}")


def text(name: str, value: str) -> bytes:
    """A str as UTF-8 (a lone surrogate cannot be encoded)."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid text: {e.reason} at index {e.start}") from None


# -- the constructor -------------------------------------------------------------------------------

_FLOAT_CACHE = (None, -1, 0, 1, 30)  # default, F32, F16, BF16: a V cache without flash attention
_FLAGS = ("vocab_only", "use_mmap", "use_mlock", "use_extra_bufts", "logits_all", "embedding", "offload_kqv",
          "flash_attn", "no_perf", "verbose", "observe_ffn")


def check_llama_args(args: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments, checked and converted (the ones given to native code)."""
    out = dict(args)
    for name in _FLAGS:
        out[name] = flag(name, args[name])
    for name in ("op_offload", "swa_full"):
        out[name] = None if args[name] is None else flag(name, args[name])
    out["n_gpu_layers"] = integer("n_gpu_layers", args["n_gpu_layers"], *INT32)
    out["rpc_servers"] = rpc.parse_endpoints(args["rpc_servers"])
    out["split_mode"] = integer("split_mode", args["split_mode"], -1, 2)
    out["main_gpu"] = integer("main_gpu", args["main_gpu"], *INT32)
    split = args["tensor_split"]
    if split is not None:
        if not isinstance(split, Sequence) or isinstance(split, (str, bytes)):
            raise TypeError(f"tensor_split must be a list of numbers, got {_repr(split)}")
        out["tensor_split"] = [number(f"tensor_split[{i}]", v, lo=0.0) for i, v in enumerate(split)]
    overrides = args["kv_overrides"]
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"kv_overrides must be a dict of key: value, got {_repr(overrides)}")
        for k, v in overrides.items():
            if not isinstance(k, str):
                raise TypeError(f"kv_overrides keys must be strings, got {_repr(k)}")
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"kv_overrides[{k!r}] must be a bool, int, float or str, got {_repr(v)}")
            if isinstance(v, int) and not isinstance(v, bool):
                integer(f"kv_overrides[{k!r}]", v, -(2**63), 2**63 - 1)
    out["seed"] = integer("seed", args["seed"])
    for name in ("n_ctx", "n_batch", "n_ubatch", "last_n_tokens_size"):
        if isinstance(args[name], (bool, float, str)) or not isinstance(args[name], (int, np.integer)):
            raise ValueError(f"{name} must be a non-negative integer, got {_repr(args[name])}")
        out[name] = integer(name, args[name], 0, INT32[1])  # llama.cpp pads n_ctx: uint32 would overflow
    for name in ("n_batch", "n_ubatch"):
        if out[name] == 0:
            raise ValueError(f"{name} must be positive, got 0")
    out["n_parallel"] = n_par = check_n_parallel(args["n_parallel"])
    if n_par > 1 and args["embedding"]:
        raise ValueError("n_parallel is for generation: an embedding model (embedding=True) batches its "
                         "inputs by itself")
    if n_par * out["n_ctx"] > INT32[1]:
        raise ValueError(f"n_parallel * n_ctx = {n_par} * {out['n_ctx']} is too large a context")
    for name in ("n_threads", "n_threads_batch"):
        n = optional_integer(name, args[name], *INT32)
        if n is not None and n > MAX_THREADS:
            raise ValueError(f"{name} must be at most {MAX_THREADS} (ggml's limit), got {n}")
        out[name] = n
    for name in ("type_k", "type_v"):
        out[name] = optional_integer(name, args[name], -1, 255)
    if out["type_v"] not in _FLOAT_CACHE and not out["flash_attn"]:
        raise ValueError(f"type_v={out['type_v']} is a quantized V cache: it needs flash_attn=True")
    if args["lora_path"] is not None:
        out["lora_path"] = path("lora_path", args["lora_path"])
        out["lora_scale"] = number("lora_scale", args["lora_scale"])
    out["ffn_stats_eps"] = number("ffn_stats_eps", args["ffn_stats_eps"], lo=0.0)
    # C floats: beyond float32 they would be inf, and every logit NaN
    for name in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast",
                 "yarn_beta_slow"):
        if name in args:
            out[name] = number(name, args[name])
    from .errors import ActivationSpecError, WiringSpecError
    from .wiring.spec import Wiring

    for name, error in (("wiring", WiringSpecError), ("activations", ActivationSpecError)):
        spec = args[name]
        if spec is not None and not isinstance(spec, (str, Mapping, os.PathLike, Wiring)):
            raise error(f"{name} must be a spec string, a dict or a profile path, got {_repr(spec)}")
    return out


# -- completions -------------------------------------------------------------------------------------

def logit_bias(value: Any, n_vocab: int) -> list[tuple[int, float]]:
    """{token id (int or digit string): bias} as pairs; -inf bans a token, +inf forces it."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise TypeError(f"logit_bias must be a dict of token id: bias, got {_repr(value)}")
    out = []
    for tok, bias in value.items():
        try:
            t = int(tok) if isinstance(tok, str) else integer("logit_bias", tok)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias keys must be token ids, got {_repr(tok)}") from None
        if not 0 <= t < n_vocab:
            raise ValueError(f"logit_bias: token id {t} is out of range [0, {n_vocab})")
        out.append((t, number(f"logit_bias[{t}]", bias, infinite=True)))
    return out


def stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, (Sequence, set, frozenset)) or isinstance(stop, (bytes, bytearray)):
        raise TypeError(f"stop must be a string or a list of strings, got {_repr(stop)}")
    stops = list(stop)
    if not all(isinstance(s, str) for s in stops):
        raise TypeError(f"stop must be a string or a list of strings, got {_repr(stop)}")
    return stops


def callback(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable (or None), got {_repr(value)}")
    return value


def processed_logits(value: Any, n_vocab: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """What a logits_processor returned, as the sampler takes it."""
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.shape != (n_vocab,) or not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_):
        raise ValueError(f"logits_processor must return a 1-D array of n_vocab = {n_vocab} floats, got "
                         f"{_repr(value)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def stop_verdict(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:
        raise TypeError(f"stopping_criteria must return a bool, got {_repr(value)}") from None


def token_ids(name: str, value: Any, n_vocab: int, kinds: str = "a str or a list of token ids") -> list[int]:
    """A sequence of token ids in [0, n_vocab); ``kinds`` says what ``name`` may be, for the TypeError."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be {kinds}, got {_repr(value)}")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise TypeError(f"{name} must be a 1-D list of token ids, got an array of shape {value.shape}")
    out = []
    for t in value:
        if isinstance(t, (bool, np.bool_)):
            raise TypeError(f"{name} must be {kinds}, got {_repr(value)}")
        try:
            out.append(integer(name, t))
        except TypeError:
            raise TypeError(f"{name} must be {kinds}, got {_repr(value)}") from None
    bad = next((t for t in out if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise ValueError(f"{name}: token id {bad} is out of range [0, {n_vocab})")
    return out


# -- chat completions --------------------------------------------------------------------------------


def _tool_function(where: str, fn: Any) -> None:
    if not isinstance(fn, Mapping):
        raise TypeError(f"{where} must be a dict with a 'name', got {_repr(fn)}")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}.name must be a non-empty string, got {_repr(name)}")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"{where}.parameters must be a JSON schema (a dict), got {_repr(params)}")


def _list_of(name: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {_repr(value)}")
    return list(value)


def _message(i: int, m: Mapping[str, Any]) -> None:
    where = f"messages[{i}]"
    role = m.get("role")
    if not isinstance(role, str):
        raise TypeError(f"{where}.role must be a string, got {_repr(role)}")
    content = m.get("content")
    for key in ("content", "name"):
        if isinstance(m.get(key), str):
            text(f"{where}.{key}", m[key])
    if content is not None and not isinstance(content, str):
        parts = _list_of(f"{where}.content", content) if not isinstance(content, Mapping) else None
        if parts is None or not all(isinstance(p, (str, Mapping)) for p in parts):
            raise TypeError(f"{where}.content must be a string, a list of content parts or None, got "
                            f"{_repr(content)}")
        for j, part in enumerate(parts):
            if isinstance(part, Mapping) and part.get("type") != "text":
                from .errors import ChatFormatError

                raise ChatFormatError(f"{where}.content[{j}] is a part of type {_repr(part.get('type'))}: "
                                      "only text parts are supported")
            value = part.get("text", "") if isinstance(part, Mapping) else part
            if not isinstance(value, str):
                raise TypeError(f"{where}.content[{j}].text must be a string, got {_repr(value)}")
            text(f"{where}.content[{j}]", value)
    calls = m.get("tool_calls")
    if calls is not None:
        for j, call in enumerate(_list_of(f"{where}.tool_calls", calls)):
            fn = call.get("function") if isinstance(call, Mapping) else None
            _tool_function(f"{where}.tool_calls[{j}].function", fn)
    if m.get("function_call") is not None:
        _tool_function(f"{where}.function_call", m["function_call"])
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise TypeError(f"{where}.{key} must be a string, got {_repr(m[key])}")


def check_chat_request(messages: Any, kwargs: dict[str, Any]) -> None:
    """The OpenAI-shaped fields of a chat request: messages, tools and functions, tool_choice and
    function_call, response_format, logprobs / top_logprobs and stop (the sampling parameters are
    those of create_completion, checked there)."""
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise TypeError(f"messages must be a list of dicts, got {_repr(messages)}")
    for i, m in enumerate(messages):
        _message(i, m)
    for name, nested in (("tools", True), ("functions", False)):
        if kwargs.get(name) is not None:
            for i, tool in enumerate(_list_of(name, kwargs[name])):
                if nested:
                    if not isinstance(tool, Mapping):
                        raise TypeError(f"tools[{i}] must be a dict, got {_repr(tool)}")
                    _tool_function(f"tools[{i}].function", tool.get("function"))
                else:
                    _tool_function(f"functions[{i}]", tool)
    for name in ("tool_choice", "function_call"):
        choice = kwargs.get(name)
        if choice is None or isinstance(choice, str):
            continue
        if not isinstance(choice, Mapping):
            raise TypeError(f"{name} must be a string or a dict, got {_repr(choice)}")
        _tool_function(name if name == "function_call" else f"{name}.function",
                       choice if name == "function_call" else choice.get("function"))
    rf = kwargs.get("response_format")
    if rf is not None:
        if not isinstance(rf, Mapping):
            raise TypeError(f"response_format must be a dict, got {_repr(rf)}")
        schema = rf.get("schema") if rf.get("type") == "json_object" else (
            (rf.get("json_schema") or {}).get("schema") if isinstance(rf.get("json_schema") or {}, Mapping)
            else rf.get("json_schema"))
        if rf.get("type") == "json_schema" and not isinstance(rf.get("json_schema") or {}, Mapping):
            raise TypeError(f"response_format.json_schema must be a dict, got {_repr(rf.get('json_schema'))}")
        if schema is not None and not isinstance(schema, (Mapping, bool)):
            raise TypeError(f"response_format schema must be a JSON schema (a dict), got {_repr(schema)}")
    if kwargs.get("logprobs") is not None:
        flag("logprobs", kwargs["logprobs"])
    optional_integer("top_logprobs", kwargs.get("top_logprobs"), 0, INT32[1])
    stop_strings(kwargs.get("stop"))


# -- grammars ------------------------------------------------------------------------------------------

_TOKEN_REF = re.compile(r"<\[(\d+)\]>")


def grammar_tokens(gbnf: str, n_vocab: int) -> None:
    """Token references (``<[123]>``) of a grammar must be tokens of the model."""
    for m in _TOKEN_REF.finditer(gbnf):
        if int(m.group(1)) >= n_vocab:
            from .errors import GrammarError

            raise GrammarError(f"grammar: the token {m.group(0)} is out of range [0, {n_vocab})")


@contextlib.contextmanager
def grammar_messages() -> Iterator[None]:
    """A native grammar error whose message holds a token's partial UTF-8 bytes reaches Python as a
    UnicodeDecodeError (the message cannot be made a str): it is a GrammarError again here."""
    try:
        yield
    except UnicodeDecodeError as e:
        from .errors import GrammarError

        raw = e.object if isinstance(e.object, bytes) else bytes(e.object)
        raise GrammarError(raw.decode("utf-8", errors="replace")) from None


def check_n_parallel(value: Any) -> int:
    """n_parallel as the Llama takes it: 1 to 256 sequences (llama.cpp's limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"n_parallel must be an integer from 1 to 256, got {value!r}")
    n = int(value)
    if not 1 <= n <= 256:
        raise ValueError(f"n_parallel must be from 1 to 256 (llama.cpp's limit on sequences), got {n}")
    return n

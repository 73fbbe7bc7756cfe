"""A look at a GGUF file's metadata before llama.cpp loads it: the hyperparameters llama.cpp asserts on
are refused here with the key and the value (``llama.block_count is 0: ...``) instead of the assert's
text (``GGML_ASSERT(hparams.n_layer_all > 0 && ...)``).

The reader is ours (``gguf`` is not a runtime dependency) and reads the header and the key/value section
only, never the tensors. It bounds every length by what is left of the file, so a truncated or garbage
file costs nothing and is left to llama.cpp's own loader, which says what is wrong with it. Before a
load it stops at the first large string array (the vocabulary: every converter writes the
hyperparameters before it), which keeps the check to well under a millisecond on real models; the checks
that need to know a key is absent then wait for :func:`explain`, which reads everything once a load has
failed and also finds what only the vocabulary shows (a duplicated token).

llama.cpp's own checks stay where they are: they are the backstop for everything this does not cover.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Any

# vendor/llama.cpp/src/llama-hparams.h
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
EXPERT_GATING_FUNCS = 4  # LLAMA_EXPERT_GATING_FUNC_TYPE_NONE .. _SQRT_SOFTPLUS

_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?",
           _U64: "<Q", _I64: "<q", _F64: "<d"}
_SIZE = {t: struct.calcsize(f) for t, f in _SCALAR.items()}
# bounds of the reader: string arrays longer than _WALK_QUICK end a quick read (the vocabulary), longer
# than _WALK_FULL a full one; numeric arrays are kept up to _KEEP_ARRAY values (per-layer values), strings
# up to _KEEP_STR bytes; a read stops after _MAX_KV pairs
_WALK_QUICK = 1024
_WALK_FULL = 4 << 20
_KEEP_ARRAY = 4 * LLAMA_MAX_LAYERS
_KEEP_STR = 1 << 20
_MAX_KV = 1 << 16
_CHECKED_U32 = ("block_count", "nextn_predict_layers", "expert_count", "expert_used_count",
                "expert_group_count", "expert_group_used_count", "expert_gating_func", "embedding_length",
                "attention.head_count", "ssm.inner_size")
_RECURRENT_X2 = ("mamba", "jamba")  # archs whose inner size must be twice the embedding


class _Malformed(Exception):
    """The bytes are not a well-formed GGUF header: llama.cpp's loader reports that itself."""


@dataclass
class Metadata:
    """What was read: values by key (scalars, strings, numeric arrays; string arrays kept only on a full
    read of the vocabulary), their GGUF types, and whether the whole section was read."""

    values: dict[str, Any] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    duplicate: str | None = None


class _Reader:
    def __init__(self, buf: Any, full: bool) -> None:
        self.buf = buf
        self.end = len(buf)
        self.pos = 0
        self.full = full

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.end:
            raise _Malformed(f"{n} bytes at offset {self.pos} run past the end of the file")
        at = self.pos
        self.pos += n
        return at

    def scalar(self, t: int) -> Any:
        return struct.unpack_from(_SCALAR[t], self.buf, self.take(_SIZE[t]))[0]

    def string(self, keep: bool = True) -> bytes | None:
        n = self.scalar(_U64)
        at = self.take(n)
        return bytes(self.buf[at : at + n]) if keep and n <= _KEEP_STR else None

    def value(self, t: int, key: str) -> tuple[Any, bool]:
        """(value, complete): the value of type t (None where it is not kept); False when a quick scan
        stops at this value."""
        if t in _SCALAR:
            return self.scalar(t), True
        if t == _STR:
            s = self.string()
            return (None if s is None else s.decode("utf-8", errors="replace")), True
        if t != _ARR:
            raise _Malformed(f"{key}: unknown value type {t}")
        sub, n = self.scalar(_U32), self.scalar(_U64)
        if sub in _SCALAR:
            at = self.take(n * _SIZE[sub])
            if n > _KEEP_ARRAY:
                return None, True
            fmt = f"<{n}{_SCALAR[sub][1]}"
            return list(struct.unpack_from(fmt, self.buf, at)), True
        if sub != _STR:
            raise _Malformed(f"{key}: arrays of type {sub} are not read here")
        if n > (_WALK_FULL if self.full else _WALK_QUICK):
            return None, False
        if n * 8 > self.end - self.pos:  # every string takes at least 8 bytes
            raise _Malformed(f"{key}: {n} strings cannot fit in the file")
        keep = self.full and key == "tokenizer.ggml.tokens"
        items = [self.string(keep) for _ in range(n)]
        return (items if keep else None), True


def read_metadata(path: str, *, full: bool = False) -> Metadata | None:
    """The key/value section of a GGUF file; None when the file is not a well-formed GGUF (llama.cpp
    then says why). ``full``: read past the vocabulary too (and keep the tokens)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read(_Reader(buf, full))
    except (OSError, ValueError, _Malformed, struct.error, OverflowError, MemoryError):
        return None


def _read(r: _Reader) -> Metadata:
    at = r.take(4)
    if bytes(r.buf[at : at + 4]) != b"GGUF":
        raise _Malformed("no GGUF magic")
    version = r.scalar(_U32)
    if version not in (2, 3):
        raise _Malformed(f"GGUF version {version}")
    r.scalar(_U64)  # tensors
    n_kv = r.scalar(_U64)
    if n_kv > (r.end - r.pos) // 13:  # a key/value pair takes at least 13 bytes
        raise _Malformed(f"{n_kv} key/value pairs cannot fit in the file")
    meta = Metadata()
    for i in range(n_kv):
        raw = r.string()
        if raw is None or i >= _MAX_KV:
            return meta  # a key too long to be one, or too many pairs to read here
        key = raw.decode("utf-8", errors="replace")
        t = r.scalar(_U32)
        if key in meta.types:
            meta.duplicate = key
            return meta
        value, complete = r.value(t, key)
        meta.types[key] = t
        if value is not None:
            meta.values[key] = value
        if not complete:
            return meta
    meta.complete = True
    return meta


# ---------------------------------------------------------------- the checks


def _u32(meta: Metadata, key: str, overrides: dict[str, Any]) -> int | None:
    """A uint32 hyperparameter as llama.cpp reads it (an int override wins); None when absent or of
    another type (llama.cpp reports a wrong type itself)."""
    o = overrides.get(key)
    if isinstance(o, int) and not isinstance(o, bool):
        return o  # as given: one that fits only once truncated to 32 bits is refused too
    if meta.types.get(key) != _U32:
        return None
    v = meta.values.get(key)
    return v if isinstance(v, int) else None


def _per_layer(meta: Metadata, key: str, overrides: dict[str, Any]) -> list[int] | None:
    """A uint32 value or per-layer array (get_key_or_arr), as llama.cpp reads it."""
    t = meta.types.get(key)
    if t == _ARR:
        v = meta.values.get(key)
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return None
        return [x & 0xFFFFFFFF for x in v]
    one = _u32(meta, key, overrides) if t is not None else None
    return None if one is None else [one]


def problems(meta: Metadata, overrides: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with the hyperparameters llama.cpp asserts on, one message per problem, each naming
    the key and the value. Checks that need to know a key is absent are made on a complete read only."""
    ov = overrides or {}
    arch = meta.values.get("general.architecture")
    if meta.duplicate is not None or not isinstance(arch, str):
        return []  # llama.cpp refuses a duplicated key or a missing architecture itself
    out: list[str] = []
    k = f"{arch}."
    missing = meta.complete  # an absent key is known to be absent
    for key in _CHECKED_U32:
        o = ov.get(k + key)
        if isinstance(o, int) and not isinstance(o, bool) and not 0 <= o < 2**32 and key != "block_count":
            return [f"{k}{key} is {o}: llama.cpp reads it as a uint32 (0..{2**32 - 1})"]

    n_layer = _u32(meta, k + "block_count", ov)
    if n_layer is not None and not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        why = ("the model must have at least one layer" if n_layer < 1
               else f"llama.cpp supports at most {LLAMA_MAX_LAYERS} layers")
        out.append(f"{k}block_count is {n_layer}: {why} (1..{LLAMA_MAX_LAYERS})")
        return out  # the per-layer checks below would only repeat it
    nextn = _u32(meta, k + "nextn_predict_layers", ov)
    if nextn is not None and n_layer is not None and nextn > n_layer:
        out.append(f"{k}nextn_predict_layers is {nextn}: more than the {n_layer} layers of {k}block_count")

    n_expert = _u32(meta, k + "expert_count", ov)
    has_n_expert = n_expert is not None or (missing and k + "expert_count" not in meta.types)
    if n_expert is not None and n_expert > LLAMA_MAX_EXPERTS:
        out.append(f"{k}expert_count is {n_expert}: llama.cpp supports at most {LLAMA_MAX_EXPERTS} experts "
                   f"(0..{LLAMA_MAX_EXPERTS})")
        return out
    used = _per_layer(meta, k + "expert_used_count", ov)
    has_used = used is not None or (missing and k + "expert_used_count" not in meta.types)
    used_max = max(used) if used else 0
    if has_n_expert and has_used:
        experts = n_expert or 0
        if used_max > experts:
            what = f"{k}expert_count is {'missing' if n_expert is None else n_expert}"
            if experts == 0:
                out.append(f"{k}expert_used_count is {used_max} but {what}: a model without experts routes "
                           f"to none ({k}expert_used_count must be 0 or absent)")
            else:
                out.append(f"{k}expert_used_count is {used_max}: more than the {experts} experts of "
                           f"{k}expert_count (1..{experts})")
        elif experts > 0 and used_max == 0:
            value = "missing" if used is None else "0"
            out.append(f"{k}expert_used_count is {value}: a model with {experts} experts ({k}expert_count) "
                       f"must route each token to at least one (1..{experts})")
    out += _group_problems(meta, k, ov, n_expert, has_n_expert)

    gating = _u32(meta, k + "expert_gating_func", ov)
    if gating is not None and gating > EXPERT_GATING_FUNCS:
        out.append(f"{k}expert_gating_func is {gating}: not a gating function llama.cpp knows "
                   f"(0..{EXPERT_GATING_FUNCS})")

    n_embd = _u32(meta, k + "embedding_length", ov)
    if n_embd == 0:
        out.append(f"{k}embedding_length is 0: the embedding must have at least one dimension")
    heads = _per_layer(meta, k + "attention.head_count", ov)
    if (heads and n_embd and k + "attention.key_length" not in meta.types and max(heads) > n_embd):
        out.append(f"{k}attention.head_count is {max(heads)}: more heads than the {n_embd} dimensions of "
                   f"{k}embedding_length (a head would have none)")
    inner = _u32(meta, k + "ssm.inner_size", ov)
    if arch in _RECURRENT_X2 and inner is not None and n_embd is not None and inner != 2 * n_embd:
        out.append(f"{k}ssm.inner_size is {inner}: llama.cpp's {arch} needs twice {k}embedding_length "
                   f"({2 * n_embd})")
    return out


def _group_problems(meta: Metadata, k: str, ov: dict[str, Any], n_expert: int | None,
                    has_n_expert: bool) -> list[str]:
    groups = _u32(meta, k + "expert_group_count", ov)
    used = _u32(meta, k + "expert_group_used_count", ov)
    if groups is None or not has_n_expert:
        return []
    experts = n_expert or 0
    key = f"{k}expert_group_count"
    g = f"{key} is {groups}"
    if experts == 0:
        return [f"{g} but the model has no experts ({k}expert_count)"] if groups else []
    if groups >= experts:
        return [f"{g}: there must be fewer groups than the {experts} experts of {k}expert_count"]
    if groups > 1:
        if experts % groups:
            return [f"{g}: it must divide the {experts} experts of {k}expert_count"]
        if used is not None and not 0 < used < groups:
            return [f"{k}expert_group_used_count is {used}: it must be in 1..{groups - 1} "
                    f"(fewer than {key})"]
    return []


def _duplicate_token(meta: Metadata) -> str | None:
    tokens = meta.values.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, bytes) for t in tokens):
        return None  # not a string array (llama.cpp says so itself), or a token too long to keep
    seen: dict[bytes, int] = {}
    for i, tok in enumerate(tokens):
        if tok in seen:
            text = tok.decode("utf-8", errors="replace")
            return (f"tokenizer.ggml.tokens holds the token {text!r} twice (ids {seen[tok]} and {i}): "
                    "every token must be unique")
        seen[tok] = i
    return None


def check(path: str, overrides: dict[str, Any] | None = None) -> str | None:
    """Before a load: the first problem found by a quick read, or None (also for a file this reader
    cannot read: llama.cpp's loader then reports it)."""
    meta = read_metadata(path)
    try:
        found = problems(meta, overrides) if meta is not None else []
    except Exception:  # values of types no check expects: llama.cpp reports them
        return None
    return found[0] if found else None


def explain(path: str, overrides: dict[str, Any] | None = None) -> str | None:
    """After llama.cpp refused a file: a message naming the key, from a full read, or None."""
    meta = read_metadata(path, full=True)
    if meta is None:
        return None
    try:
        found = problems(meta, overrides)
        return found[0] if found else _duplicate_token(meta)
    except Exception:  # values of types no check expects: llama.cpp's own message stands
        return None

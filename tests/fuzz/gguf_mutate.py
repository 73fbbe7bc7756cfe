"""Structure-aware GGUF mutation: one well-formed, wrong change to a loadable model per case.

A base model is read with ``gguf.GGUFReader`` into an :class:`Image` (its KV pairs and tensors,
in file order, the tensor data left in the reader's memory map).  A :class:`Mutation` is a
function ``Image -> Image`` that changes exactly one thing (a KV value, a KV's type, a KV removed
or duplicated, a tensor's shape or type, a tensor removed or duplicated).  :func:`write_image`
serialises an image to a GGUF v3 file; the tensor bytes are copied straight from the base file,
so a metadata-only mutation of a 100 MB model costs one sequential copy.

The serialiser is ours and not ``gguf.GGUFWriter`` because the writer refuses exactly the
files we want (empty arrays, duplicated keys or tensor names); the layout, the value types and
the block sizes all come from the ``gguf`` package.

:func:`run_case` loads one file in a child Python process (``Llama(path, n_ctx=64)`` then an
``eval`` of two tokens) and returns an :class:`Outcome`: a clean load, a Python exception (its
type name and message), a death by signal (with the ``file:line: message`` that ggml/llama.cpp
printed before aborting, and the first llama.cpp ``src/`` frame of the backtrace), a timeout.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent

# ---------------------------------------------------------------- the image of a GGUF file


@dataclass
class KV:
    """One metadata pair.  ``raw`` (the packed type + value, copied from the base file) is used
    when set, so untouched keys of a big vocabulary cost nothing to re-write."""

    key: str
    vtype: VT
    value: Any
    sub_type: VT | None = None  # element type of an ARRAY
    raw: bytes | None = None


@dataclass
class Tensor:
    """One tensor: ggml shape ``[ne0, ne1, ...]``, ggml type, and its bytes (any buffer)."""

    name: str
    shape: list[int]
    ttype: QT
    data: Any  # bytes or a C-contiguous numpy array (usually a view of the base's memory map)

    def floats(self) -> np.ndarray:
        """The values as float32 in numpy order (F32/F16 tensors only)."""
        dtype = {QT.F32: np.float32, QT.F16: np.float16}[self.ttype]
        return np.frombuffer(memoryview(self.data).cast("B"), dtype=dtype).astype(np.float32)


@dataclass
class Image:
    kvs: list[KV]
    tensors: list[Tensor]
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT

    def copy(self) -> Image:
        return Image([dataclasses.replace(kv) for kv in self.kvs],
                     [dataclasses.replace(t) for t in self.tensors], self.alignment)

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    @property
    def arch(self) -> str:
        kv = self.kv("general.architecture")
        return str(kv.value) if kv else "?"


def read_image(path: str | Path) -> Image:
    """Every KV (except the reader's ``GGUF.*`` pseudo-keys) and every tensor of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    kvs = []
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        vtype = VT(f.types[0])
        sub = VT(f.types[1]) if vtype == VT.ARRAY and len(f.types) > 1 else None
        raw = b"".join(bytes(p.tobytes()) for p in f.parts[2:])
        kvs.append(KV(name, vtype, f.contents(), sub, raw))
    tensors = [Tensor(t.name, [int(n) for n in t.shape], QT(t.tensor_type),
                      np.ascontiguousarray(t.data)) for t in reader.tensors]
    return Image(kvs, tensors, int(reader.alignment))


# ---------------------------------------------------------------- serialising

_SCALAR_FMT = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
    VT.INT32: "<i", VT.FLOAT32: "<f", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
    VT.BOOL: "<?",
}
_INT_RANGE = {
    VT.UINT8: (0, 2**8 - 1), VT.INT8: (-(2**7), 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
    VT.INT16: (-(2**15), 2**15 - 1), VT.UINT32: (0, 2**32 - 1), VT.INT32: (-(2**31), 2**31 - 1),
    VT.UINT64: (0, 2**64 - 1), VT.INT64: (-(2**63), 2**63 - 1),
}
_FLOATS = (VT.FLOAT32, VT.FLOAT64)


def _pack_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _pack_payload(vtype: VT, value: Any, sub_type: VT | None) -> bytes:
    if vtype in _SCALAR_FMT:
        return struct.pack(_SCALAR_FMT[vtype], value)
    if vtype == VT.STRING:
        return _pack_str(value)
    if vtype == VT.ARRAY:
        if sub_type is None:
            raise ValueError("an ARRAY needs its element type")
        out = [struct.pack("<IQ", int(sub_type), len(value))]
        if sub_type in _SCALAR_FMT and len(value):
            out.append(np.asarray(value).astype(np.dtype(_SCALAR_FMT[sub_type])).tobytes())
        else:
            out.extend(_pack_payload(sub_type, v, None) for v in value)
        return b"".join(out)
    raise ValueError(f"cannot pack {vtype!r}")


def pack_kv(kv: KV) -> bytes:
    body = kv.raw if kv.raw is not None else (struct.pack("<I", int(kv.vtype))
                                              + _pack_payload(kv.vtype, kv.value, kv.sub_type))
    return _pack_str(kv.key) + body


def tensor_nbytes(shape: Sequence[int], ttype: QT) -> int:
    block, size = gguf.GGML_QUANT_SIZES[ttype]
    n = math.prod(shape)
    return n // block * size


def write_image(img: Image, path: str | Path) -> None:
    """GGUF v3: header, KVs, tensor infos, padding, tensor data (each at an aligned offset)."""
    align = img.alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, len(img.tensors), len(img.kvs)))
        for kv in img.kvs:
            f.write(pack_kv(kv))
        offset = 0
        for t in img.tensors:
            f.write(_pack_str(t.name) + struct.pack("<I", len(t.shape)))
            f.write(struct.pack(f"<{len(t.shape)}Q", *t.shape))
            f.write(struct.pack("<IQ", int(t.ttype), offset))
            offset += -(-len(memoryview(t.data).cast("B")) // align) * align
        f.write(b"\0" * (-f.tell() % align))
        for t in img.tensors:
            buf = memoryview(t.data).cast("B")
            f.write(buf)
            f.write(b"\0" * (-len(buf) % align))


# ---------------------------------------------------------------- bases

TINY_BASES = ("llama", "gpt2", "moe", "moe_shared", "phi3", "moe_merged", "gemma3", "mamba")


def base_path(name: str, cache_dir: str | Path) -> Path:
    """The file of a base: a tiny model (written once into ``cache_dir``) or ``"smollm2"``."""
    if name == "smollm2":
        from llama_rewire.models import fetch
        return Path(fetch("smollm2"))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    out = Path(cache_dir) / f"tiny_{name}.gguf"
    if not out.exists():
        if str(TESTS_DIR) not in sys.path:
            sys.path.insert(0, str(TESTS_DIR))
        import tiny_models
        tiny_models.WRITERS[name](out)
    return out


# ---------------------------------------------------------------- mutations


@dataclass
class Mutation:
    base: str
    kind: str    # kv-set kv-type kv-del kv-dup tensor-shape tensor-type tensor-del tensor-dup
    target: str  # the key or tensor name
    detail: str  # the new value / shape / type, readable
    apply: Callable[[Image], Image] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.base}: {self.kind} {self.target} = {self.detail}"


def _set_kv(key: str, vtype: VT, value: Any, sub_type: VT | None = None) -> Callable[[Image], Image]:
    def apply(img: Image) -> Image:
        out = img.copy()
        out.kvs = [KV(key, vtype, value, sub_type) if kv.key == key else kv for kv in out.kvs]
        return out
    return apply


def _del_kv(key: str) -> Callable[[Image], Image]:
    def apply(img: Image) -> Image:
        out = img.copy()
        out.kvs = [kv for kv in out.kvs if kv.key != key]
        return out
    return apply


def _dup_kv(key: str) -> Callable[[Image], Image]:
    def apply(img: Image) -> Image:
        out = img.copy()
        i = next(i for i, kv in enumerate(out.kvs) if kv.key == key)
        out.kvs.insert(i + 1, dataclasses.replace(out.kvs[i]))
        return out
    return apply


def _fmt(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**31 - 1:
        return hex(v)
    return repr(v)


def _int_values(v: int, vtype: VT, n_vocab: int | None) -> list[tuple[str, int]]:
    lo, hi = _INT_RANGE[vtype]
    cand = [("0", 0), ("1", 1), ("-1", -1), ("max", hi), ("2**31-1", 2**31 - 1),
            ("2**32-1", 2**32 - 1), ("v+1", v + 1), ("v-1", v - 1)]
    if n_vocab is not None:
        cand += [("n_vocab", n_vocab), ("n_vocab+1", n_vocab + 1)]
    return _dedupe([(label, x) for label, x in cand if lo <= x <= hi and x != v])


def _float_values(v: float) -> list[tuple[str, float]]:
    cand = [("0", 0.0), ("1", 1.0), ("-1", -1.0), ("nan", math.nan), ("inf", math.inf),
            ("-inf", -math.inf), ("huge", 3.0e38), ("2**31-1", float(2**31 - 1)),
            ("denormal", 1e-45), ("v+1", v + 1.0), ("v-1", v - 1.0)]
    return [(label, x) for label, x in cand if x != v]


def _dedupe(cand: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    seen: set[Any] = set()
    out = []
    for label, x in cand:
        if x not in seen:
            seen.add(x)
            out.append((label, x))
    return out


_ARCHES = ("llama", "gpt2", "qwen2moe", "phi3", "hy_v3", "gemma3", "mamba", "bogus")


def kv_mutations(img: Image, base: str) -> Iterator[Mutation]:
    """Every single-KV mutation of ``img``: new values of the same type, other types, removal,
    duplication."""
    tokens = img.kv("tokenizer.ggml.tokens")
    n_vocab = len(tokens.value) if tokens else None

    def m(kind: str, key: str, detail: str, apply: Callable[[Image], Image]) -> Mutation:
        return Mutation(base, kind, key, detail, apply)

    for kv in img.kvs:
        key, vt, v = kv.key, kv.vtype, kv.value
        if vt in _INT_RANGE:
            is_token = key.startswith("tokenizer.ggml.") and key.endswith("_id")
            for label, x in _int_values(int(v), vt, n_vocab if is_token else None):
                yield m("kv-set", key, f"{label} ({_fmt(x)})", _set_kv(key, vt, x))
            yield m("kv-type", key, f"string {str(v)!r}", _set_kv(key, VT.STRING, str(v)))
            yield m("kv-type", key, f"array [{v}, {v}]", _set_kv(key, VT.ARRAY, [v, v], vt))
            yield m("kv-type", key, f"float32 {float(v)}", _set_kv(key, VT.FLOAT32, float(v)))
            other = VT.INT32 if vt != VT.INT32 else VT.UINT32
            if _INT_RANGE[other][0] <= v <= _INT_RANGE[other][1]:
                yield m("kv-type", key, f"{other.name.lower()} {v}", _set_kv(key, other, v))
        elif vt in _FLOATS:
            for label, x in _float_values(float(v)):
                yield m("kv-set", key, f"{label} ({_fmt(x)})", _set_kv(key, vt, x))
            yield m("kv-type", key, f"string {str(v)!r}", _set_kv(key, VT.STRING, str(v)))
            yield m("kv-type", key, f"array [{v}, {v}]", _set_kv(key, VT.ARRAY, [v, v], vt))
            other = VT.FLOAT64 if vt == VT.FLOAT32 else VT.FLOAT32
            yield m("kv-type", key, f"{other.name.lower()} {v}", _set_kv(key, other, v))
            yield m("kv-type", key, f"int32 {int(v)}", _set_kv(key, VT.INT32, int(v)))
        elif vt == VT.BOOL:
            yield m("kv-set", key, repr(not v), _set_kv(key, vt, not v))
            yield m("kv-type", key, "uint8 1", _set_kv(key, VT.UINT8, 1))
            yield m("kv-type", key, "string 'true'", _set_kv(key, VT.STRING, "true"))
        elif vt == VT.STRING:
            values = ["", "bogus"]
            if key == "general.architecture":
                values = ["", *[a for a in _ARCHES if a != v]]
            for x in values:
                yield m("kv-set", key, repr(x), _set_kv(key, vt, x))
            yield m("kv-type", key, "uint32 1", _set_kv(key, VT.UINT32, 1))
            yield m("kv-type", key, f"array [{v!r}]", _set_kv(key, VT.ARRAY, [v], VT.STRING))
        elif vt == VT.ARRAY:
            yield from _array_mutations(kv, base)
        yield m("kv-del", key, "removed", _del_kv(key))
        yield m("kv-dup", key, "twice", _dup_kv(key))


def _array_mutations(kv: KV, base: str) -> Iterator[Mutation]:
    key, sub, v = kv.key, kv.sub_type, list(kv.value)
    assert sub is not None

    def m(kind: str, detail: str, value: Any, vtype: VT = VT.ARRAY,
          sub_type: VT | None = sub) -> Mutation:
        return Mutation(base, kind, key, detail, _set_kv(key, vtype, value, sub_type))

    n = len(v)
    yield m("kv-set", "[] (empty)", [])
    if n:
        yield m("kv-set", f"drop last (len {n - 1})", v[:-1])
        yield m("kv-set", f"append copy of [0] (len {n + 1})", [*v, v[0]])
    if sub in _INT_RANGE and n:
        lo, hi = _INT_RANGE[sub]
        yield m("kv-set", "all 0", [0] * n)
        yield m("kv-set", f"[0] = {'-1' if lo < 0 else 'max'}", [-1 if lo < 0 else hi, *v[1:]])
        if key == "tokenizer.ggml.token_type":
            yield m("kv-set", "[n-1] = 99", [*v[:-1], 99])
            yield m("kv-set", "all CONTROL (3)", [3] * n)
    elif sub in _FLOATS and n:
        yield m("kv-set", "[0] = nan", [math.nan, *v[1:]])
        yield m("kv-set", "all inf", [math.inf] * n)
    elif sub == VT.STRING and n:
        yield m("kv-set", "[n-1] = ''", [*v[:-1], ""])
        if n > 1:
            yield m("kv-set", "[n-1] = [n-2] (duplicate entry)", [*v[:-1], v[-2]])
        if key == "tokenizer.ggml.merges":
            yield m("kv-set", "[0] = 'nospace'", ["nospace", *v[1:]])
    elif sub == VT.BOOL and n:
        yield m("kv-set", "all flipped", [not x for x in v])
    yield m("kv-type", f"scalar uint32 {n}", n, VT.UINT32, None)
    other = VT.STRING if sub != VT.STRING else VT.INT32
    yield m("kv-type", f"array of {other.name.lower()}",
            ["0"] * n if other == VT.STRING else [0] * n, VT.ARRAY, other)


def _tensor_op(name: str, op: Callable[[Tensor], list[Tensor]]) -> Callable[[Image], Image]:
    def apply(img: Image) -> Image:
        out = img.copy()
        new: list[Tensor] = []
        for t in out.tensors:
            new.extend(op(t) if t.name == name else [t])
        out.tensors = new
        return out
    return apply


def _random_data(shape: Sequence[int], ttype: QT, seed: int = 0) -> bytes:
    """Data for a reshaped tensor: random normal float32/float16, random bytes otherwise."""
    n = math.prod(shape)
    rng = np.random.default_rng(seed)
    if ttype == QT.F32:
        return (rng.standard_normal(n) * 0.1).astype(np.float32).tobytes()
    if ttype == QT.F16:
        return (rng.standard_normal(n) * 0.1).astype(np.float16).tobytes()
    return rng.integers(0, 256, tensor_nbytes(shape, ttype), dtype=np.uint8).tobytes()


def _reshaped(shape: list[int]) -> Callable[[Tensor], list[Tensor]]:
    def op(t: Tensor) -> list[Tensor]:
        same = math.prod(shape) == math.prod(t.shape)
        data = t.data if same else _random_data(shape, t.ttype)
        return [Tensor(t.name, shape, t.ttype, data)]
    return op


def _retyped(ttype: QT) -> Callable[[Tensor], list[Tensor]]:
    def op(t: Tensor) -> list[Tensor]:
        if ttype == QT.I32:  # the same bytes read as integers
            return [Tensor(t.name, t.shape, ttype, t.data)]
        x = t.floats().reshape(list(reversed(t.shape)))
        if ttype == QT.F16:
            return [Tensor(t.name, t.shape, ttype, x.astype(np.float16))]
        if ttype == QT.F32:
            return [Tensor(t.name, t.shape, ttype, x)]
        return [Tensor(t.name, t.shape, ttype, gguf.quants.quantize(x, ttype))]
    return op


def tensor_mutations(img: Image, base: str, layers: Sequence[int] = (0,)) -> Iterator[Mutation]:
    """Shape, type, removal and duplication of every global tensor and every tensor of
    ``layers`` (the other layers are copies of the same structure)."""
    prefixes = tuple(f"blk.{il}." for il in layers)
    for t in img.tensors:
        if t.name.startswith("blk.") and not t.name.startswith(prefixes):
            continue
        name, sh = t.name, list(t.shape)

        def m(kind: str, detail: str, op: Callable[[Tensor], list[Tensor]],
              name: str = name) -> Mutation:
            return Mutation(base, kind, name, detail, _tensor_op(name, op))

        shapes = [[sh[0] + 1, *sh[1:]]]
        if sh[0] > 1:
            shapes.append([sh[0] - 1, *sh[1:]])
        if len(sh) >= 2:
            shapes.append([sh[0], sh[1] + 1, *sh[2:]])
            if sh[0] != sh[1]:
                shapes.append([sh[1], sh[0], *sh[2:]])
            shapes.append([math.prod(sh)])
        shapes.append([*sh, 2])
        if t.ttype in (QT.F32, QT.F16):
            for s in shapes:
                yield m("tensor-shape", f"{sh} -> {s}", _reshaped(s))
            types = [QT.F16 if t.ttype == QT.F32 else QT.F32, QT.I32 if t.ttype == QT.F32 else None]
            for qt in (QT.Q8_0, QT.Q4_0):
                if sh[0] % gguf.GGML_QUANT_SIZES[qt][0] == 0:
                    types.append(qt)
            for qt in types:
                if qt is not None:
                    yield m("tensor-type", f"{t.ttype.name} -> {qt.name}", _retyped(qt))
        yield m("tensor-del", "removed", lambda _t: [])
        yield m("tensor-dup", "twice", lambda t: [t, dataclasses.replace(t)])


def all_mutations(img: Image, base: str, kinds: Sequence[str] = ("kv", "tensor")) -> list[Mutation]:
    out: list[Mutation] = []
    if "kv" in kinds:
        out += kv_mutations(img, base)
    if "tensor" in kinds:
        out += tensor_mutations(img, base)
    return out


# ---------------------------------------------------------------- running one case in a child

CHILD = r"""
import resource, sys
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from llama_rewire import Llama
try:
    print("stage load", flush=True)
    llm = Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
    print("stage eval", flush=True)
    llm.eval(llm.tokenize(b"hello world"))
    print("ok", flush=True)
except BaseException as e:
    msg = " ".join(str(e).split())[:300]
    print("exc", type(e).__name__, "|", type(e).__mro__[1].__name__, "|", msg, flush=True)
"""

# "<file>:<line>: <message>" as printed by ggml_abort (GGML_ASSERT, GGML_ABORT)
_ABORT_RE = re.compile(r"^(?P<file>\S+\.(?:c|cc|cpp|h|hpp)):(?P<line>\d+): (?P<msg>.+)$", re.M)
# a gdb frame in our vendored llama.cpp/src
_FRAME_RE = re.compile(r"\bat (?P<loc>\S*?llama\.cpp/src/\S+:\d+)")
_FUNC_FRAME_RE = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(?P<fn>\S*llama\S*?)\s*\(", re.M)


def _short(path: str) -> str:
    i = path.find("llama.cpp/")
    return path[i + len("llama.cpp/"):] if i >= 0 else path


@dataclass
class Outcome:
    verdict: str           # ok | exception | signal | exit | timeout
    rc: int | None
    stage: str = ""        # load | eval: how far the child got
    exc_type: str = ""     # the exception's type name, and its message
    exc_msg: str = ""
    signal_name: str = ""
    abort: str = ""        # "file:line: message" printed before the abort, "" if none
    frame: str = ""        # the first llama.cpp src/ frame of the backtrace (file:line or function)
    stderr_tail: str = ""
    seconds: float = 0.0

    @property
    def where(self) -> str:
        """The place a death is grouped under."""
        if self.abort:
            loc, _, msg = self.abort.partition(": ")
            return f"{_short(loc)}: {msg}"
        for line in self.stderr_tail.splitlines():
            if line.startswith(("terminate called", "  what()")):
                return line.strip()
        return f"{self.signal_name or self.verdict} (no message)"


def parse_outcome(rc: int | None, stdout: str, stderr: str, seconds: float) -> Outcome:
    lines = stdout.splitlines()
    stage = next((ln.split()[1] for ln in reversed(lines) if ln.startswith("stage ")), "")
    tail = "\n".join(stderr.splitlines()[-60:])
    out = Outcome("exit", rc, stage, stderr_tail=tail, seconds=seconds)
    if rc is None:
        out.verdict = "timeout"
    elif rc < 0:
        out.verdict = "signal"
        out.signal_name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(rc)
    elif rc == 0 and lines and lines[-1] == "ok":
        out.verdict = "ok"
    elif rc == 0 and lines and lines[-1].startswith("exc "):
        head, _, msg = lines[-1][4:].partition(" | ")
        parent, _, msg = msg.partition(" | ")
        out.verdict, out.exc_type, out.exc_msg = "exception", head, msg
        if parent == "ModelLoadError":
            out.exc_type = f"{head}(ModelLoadError)"
    if out.verdict in ("signal", "exit", "timeout"):
        aborts = _ABORT_RE.findall(stderr)
        if aborts:
            f, line, msg = aborts[0]
            out.abort = f"{f}:{line}: {msg.strip()}"
        both = stderr + stdout  # ggml's gdb backtrace goes to stdout
        frame = _FRAME_RE.search(both)
        if frame:
            out.frame = _short(frame.group("loc"))
        else:
            fn = _FUNC_FRAME_RE.search(both)
            out.frame = fn.group("fn") if fn else ""
    return out


def run_file(path: str | Path, timeout: float = 60.0, mem_limit: int = 8 << 30,
             backtrace: bool = False) -> Outcome:
    """Load ``path`` in a child process; ``mem_limit`` is its RLIMIT_AS (0: none).  With
    ``backtrace`` ggml attaches gdb on an abort (slow, and only useful with a build that keeps
    its symbols: the installed ``_core`` is stripped)."""
    import time
    env = dict(os.environ)
    if not backtrace:
        env["GGML_NO_BACKTRACE"] = "1"
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, str(path), str(mem_limit)],
                           capture_output=True, text=True, errors="replace", timeout=timeout, env=env,
                           check=False)
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        so = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        se = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return parse_outcome(rc, so, se, time.monotonic() - t0)


def run_case(img: Image, mutation: Mutation, workdir: str | Path | None = None,
             timeout: float = 60.0, mem_limit: int = 8 << 30, keep: bool = False,
             backtrace: bool = False) -> tuple[Outcome, str]:
    """Apply ``mutation`` to ``img``, write the file, load it in a child.  Returns the outcome and
    the file's path (deleted unless ``keep``)."""
    fd, path = tempfile.mkstemp(suffix=".gguf", prefix=f"fuzz_{mutation.base}_", dir=workdir)
    os.close(fd)
    try:
        write_image(mutation.apply(img), path)
        out = run_file(path, timeout=timeout, mem_limit=mem_limit, backtrace=backtrace)
    except BaseException:
        os.unlink(path)
        raise
    if not keep:
        os.unlink(path)
    return out, path

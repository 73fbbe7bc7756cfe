#!/usr/bin/env python3
"""Generate the C API as ctypes from the headers of the vendored llama.cpp and of our hook.

Reads vendor/llama.cpp/include/llama.h and src/cpp/rewire/llama-rewire.h (with the few ggml typedefs and
enums they use, from ggml's headers) and writes:

- src/llama_rewire/llama_cpp.py: the ctypes structs, callbacks, enum constants, #define constants and
  one prototype per function, named as llama-cpp-python's ``llama_cpp.llama_cpp`` names them;
- src/cpp/bindings/capi.cpp: the table of every declared function's address, which ``_core.capi_addresses()``
  hands to that module (the extension keeps llama's symbols local, so there is no library to dlopen).

    python scripts/gen_capi.py          # write both files
    python scripts/gen_capi.py --check  # write nothing; exit 1 naming each file that is out of date

The parser understands what these headers contain (declarations one level deep, no macros but
``LLAMA_API`` and ``DEPRECATED``); a type it does not know is an error that names it, so a new llama.h
either generates exactly or says what to add here.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADERS = (ROOT / "vendor/llama.cpp/include/llama.h", ROOT / "src/cpp/rewire/llama-rewire.h")
VENDOR = ROOT / "vendor/llama.cpp"
OUT_PY = ROOT / "src/llama_rewire/llama_cpp.py"
OUT_CPP = ROOT / "src/cpp/bindings/capi.cpp"
LINE = 110

SCALARS = {
    "bool": "ctypes.c_bool", "char": "ctypes.c_char", "int": "ctypes.c_int", "float": "ctypes.c_float",
    "double": "ctypes.c_double", "size_t": "ctypes.c_size_t", "int8_t": "ctypes.c_int8",
    "uint8_t": "ctypes.c_uint8", "int16_t": "ctypes.c_int16", "uint16_t": "ctypes.c_uint16",
    "int32_t": "ctypes.c_int32", "uint32_t": "ctypes.c_uint32", "int64_t": "ctypes.c_int64",
    "uint64_t": "ctypes.c_uint64",
}
# ggml (and libc) types the headers use, all passed as opaque pointers
EXTERNAL_STRUCTS = {"ggml_tensor", "ggml_context", "ggml_cgraph", "gguf_context", "FILE"}
EXTERNAL_HANDLES = ("gguf_context",)  # of those, the ones with a llama_cpp name (gguf_context_p)
EXTERNAL_POINTERS = {"ggml_backend_dev_t", "ggml_threadpool_t", "ggml_backend_buffer_type_t",
                     "ggml_opt_dataset_t", "ggml_opt_result_t",
                     # callbacks that take or return ggml structs by value: opaque here
                     "ggml_opt_get_optimizer_params", "ggml_opt_epoch_callback"}
# ggml callbacks with a ctypes prototype, and enums of ggml and of llama.cpp's sources whose constants
# are exported: (header under vendor/llama.cpp, name)
EXTERNAL_CALLBACKS = (("ggml/include/ggml-backend.h", "ggml_backend_sched_eval_callback"),
                      ("ggml/include/ggml.h", "ggml_abort_callback"),
                      ("ggml/include/ggml.h", "ggml_log_callback"))
EXTERNAL_ENUMS = (("ggml/include/ggml.h", "ggml_type"), ("ggml/include/ggml.h", "ggml_log_level"),
                  ("ggml/include/ggml-cpu.h", "ggml_numa_strategy"),
                  ("ggml/include/ggml-opt.h", "ggml_opt_optimizer_type"),
                  ("src/llama-vocab.h", "llama_vocab_pre_type"))
IGNORED_DEFINES = {"LLAMA_H", "LLAMA_API", "LLAMA_REWIRE_H"}
QUALIFIERS = {"const", "struct", "enum", "union", "volatile"}


@dataclass
class CType:
    base: str
    stars: int = 0
    enum: bool = False


@dataclass
class Param:
    name: str
    type: CType


@dataclass
class Callback:
    name: str
    ret: CType
    params: list[Param]


@dataclass
class Member:
    name: str
    type: CType | None = None     # None for a nested union (``union``) or a function pointer (``callback``)
    array: str | None = None      # the C length expression of an array member
    union: Struct | None = None
    callback: Callback | None = None


@dataclass
class Struct:
    name: str
    members: list[Member] = field(default_factory=list)
    union: bool = False
    anonymous: list[str] = field(default_factory=list)


@dataclass
class Function:
    name: str
    ret: CType
    params: list[Param]
    decl: str
    deprecated: str | None = None


@dataclass
class Api:
    defines: dict[str, int] = field(default_factory=dict)
    external_defines: dict[str, int] = field(default_factory=dict)  # ggml's, that llama's enums name
    scalar_typedefs: dict[str, CType] = field(default_factory=dict)
    void_typedefs: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)                # llama structs only ever pointed to
    opaque_typedefs: dict[str, str] = field(default_factory=dict)  # llama_memory_t -> llama_memory_i
    enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    external_enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    structs: list[Struct] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    external_callbacks: list[Callback] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)

    def struct_names(self) -> set[str]:
        return {s.name for s in self.structs}


# -- reading C ---------------------------------------------------------------------------------------


def strip_comments(text: str) -> str:
    return re.sub(r'//[^\n]*|/\*.*?\*/|("(?:\\.|[^"\\])*")', lambda m: m.group(1) or " ", text, flags=re.S)


def split_defines(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text without preprocessor lines, and the object-like #defines in order."""
    defines: list[tuple[str, str]] = []
    kept: list[str] = []
    for line in text.splitlines():
        m = re.match(r"\s*#\s*(\w+)(.*)$", line)
        if m is None:
            kept.append(line)
            continue
        d = re.match(r"\s+(\w+)(\()?\s*(.*)$", m.group(2)) if m.group(1) == "define" else None
        if d is not None and d.group(2) is None:
            defines.append((d.group(1), d.group(3).strip()))
    return "\n".join(kept), defines


def matching(text: str, start: int, open_: str = "(", close: str = ")") -> int:
    """The index of the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_!r} at {text[start:start + 60]!r}")


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets, stripped, empty parts dropped."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [" ".join(p.split()) for p in parts if p.strip()]


def expand_deprecated(text: str) -> tuple[str, dict[str, str]]:
    """``DEPRECATED(decl, "hint")`` -> ``decl``, with the hint per function name."""
    hints: dict[str, str] = {}
    while (at := text.find("DEPRECATED(")) >= 0:
        end = matching(text, at + len("DEPRECATED"))
        decl, hint = text[at + len("DEPRECATED("):end].rsplit(",", 1)
        name = re.findall(r"(\w+)\s*\(", decl)[0]
        hints[name] = ast.literal_eval(" ".join(hint.split()))
        text = text[:at] + decl + text[end + 1:]
    return text, hints


def statements(text: str) -> list[str]:
    """Top-level declarations (``extern "C" { ... }`` opened), whitespace-normalised."""
    text = re.sub(r'extern\s+"C"\s*\{', " ", text)
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:  # the brace that closes extern "C"
                depth = 0
                continue
        if ch == ";" and depth == 0:
            out.append(" ".join("".join(cur).split()))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        raise ValueError(f"trailing text: {''.join(cur).strip()[:80]!r}")
    return [s for s in out if s]


def parse_type(tokens: list[str]) -> CType:
    names = [t for t in tokens if t != "*" and t not in QUALIFIERS]
    if len(names) != 1:
        raise ValueError(f"cannot read the type {' '.join(tokens)!r}")
    return CType(names[0], tokens.count("*"), "enum" in tokens)


def parse_param(text: str) -> Param | None:
    tokens = re.findall(r"[A-Za-z_]\w*|\*", text)
    if tokens == ["void"]:
        return None
    names = [t for t in tokens if t != "*" and t not in QUALIFIERS]
    if len(names) >= 2 and tokens[-1] == names[-1]:
        return Param(tokens[-1], parse_type(tokens[:-1]))
    return Param("", parse_type(tokens))


def parse_params(text: str) -> list[Param]:
    return [p for p in (parse_param(s) for s in split_top(text, ",")) if p is not None]


def parse_callback(text: str) -> Callback | None:
    """``ret (*name)(params)``, or None when ``text`` is not a function pointer."""
    m = re.match(r"^(.*?)\(\s*\*\s*(\w+)\s*\)\s*\((.*)\)$", text)
    if m is None:
        return None
    ret = parse_type(re.findall(r"[A-Za-z_]\w*|\*", m.group(1)))
    return Callback(m.group(2), ret, parse_params(m.group(3)))


def parse_struct(name: str, body: str, union: bool = False) -> list[Struct]:
    """The struct and, before it, the structs of its nested unions."""
    out: list[Struct] = []
    st = Struct(name, union=union)
    for member in split_top(body, ";"):
        if member.startswith("union"):
            open_ = member.index("{")
            close = matching(member, open_, "{", "}")
            field_name = member[close + 1:].strip() or "value"
            nested = parse_struct(f"{name}_{field_name}", member[open_ + 1:close], union=True)
            out.extend(nested)
            st.members.append(Member(field_name, union=nested[-1]))
            if not member[close + 1:].strip():
                st.anonymous.append(field_name)
        elif (cb := parse_callback(member)) is not None:
            st.members.append(Member(cb.name, callback=Callback(f"{name}_{cb.name}", cb.ret, cb.params)))
        else:
            m = re.match(r"^(.*?)(\w+)\s*(?:\[(.*)\])?$", member)
            if m is None:
                raise ValueError(f"cannot read the member {member!r} of {name}")
            ctype = parse_type(re.findall(r"[A-Za-z_]\w*|\*", m.group(1)))
            st.members.append(Member(m.group(2), ctype, array=m.group(3)))
    out.append(st)
    return out


def parse_enum(body: str, env: dict[str, int]) -> list[tuple[str, int]]:
    values: list[tuple[str, int]] = []
    nxt = 0
    for item in split_top(body, ","):
        name, _, expr = (x.strip() for x in item.partition("="))
        value = evaluate(expr, env) if expr else nxt
        env[name] = value
        values.append((name, value))
        nxt = value + 1
    return values


def evaluate(expr: str, env: dict[str, int]) -> int:
    """An integer constant expression of C (literals, names in ``env``, + - * << >> | & ~ and parentheses)."""
    py = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr)

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else ~v if isinstance(node.op, ast.Invert) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.BitOr: a | b, ast.BitAnd: a & b}
            if isinstance(node.op, ast.LShift):
                return a << b
            if isinstance(node.op, ast.RShift):
                return a >> b
            if type(node.op) in ops:
                return ops[type(node.op)]
        raise ValueError(f"not an integer constant: {expr!r}")

    return ev(ast.parse(py, mode="eval").body)


def read_header(path: Path, api: Api, env: dict[str, int]) -> None:
    text, defines = split_defines(strip_comments(path.read_text()))
    for name, value in defines:
        if name in IGNORED_DEFINES or not value:
            continue
        env[name] = evaluate(value, env)
        api.defines[name] = env[name]
    text, hints = expand_deprecated(text.replace("LLAMA_API", " "))
    for st in statements(text):
        read_statement(st, api, env, hints, path.name)


def read_statement(st: str, api: Api, env: dict[str, int], hints: dict[str, str], where: str) -> None:
    if st.startswith("typedef "):
        rest = st[len("typedef "):]
        if "{" in rest:  # typedef struct name { ... } name
            open_ = rest.index("{")
            close = matching(rest, open_, "{", "}")
            name = rest[:open_].split()[-1]
            if rest[close + 1:].strip() != name:
                raise ValueError(f"{where}: a typedef'd struct with another name: {st[:80]!r}")
            api.structs.extend(parse_struct(name, rest[open_ + 1:close]))
        elif (cb := parse_callback(rest)) is not None:
            api.callbacks.append(cb)
        elif m := re.match(r"^struct (\w+) \* (\w+)$", rest):
            api.opaque_typedefs[m.group(2)] = m.group(1)
        elif m := re.match(r"^void \* (\w+)$", rest):
            api.void_typedefs.append(m.group(1))
        else:
            tokens = re.findall(r"[A-Za-z_]\w*|\*", rest)
            api.scalar_typedefs[tokens[-1]] = parse_type(tokens[:-1])
    elif st.startswith("struct ") and "{" in st:
        open_ = st.index("{")
        api.structs.extend(parse_struct(st[:open_].split()[1], st[open_ + 1:matching(st, open_, "{", "}")]))
    elif m := re.match(r"^struct (\w+)$", st):
        if m.group(1).startswith("llama_") and m.group(1) not in api.opaque:
            api.opaque.append(m.group(1))
    elif st.startswith("enum ") and "{" in st:
        open_ = st.index("{")
        body = st[open_ + 1:st.rindex("}")]
        api.enums[st[:open_].split()[1]] = parse_enum(body, env)
        for name in re.findall(r"\bGGML_\w+", body):
            api.external_defines[name] = env[name]
    else:
        open_ = st.index("(")
        m = re.match(r"^(.*?)(\w+)\s*$", st[:open_])
        if m is None:
            raise ValueError(f"{where}: cannot read {st[:80]!r}")
        name, ret = m.group(2), parse_type(re.findall(r"[A-Za-z_]\w*|\*", m.group(1)))
        params = parse_params(st[open_ + 1:st.rindex(")")])
        api.functions.append(Function(name, ret, params, st, hints.get(name)))


def read_external(api: Api, env: dict[str, int]) -> None:
    """ggml's #define integers (for enum values), and the callbacks and enums named above."""
    texts: dict[str, str] = {}
    for path in [*sorted((VENDOR / "ggml/include").glob("*.h")), VENDOR / "src/llama-vocab.h"]:
        text, defines = split_defines(strip_comments(path.read_text()))
        texts[str(path.relative_to(VENDOR))] = text
        for name, value in defines:
            if name.startswith("GGML_"):
                with contextlib.suppress(ValueError, SyntaxError):  # ggml's macros that are not integers
                    env.setdefault(name, evaluate(value, env))
    for header, name in EXTERNAL_CALLBACKS:
        m = re.search(r"typedef\s+([^;{}]*?\(\s*\*\s*" + name + r"\s*\)\s*\([^;]*\))\s*;", texts[header])
        if m is None:
            raise ValueError(f"{header}: no callback typedef {name}")
        cb = parse_callback(" ".join(m.group(1).split()))
        assert cb is not None
        api.external_callbacks.append(cb)
    for header, name in EXTERNAL_ENUMS:
        m = re.search(r"enum\s+" + name + r"\s*\{(.*?)\}\s*;", texts[header], flags=re.S)
        if m is None:
            raise ValueError(f"{header}: no enum {name}")
        api.external_enums[name] = parse_enum(m.group(1), env)


def read_api() -> Api:
    api, env = Api(), {}
    read_external(api, env)
    for path in HEADERS:
        read_header(path, api, env)
    api.opaque = [name for name in api.opaque if name not in api.struct_names()]
    return api


# -- writing Python ----------------------------------------------------------------------------------


def pointer(expr: str, n: int) -> str:
    for _ in range(n):
        expr = f"ctypes.POINTER({expr})"
    return expr


def py_type(t: CType, api: Api, where: str) -> str:
    """The ctypes type of ``t`` as Python source."""
    b, n = t.base, t.stars
    enums = set(api.enums) | set(api.external_enums)
    if b == "void":
        return "None" if n == 0 else pointer("ctypes.c_void_p", n - 1)
    if b == "char":
        return "ctypes.c_char" if n == 0 else pointer("ctypes.c_char_p", n - 1)
    if b in SCALARS:
        return pointer(SCALARS[b], n)
    if t.enum or b in enums:
        if not t.enum or b not in enums:
            raise ValueError(f"{where}: unknown enum {b!r}: add it to EXTERNAL_ENUMS")
        return pointer("ctypes.c_int", n)
    if b in api.scalar_typedefs:
        return f"{b}_p" if n == 1 else pointer(b, n)
    if b in api.struct_names():
        return b if n == 0 else pointer(f"{b}_p", n - 1)
    if b in api.opaque and n >= 1:
        return f"{b}_p_ctypes" if n == 1 else pointer("ctypes.c_void_p", n - 1)
    if b in api.opaque_typedefs:
        return f"{b}_ctypes" if n == 0 else pointer("ctypes.c_void_p", n)
    if b in api.void_typedefs or b in {c.name for c in api.callbacks + api.external_callbacks}:
        return pointer(b, n)
    if b in EXTERNAL_HANDLES and n == 1:
        return f"{b}_p_ctypes"
    if (b in EXTERNAL_STRUCTS and n >= 1) or b in EXTERNAL_POINTERS:
        return pointer("ctypes.c_void_p", n - (b in EXTERNAL_STRUCTS))
    raise ValueError(f"{where}: unknown C type {b!r} ({n} pointer levels): add it to EXTERNAL_*")


def call(head: str, args: list[str], indent: str = "") -> list[str]:
    """``head(args)`` laid out as ruff-format lays it out."""
    one = f"{indent}{head}({', '.join(args)})"
    if len(one) <= LINE:
        return [one]
    inner = f"{indent}    {', '.join(args)}"
    if len(inner) <= LINE:
        return [f"{indent}{head}(", inner, f"{indent})"]
    return [f"{indent}{head}(", *(f"{indent}    {a}," for a in args), f"{indent})"]


def comment(text: str) -> list[str]:
    """``text`` as ``#`` lines within the line length."""
    out, cur = [], "#"
    for word in text.split():
        if len(cur) + 1 + len(word) > LINE and cur != "#":
            out.append(cur)
            cur = "#    "
        cur += " " + word
    return [*out, cur]


def c_decl(fn: Function) -> str:
    text = re.sub(r"\s*([(),*])\s*", r"\1", fn.decl)
    text = re.sub(r"\*", " * ", text).replace(",", ", ")
    return " ".join(text.split()).replace("( ", "(").replace(" )", ")").replace("* *", "**")


def callback_source(cb: Callback, api: Api) -> list[str]:
    where = f"callback {cb.name}"
    args = [py_type(cb.ret, api, where)] + [py_type(p.type, api, where) for p in cb.params]
    return call(f"{cb.name} = ctypes.CFUNCTYPE", args)


def member_source(m: Member, api: Api, where: str) -> str:
    if m.union is not None:
        return m.union.name
    if m.callback is not None:
        return m.callback.name
    assert m.type is not None
    t = py_type(m.type, api, f"{where}.{m.name}")
    if m.array is not None:
        length = m.array.strip()
        named = length in api.defines or any(length in dict(v) for v in api.enums.values())
        return f"{t} * {length if named else evaluate(length, {})}"
    return t


def write_python(api: Api) -> str:
    out: list[str] = [f'"""{MODULE_DOC.strip()}\n"""', *MODULE_HEAD.splitlines()]
    out += ["# -- #define constants", ""]
    defines = {**api.external_defines, **api.defines}
    out += [f"{k} = 0x{v:X}" if v > 0xFFFF else f"{k} = {v}" for k, v in defines.items()]
    out += ["", "# -- typedefs and opaque handles (an int address, or None for NULL)", ""]
    for name, t in api.scalar_typedefs.items():
        out += [f"{name} = {py_type(t, api, name)}", f"{name}_p = ctypes.POINTER({name})"]
    out += [f"{name} = ctypes.c_void_p" for name in api.void_typedefs]
    for name in api.opaque:
        out += [f'{name}_p = NewType("{name}_p", int)', f"{name}_p_ctypes = ctypes.c_void_p"]
    for name in api.opaque_typedefs:
        out += [f'{name} = NewType("{name}", int)', f"{name}_ctypes = ctypes.c_void_p"]
    for name in EXTERNAL_HANDLES:
        out += [f'{name}_p = NewType("{name}_p", int)', f"{name}_p_ctypes = ctypes.c_void_p"]
    for title, enums in (("ggml", api.external_enums), ("llama", api.enums)):
        out += ["", f"# -- enums ({title})"]
        for name, values in enums.items():
            out += ["", f"# enum {name}"] + [f"{k} = {v}" for k, v in values]
    out += ["", "# -- structs (fields below, once every type they name exists)"]
    for st in api.structs:
        base = "ctypes.Union" if st.union else "ctypes.Structure"
        kind = "union" if st.union else "struct"
        out += ["", "", f"class {st.name}({base}):", f'    """{kind} {st.name}"""',
                "", "", f"{st.name}_p = ctypes.POINTER({st.name})", f"{st.name}_p_ctypes = {st.name}_p"]
    out += ["", "", "# -- callbacks", ""]
    for cb in api.external_callbacks + api.callbacks:
        out += callback_source(cb, api)
    for st in api.structs:
        for m in st.members:
            if m.callback is not None:
                out += callback_source(m.callback, api)
    out += ["", "# -- struct fields", ""]
    for st in api.structs:
        if st.anonymous:
            names = ", ".join(f'"{a}"' for a in st.anonymous)
            out.append(f"{st.name}._anonymous_ = ({names},)")
        out += [f"{st.name}._fields_ = ["]
        out += [f'    ("{m.name}", {member_source(m, api, st.name)}),' for m in st.members]
        out += ["]"]
    out += ["", "# -- functions", ""]
    for fn in api.functions:
        where = f"function {fn.name}"
        out += comment(c_decl(fn) + (f"  [deprecated: {fn.deprecated}]" if fn.deprecated else ""))
        args = [py_type(fn.ret, api, where)] + [py_type(p.type, api, where) for p in fn.params]
        out += call(f"{fn.name} = _fn", [f'"{fn.name}"', *args])
    return "\n".join([*out, *COMPAT.splitlines()]) + "\n"


MODULE_HEAD = '''
# Generated by scripts/gen_capi.py from llama.h and llama-rewire.h: do not edit.

import ctypes
import warnings
from typing import Any, NewType

from llama_rewire import _core

_ADDRESSES: dict[str, int] = _core.capi_addresses()


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    """The function ``name`` of the llama built into the extension, with its C prototype."""
    return ctypes.CFUNCTYPE(restype, *argtypes)(_ADDRESSES[name])


byref = ctypes.byref
c_float_p = ctypes.POINTER(ctypes.c_float)
c_uint8_p = ctypes.POINTER(ctypes.c_uint8)
c_size_t_p = ctypes.POINTER(ctypes.c_size_t)
'''

# names that llama-cpp-python keeps for older code, which the headers no longer have
COMPAT = '''

# -- names kept for code written against older headers (as llama-cpp-python keeps them)

LLAMA_MAX_DEVICES = llama_max_devices()
llama_log_callback = ggml_log_callback
llama_kv_cache_p = NewType("llama_kv_cache_p", int)
llama_kv_cache_p_ctypes = ctypes.c_void_p


def llama_set_adapter_lora(ctx: Any, adapter: Any, scale: float, /) -> int:
    """Set one LoRA adapter at ``scale`` (deprecated: ``llama_set_adapters_lora`` sets them all)."""
    warnings.warn(
        "llama_set_adapter_lora is deprecated: use llama_set_adapters_lora", DeprecationWarning, stacklevel=2
    )
    return int(llama_set_adapters_lora(ctx, (ctypes.c_void_p * 1)(adapter), 1, (ctypes.c_float * 1)(scale)))


def llama_apply_adapter_cvec(
    ctx: Any, data: Any, len: int, n_embd: int, il_start: int, il_end: int, /
) -> int:
    """The former name of ``llama_set_adapter_cvec`` (deprecated)."""
    warnings.warn(
        "llama_apply_adapter_cvec is deprecated: use llama_set_adapter_cvec", DeprecationWarning, stacklevel=2
    )
    return int(llama_set_adapter_cvec(ctx, data, len, n_embd, il_start, il_end))


class _Library:
    """What llama-cpp-python's ``llama_cpp.llama_cpp._lib`` (the loaded ``ctypes.CDLL``) is to code that
    reads it: each attribute the C function of that name, a ctypes function pointer whose address
    ``ctypes.cast(_lib.llama_tokenize, ctypes.c_void_p)`` gives (llguidance hands such addresses to its
    own native code)."""

    def __getattr__(self, name: str) -> Any:
        if name not in _ADDRESSES:
            raise AttributeError(f"the llama built into llama-rewire has no function {name}")
        return globals()[name]


_lib = _Library()
'''

MODULE_DOC = '''
llama.h as ctypes: the low-level C API that llama-cpp-python exposes as ``llama_cpp.llama_cpp``.

Generated from the vendored llama.h and our llama-rewire.h (``llama_rewire_*``) by scripts/gen_capi.py.
The names follow llama-cpp-python's: a struct ``llama_batch`` with ``llama_batch_p`` (a pointer to it),
an opaque ``struct llama_model *`` as ``llama_model_p`` (an int address; ``llama_model_p_ctypes`` is its
ctypes type), callbacks as ``ctypes.CFUNCTYPE`` types (``llama_progress_callback``,
``ggml_log_callback``, ...), enum values and ``#define`` constants as ints. ggml's own types
(``ggml_tensor *``, ``ggml_backend_dev_t``, ``ggml_threadpool_t``, ...) are opaque ``c_void_p``.

There is no shared library to load: the extension links llama statically and keeps its symbols local (so
that a llama-cpp-python in the same process cannot clash with it). It hands this module the address of
every function instead (``_core.capi_addresses()``), so these functions and ``Llama`` use the one llama in
the process: ``Llama.model`` and ``Llama.ctx`` (and ``Llama._model.model``, ``Llama._ctx.ctx``) can be passed
wherever a ``llama_model_p`` or ``llama_context_p`` is expected, e.g.
``llama_model_get_vocab(llm.model)``. The backend is initialised when the extension is imported.

This level is C: nothing here checks its arguments. A NULL or freed pointer, a token id outside the
vocabulary, a batch larger than it was allocated for, a position beyond the context, a buffer shorter than
the length passed with it, or freeing what a ``Llama`` owns (``llama_free(llm.ctx)``) is undefined
behaviour, and what llama.cpp asserts on (``GGML_ASSERT``) aborts the process: the caller checks, exactly
as with llama-cpp-python's ``llama_cpp.llama_cpp``. Keep a callback object referenced for as long as C may
call it. Direct calls on ``Llama.ctx`` (decoding, clearing the memory) change the context under the
``Llama``: call ``Llama.reset()`` before using the high-level API on it again. ``llama_log_set`` replaces
the extension's own log callback (the ``llama_rewire`` logger, and the details that its errors quote) for
the rest of the process.
'''


# -- writing C++ -------------------------------------------------------------------------------------


def write_cpp(api: Api) -> str:
    width = max(len(f.name) for f in api.functions) + 3
    rows = [f'    {{{(chr(34) + f.name + chr(34) + ",").ljust(width)} reinterpret_cast<void *>(&{f.name})}},'
            for f in api.functions]
    fields = []
    for st in api.structs:
        if st.union:  # a nested union: no C name of its own, its member's offset is checked
            continue
        n = st.name
        for m in st.members:
            members = [u.name for u in m.union.members] if m.union is not None else [m.name]
            size = ", ".join(f"sizeof({n}::{u})" for u in members)
            size = f"std::max({{{size}}})" if len(members) > 1 else size
            fields.append(f'    {{"{n}", sizeof({n}), "{m.name}", offsetof({n}, {members[0]}), {size}}},')
    return (CPP_TEMPLATE.replace("@ROWS@", "\n".join(rows)).replace("@COUNT@", str(len(rows)))
            .replace("@FIELDS@", "\n".join(fields)).replace("@NFIELDS@", str(len(fields))))


CPP_TEMPLATE = """\
// The address of every function that llama.h and llama-rewire.h declare, for the ctypes C API
// (llama_rewire/llama_cpp.py): the extension keeps llama's symbols local, so ctypes cannot look them up.
// Generated by scripts/gen_capi.py: do not edit.
#include "core.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

#if defined(__GNUC__)
#    pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#elif defined(_MSC_VER)
#    pragma warning(disable : 4996)
#endif

namespace rewire {

namespace {

struct capi_entry {
    const char * name;
    void *       address;
};

const capi_entry capi_table[@COUNT@] = {
@ROWS@
};

// the layout of every struct, to check that ctypes lays it out as the compiler did
struct capi_field {
    const char * type;
    size_t       size;
    const char * name;
    size_t       offset;
    size_t       field_size;
};

const capi_field capi_fields[@NFIELDS@] = {
@FIELDS@
};

} // namespace

void bind_capi(py::module_ & m) {
    m.def("capi_addresses", []() {
        py::dict out;
        for (const capi_entry & e : capi_table) {
            out[py::str(e.name)] = py::int_(reinterpret_cast<uintptr_t>(e.address));
        }
        return out;
    }, "The address of each function of llama.h and llama-rewire.h in this extension, by name.");
    m.def("capi_layouts", []() {
        py::dict out;
        for (const capi_field & f : capi_fields) {
            py::str type(f.type);
            if (!out.contains(type)) {
                out[type] = py::make_tuple(f.size, py::dict());
            }
            py::dict fields = out[type].cast<py::tuple>()[1].cast<py::dict>();
            fields[py::str(f.name)] = py::make_tuple(f.offset, f.field_size);
        }
        return out;
    }, "{struct: (sizeof, {field: (offsetof, sizeof)})} of every struct of llama.h and llama-rewire.h.");
}

} // namespace rewire
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    api = read_api()
    stale = []
    for path, text in ((OUT_PY, write_python(api)), (OUT_CPP, write_cpp(api))):
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python scripts/gen_capi.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which graph nodes each GPU backend of the vendored llama.cpp accepts: its ``supports_op``, as a table.

This is a hand-written transcription, read from the GPU backends' sources of the vendored llama.cpp
(upstream commit 0c1e570 plus this project's patches, ``vendor/llama.cpp``), of the decision each backend's
``supports_op`` makes, restricted to the ggml ops our graph hook builds. A test lists every op node the hook
builds (op, sub-op, types, contiguity, shapes) and asks :func:`supported` whether each GPU backend would take
it; a node a backend refuses is silently run on the CPU by ggml's scheduler, which splits the graph.

Read from (paths relative to the llama.cpp tree):

- CUDA:   ``ggml/src/ggml-cuda/ggml-cuda.cu``, ``ggml_backend_cuda_device_supports_op``
          (and ``ggml_cuda_op_mul_mat_use_fwht`` in ``ggml/src/ggml-cuda/fwht.cu``)
- Metal:  ``ggml/src/ggml-metal/ggml-metal-device.m``, ``ggml_metal_device_supports_op``
          (and ``ggml_metal_supports_mul_mat_op`` there; ``ggml_metal_op_mul_mat_use_mm`` and
          ``ggml_metal_op_mul_mat_use_fwht`` in ``ggml/src/ggml-metal/ggml-metal-common.cpp``)
- Vulkan: ``ggml/src/ggml-vulkan/ggml-vulkan.cpp``, ``ggml_backend_vk_device_supports_op``
          (and ``ggml_vk_dim01_contiguous`` there)
- names:  ``ggml/include/ggml.h`` (``enum ggml_op``, ``enum ggml_unary_op``, ``enum ggml_glu_op``) and
          ``ggml/src/ggml.c`` (``GGML_OP_NAME``, ``GGML_UNARY_OP_NAME``, ``GGML_GLU_OP_NAME``,
          ``type_traits``)

It must be re-read, and this file updated, whenever the vendored llama.cpp changes (a new pin or a new
patch touching a backend): nothing here is derived from the sources automatically.

Where a backend's answer depends on the device at run time, this table assumes a recent device, and says
so next to the rule:

- CUDA: one device holding every source (the cross-device buffer check is not modelled), compute capability
  9.0 (H100/H200); the MUSA-only ``#ifdef GGML_USE_MUSA`` rules are left out.
- Metal: an Apple M-series GPU: ``has_simdgroup_reduction``, ``has_simdgroup_mm`` and ``has_bfloat`` true.
- Vulkan: a device with fp16; every tensor within ``max_buffer_size`` / ``maxStorageBufferRange`` (the
  size check at the top of ``ggml_backend_vk_device_supports_op`` is not modelled).

An op record, as the test builds it for each graph node::

    {"op": "UNARY", "sub": "RELU",          # ggml_op_name(); sub: ggml_unary_op_name() / ggml_glu_op_name()
     "type": "f32",                         # dst type, ggml_type_name(): "f32", "f16", "bf16", "q4_0", ...
     "src": [{"type": "f32", "contiguous": True, "contiguous_rows": True, "ne": [n0, n1, n2, n3]}, ...],
     "ne": [n0, n1, n2, n3]}

``src`` lists the non-null sources in order (``ggml_cast`` gives CPY with ``src[1]`` the result itself;
a single-source GLU has one, a split GLU two). ``contiguous`` is ``ggml_is_contiguous``; ``contiguous_rows``
is ``ggml_is_contiguous_rows`` (``nb[0]`` is the type size, or ``ne[0]`` is one block).

Optional keys, used only where a rule needs more than that:

- a source's ``"nb": [nb0, nb1, nb2, nb3]`` (byte strides): decides ``ggml_is_contiguous_1/_2``,
  ``ggml_is_transposed`` and Vulkan's ``ggml_vk_dim01_contiguous`` exactly; without it those are inferred
  from the two flags where the flags decide them, and a rule that cannot decide refuses, saying so.
  A source may instead carry ``"contiguous_1"`` / ``"contiguous_2"`` directly.
- the node's ``"contiguous"`` (``ggml_is_contiguous(op)``); when absent, CONT counts as contiguous and CPY
  takes its ``src[1]``'s flag (the CPY node is a view of ``src[1]`` with its strides).
- MUL_MAT's ``"hint"``: ``ggml_mul_mat_set_hint`` (op param 1); 1 is ``GGML_HINT_SRC0_IS_HADAMARD``.
  Our hook sets no hint, so it defaults to 0.

:func:`supported` answers ``supports_op`` only. :func:`cuda_kernel_asserts` lists, for CUDA, the
``GGML_ASSERT`` conditions of the kernels our ops reach that ``supports_op`` does not check (a node failing
one of those is not moved to the CPU: it aborts the process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

BACKENDS: tuple[str, ...] = ("CUDA", "Metal", "Vulkan")

LLAMA_CPP_COMMIT = "0c1e570"

_FILES: dict[str, str] = {
    "CUDA": "ggml/src/ggml-cuda/ggml-cuda.cu",
    "Metal": "ggml/src/ggml-metal/ggml-metal-device.m",
    "Vulkan": "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
}

SOURCES: dict[str, str] = {
    "CUDA": f"{_FILES['CUDA']}: ggml_backend_cuda_device_supports_op",
    "Metal": f"{_FILES['Metal']}: ggml_metal_device_supports_op",
    "Vulkan": f"{_FILES['Vulkan']}: ggml_backend_vk_device_supports_op",
}

Rec = Mapping[str, Any]
Src = Mapping[str, Any]
Verdict = tuple[bool, str]
Rule = Callable[[Rec], Verdict]

_OK: Verdict = (True, "")

# ggml/src/ggml.c type_traits: type name -> (blck_size, type_size in bytes). Block sizes from
# ggml/src/ggml-common.h (QK_K = 256, QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK4_NL = QK_MXFP4 = 32,
# QK1_0 = 128, QK2_0 = QK_NVFP4 = 64); sizes from the static_asserts on sizeof(block_*) there.
TYPE_TRAITS: dict[str, tuple[int, int]] = {
    "i8": (1, 1), "i16": (1, 2), "i32": (1, 4), "i64": (1, 8), "f64": (1, 8),
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2),
    "q1_0": (128, 18), "q2_0": (64, 18),
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
    "q8_0": (32, 34), "q8_1": (32, 36),
    "mxfp4": (32, 17), "nvfp4": (64, 36),
    "q2_K": (256, 84), "q3_K": (256, 110), "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210),
    "q8_K": (256, 292),
    "iq2_xxs": (256, 66), "iq2_xs": (256, 74), "iq2_s": (256, 82), "iq3_xxs": (256, 98), "iq3_s": (256, 110),
    "iq1_s": (256, 50), "iq1_m": (256, 56), "iq4_nl": (32, 18), "iq4_xs": (256, 136),
    "tq1_0": (256, 54), "tq2_0": (256, 66),
}

# ggml_is_quantized(): the types whose type_traits have .is_quantized (every block type above).
QUANTIZED: frozenset[str] = frozenset(t for t, (blck, _) in TYPE_TRAITS.items() if blck > 1)

# ggml.h enum ggml_unary_op / enum ggml_glu_op members our hook uses (names as GGML_UNARY_OP_NAME /
# GGML_GLU_OP_NAME in ggml.c). All exist at this commit. Not covered (the hook does not use them; add them
# here, with each backend's rule, before using them): SGN, EXPM1, XIELU, FLOOR, CEIL, ROUND, TRUNC;
# SWIGLU_OAI, SWIGLU_CLAMP.
UNARY_SUBS: tuple[str, ...] = (
    "ABS", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU", "GELU_QUICK", "GELU_ERF", "SILU",
    "HARDSWISH", "HARDSIGMOID", "EXP", "SOFTPLUS",
)
GLU_SUBS: tuple[str, ...] = ("REGLU", "GEGLU", "SWIGLU", "GEGLU_ERF", "GEGLU_QUICK")

# Ops that only re-describe memory: every backend's supports_op lists them as `return true`.
NOOP_OPS: tuple[str, ...] = ("NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE")


# ---------------------------------------------------------------------------------------------------------
# record access and the layout predicates of ggml.c


def _srcs(rec: Rec) -> list[Src]:
    srcs = rec.get("src")
    if not isinstance(srcs, list):
        raise ValueError(f"op record without a 'src' list: {rec!r}")
    return srcs


def _src(rec: Rec, i: int) -> Src:
    srcs = _srcs(rec)
    if i >= len(srcs):
        raise ValueError(f"{rec.get('op')} record needs src[{i}]: {rec!r}")
    return srcs[i]


def _t(rec: Rec, i: int) -> str:
    return str(_src(rec, i)["type"])


def _traits(type_name: str) -> tuple[int, int]:
    if type_name not in TYPE_TRAITS:
        raise KeyError(f"gpu_support: type {type_name!r} is not in TYPE_TRAITS; add its block and type size")
    return TYPE_TRAITS[type_name]


def _nb(src: Src) -> list[int] | None:
    nb = src.get("nb")
    if nb is None or str(src["type"]) not in TYPE_TRAITS:
        return None
    return [int(x) for x in nb]


def _contiguous_m(src: Src, m: int) -> bool | None:
    """ggml.c ggml_is_contiguous_m_n(t, m, 4): m = 0 is ggml_is_contiguous, 1 is _1, 2 is _2.
    None when the record's flags cannot decide it and it has no 'nb'."""
    key = ("contiguous", "contiguous_1", "contiguous_2")[m]
    if key in src:
        return bool(src[key])
    nb = _nb(src)
    if nb is not None:
        ne = [int(x) for x in src["ne"]]
        blck, size = _traits(str(src["type"]))
        if ne[0] != blck and nb[0] != size:
            return False
        next_nb = size * (ne[0] // blck)
        for i in range(1, 4):
            if i > m:
                if ne[i] != 1 and nb[i] != next_nb:
                    return False
                next_nb *= ne[i]
            else:
                next_nb = ne[i] * nb[i]
        return True
    if src["contiguous"]:
        return True  # fully contiguous implies every weaker level
    if not src["contiguous_rows"]:
        return False  # every level checks dim 0 first
    return None


def _nb0_is_type_size(src: Src) -> bool:
    """`t->nb[0] == ggml_element_size(t)`; without 'nb', contiguous_rows (which also admits ne[0] == one
    block)."""
    nb = _nb(src)
    if nb is not None:
        return nb[0] == _traits(str(src["type"]))[1]
    return bool(src["contiguous_rows"])


def _transposed(src: Src) -> bool | None:
    """ggml_is_transposed: nb[0] > nb[1]. Without 'nb': a contiguous tensor is taken as not transposed."""
    nb = _nb(src)
    if nb is not None:
        return nb[0] > nb[1]
    if src["contiguous"]:
        return False
    return None


def _vk_dim01_contiguous(src: Src) -> bool | None:
    """ggml-vulkan.cpp ggml_vk_dim01_contiguous: nb[0] is the type size, rows packed (nb[1] = row size),
    and ne[3] == 1 or nb[3] == nb[2]*ne[2]."""
    nb = _nb(src)
    if nb is not None:
        ne = [int(x) for x in src["ne"]]
        blck, size = _traits(str(src["type"]))
        return nb[0] == size and nb[1] == (nb[0] * ne[0]) // blck and (ne[3] == 1 or nb[3] == nb[2] * ne[2])
    if src["contiguous"]:
        return True
    if not src["contiguous_rows"]:
        return False
    return None


def _dst_contiguous(rec: Rec) -> bool:
    if "contiguous" in rec:
        return bool(rec["contiguous"])
    if rec["op"] == "CPY":
        # the CPY node is a view of src[1] (ggml_cpy_impl), or src[1] itself (ggml_cast)
        return bool(_src(rec, 1)["contiguous"])
    return True  # CONT, and every op whose result is a new tensor (ggml_dup_tensor / ggml_new_tensor)


def _undecided(what: str) -> str:
    return f"{what} cannot be decided from the record's flags (add the source's 'nb')"


def _first(backend: str, case: str, checks: Iterable[tuple[bool | None, str]]) -> Verdict:
    """The first failing (condition, text) pair names the refusal; None (undecidable) refuses too."""
    for ok, cond in checks:
        if ok is None:
            return False, f"{_FILES[backend]}: {case}: {_undecided(cond)}"
        if not ok:
            return False, f"{_FILES[backend]}: {case}: needs {cond}"
    return _OK


def _always(_rec: Rec) -> Verdict:
    return _OK


def _types(*names: str) -> frozenset[str]:
    return frozenset(names)


F32_F16 = _types("f32", "f16")


# ---------------------------------------------------------------------------------------------------------
# CUDA: ggml/src/ggml-cuda/ggml-cuda.cu, ggml_backend_cuda_device_supports_op


def _cuda_unary(rec: Rec) -> Verdict:
    # case GGML_OP_UNARY: (our subs) ... return ggml_is_contiguous(op->src[0]);
    # (a TODO there says it should become ggml_is_contiguous_rows). No type check (bf16 is refused only
    # for XIELU).
    s0 = _src(rec, 0)
    return _first("CUDA", "case GGML_OP_UNARY", [(bool(s0["contiguous"]), "ggml_is_contiguous(src[0])")])


def _cuda_glu(rec: Rec) -> Verdict:
    # case GGML_OP_GLU: (our subs) ... return ggml_is_contiguous_1(op->src[0]);
    # bf16 is refused only for SWIGLU_OAI / SWIGLU_CLAMP. src[1] is not checked here.
    # ggml_glu_impl asserts ggml_is_contiguous_1 on both sources, so an undecidable flag passes.
    c1 = _contiguous_m(_src(rec, 0), 1)
    return _first("CUDA", "case GGML_OP_GLU", [(c1 is not False, "ggml_is_contiguous_1(src[0])")])


_CUDA_MUL_MAT_SRC0 = _types(
    "f32", "f16", "bf16", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "mxfp4", "nvfp4",
    "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K",
    "iq1_m", "iq1_s", "iq2_s", "iq2_xs", "iq2_xxs", "iq3_s", "iq3_xxs", "iq4_nl", "iq4_xs",
)


def _cuda_use_fwht(rec: Rec) -> bool:
    # ggml/src/ggml-cuda/fwht.cu ggml_cuda_op_mul_mat_use_fwht: Hadamard hint, src0 f32, dst f32,
    # src1 f32/f16 contiguous, dst contiguous, src1 and dst the same shape.
    s1 = _src(rec, 1)
    return (
        int(rec.get("hint", 0)) == 1 and _t(rec, 0) == "f32" and rec["type"] == "f32"
        and s1["type"] in F32_F16 and bool(s1["contiguous"]) and _dst_contiguous(rec)
        and list(s1["ne"]) == list(rec["ne"])
    )


def _cuda_mul_mat(rec: Rec) -> Verdict:
    # case GGML_OP_MUL_MAT:
    #   a->nb[0] != ggml_element_size(a) || b->nb[0] != ggml_element_size(b) -> false
    #   b->type == F16 && a->type != F16 && !ggml_cuda_op_mul_mat_use_fwht(op) -> false
    #   then a switch on a->type (src1 types other than f16 are not checked).
    # Device-dependent parts: only the MUSA (#ifdef GGML_USE_MUSA) rules, left out (we assume an NVIDIA
    # device, cc 9.0).
    s0, s1 = _src(rec, 0), _src(rec, 1)
    return _first("CUDA", "case GGML_OP_MUL_MAT", [
        (_nb0_is_type_size(s0), "src[0]->nb[0] == ggml_element_size(src[0])"),
        (_nb0_is_type_size(s1), "src[1]->nb[0] == ggml_element_size(src[1])"),
        (not (s1["type"] == "f16" and s0["type"] != "f16" and not _cuda_use_fwht(rec)),
         "src[0] f16 when src[1] is f16 (unless the Hadamard FWHT path applies)"),
        (s0["type"] in _CUDA_MUL_MAT_SRC0, f"src[0] type in {sorted(_CUDA_MUL_MAT_SRC0)}"),
    ])


_CUDA_GET_ROWS_SRC0 = _types(
    "f16", "f32", "bf16", "i32", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
    "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
    "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "iq4_xs",
)


def _cuda_get_rows(rec: Rec) -> Verdict:
    # case GGML_OP_GET_ROWS: switch on src[0]->type; IQ4_NL and MXFP4 only when src[0]->ne[0] % QK_K == 0.
    s0 = _src(rec, 0)
    t = str(s0["type"])
    if t in ("iq4_nl", "mxfp4"):
        return _first("CUDA", "case GGML_OP_GET_ROWS",
                      [(int(s0["ne"][0]) % 256 == 0, f"src[0]->ne[0] % QK_K == 0 for {t}")])
    return _first("CUDA", "case GGML_OP_GET_ROWS", [(t in _CUDA_GET_ROWS_SRC0, f"src[0] type in "
                                                     f"{sorted(_CUDA_GET_ROWS_SRC0 | {'iq4_nl', 'mxfp4'})}")])


_CUDA_CPY_FLOAT = _types("f32", "f16", "bf16")
_CUDA_CPY_PAIRS: frozenset[tuple[str, str]] = frozenset(
    [(a, b) for a in _CUDA_CPY_FLOAT for b in _CUDA_CPY_FLOAT]
    + [("f32", q) for q in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "i32")]
    + [(q, "f32") for q in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "i32")]
    + [("i32", "i32")]
)


def _cuda_cpy(rec: Rec) -> Verdict:
    # case GGML_OP_CPY: (src[0]->type, src[1]->type) among the listed pairs, or the same type with both
    # sources ggml_is_contiguous.
    s0, s1 = _src(rec, 0), _src(rec, 1)
    pair = (str(s0["type"]), str(s1["type"]))
    if pair in _CUDA_CPY_PAIRS:
        return _OK
    return _first("CUDA", "case GGML_OP_CPY", [
        (pair[0] == pair[1], f"a listed (src[0], src[1]) type pair (f32/f16/bf16 among themselves, "
                             f"f32<->q8_0/q4_0/q4_1/q5_0/q5_1/i32, f32->iq4_nl, i32->i32), not {pair}"),
        (bool(s0["contiguous"]) and bool(s1["contiguous"]),
         "ggml_is_contiguous(src[0]) && ggml_is_contiguous(src[1]) for a same-type copy"),
    ])


def _cuda_scale(rec: Rec) -> Verdict:
    # case GGML_OP_SCALE: src[0] f32 or bf16 (no f16) and op->type == src[0]->type.
    t0 = _t(rec, 0)
    return _first("CUDA", "case GGML_OP_SCALE", [
        (t0 in ("f32", "bf16"), f"src[0] f32 or bf16, not {t0}"),
        (rec["type"] == t0, "dst type == src[0] type"),
    ])


def _cuda_binary(rec: Rec) -> Verdict:
    # case GGML_OP_ADD/SUB/MUL/DIV: if any of src0/src1/dst is bf16: src0 bf16, dst bf16, src1 bf16 or f32;
    # otherwise src0, src1 and dst each f32 or f16. No contiguity check.
    t0, t1, td = _t(rec, 0), _t(rec, 1), str(rec["type"])
    case = f"case GGML_OP_{rec['op']}"
    if "bf16" in (t0, t1, td):
        return _first("CUDA", case, [
            (t0 == "bf16" and td == "bf16" and t1 in ("bf16", "f32"),
             f"src0 bf16, dst bf16, src1 bf16/f32 when bf16 is involved ({t0}, {t1} -> {td})"),
        ])
    return _first("CUDA", case, [(t0 in F32_F16 and t1 in F32_F16 and td in F32_F16,
                                  f"src0, src1 and dst each f32 or f16 ({t0}, {t1} -> {td})")])


def _cuda_table() -> dict[tuple[str, str | None], Rule]:
    table: dict[tuple[str, str | None], Rule] = {(op, None): _always for op in NOOP_OPS}
    table.update({("UNARY", s): _cuda_unary for s in UNARY_SUBS})
    table.update({("GLU", s): _cuda_glu for s in GLU_SUBS})
    for op in ("ADD", "SUB", "MUL", "DIV"):
        table[(op, None)] = _cuda_binary
    # case GGML_OP_SQR/SQRT/SIN/COS/CLAMP/LOG: return true (the kernels assert more: see cuda_kernel_asserts).
    for op in ("SQR", "SQRT", "SIN", "COS", "CLAMP", "LOG"):
        table[(op, None)] = _always
    table[("LEAKY_RELU", None)] = _always  # case GGML_OP_LEAKY_RELU: return true
    table[("FILL", None)] = _always  # case GGML_OP_FILL: return true
    table[("CONT", None)] = _always  # case GGML_OP_CONT: return true
    table[("SCALE", None)] = _cuda_scale
    table[("CPY", None)] = _cuda_cpy
    table[("GET_ROWS", None)] = _cuda_get_rows
    table[("MUL_MAT", None)] = _cuda_mul_mat
    return table


# ---------------------------------------------------------------------------------------------------------
# Metal: ggml/src/ggml-metal/ggml-metal-device.m, ggml_metal_device_supports_op
# Assumed device: has_simdgroup_reduction, has_simdgroup_mm and has_bfloat all true (Apple M-series).
# (Without has_bfloat, every node with a bf16 dst or src[0..2] is refused up front.)


def _metal_rows_f32_f16(case: str) -> Rule:
    # case GGML_OP_SCALE/FILL/CLAMP/SQR/SQRT/SIN/COS/LOG and case GGML_OP_UNARY (our subs):
    #   ggml_is_contiguous_rows(op->src[0]) && src[0] f32 or f16
    def rule(rec: Rec) -> Verdict:
        s0 = _src(rec, 0)
        return _first("Metal", case, [
            (bool(s0["contiguous_rows"]), "ggml_is_contiguous_rows(src[0])"),
            (s0["type"] in F32_F16, f"src[0] f32 or f16, not {s0['type']}"),
        ])
    return rule


def _metal_glu(rec: Rec) -> Verdict:
    # case GGML_OP_GLU: ggml_is_contiguous_1(op->src[0]) && src[0] f32 or f16 (src[1] not checked;
    # ggml_glu_impl asserts it has src[0]'s type and is contiguous_1, so an undecidable flag passes).
    s0 = _src(rec, 0)
    return _first("Metal", "case GGML_OP_GLU", [
        (_contiguous_m(s0, 1) is not False, "ggml_is_contiguous_1(src[0])"),
        (s0["type"] in F32_F16, f"src[0] f32 or f16, not {s0['type']}"),
    ])


def _metal_binary(rec: Rec) -> Verdict:
    # case GGML_OP_ADD/SUB/MUL/DIV: both sources ggml_is_contiguous_rows, src[0] f32 or f16, and
    # src[0]->type == src[1]->type (no mixed f32/f16; dst type not checked).
    s0, s1 = _src(rec, 0), _src(rec, 1)
    return _first("Metal", f"case GGML_OP_{rec['op']}", [
        (bool(s0["contiguous_rows"]), "ggml_is_contiguous_rows(src[0])"),
        (bool(s1["contiguous_rows"]), "ggml_is_contiguous_rows(src[1])"),
        (s0["type"] in F32_F16, f"src[0] f32 or f16, not {s0['type']}"),
        (s0["type"] == s1["type"], f"src[0] type == src[1] type, not {s0['type']} vs {s1['type']}"),
    ])


def _metal_leaky_relu(rec: Rec) -> Verdict:
    # case GGML_OP_LEAKY_RELU: src[0] f32 or f16 (no contiguity check)
    t0 = _t(rec, 0)
    return _first("Metal", "case GGML_OP_LEAKY_RELU", [(t0 in F32_F16, f"src[0] f32 or f16, not {t0}")])


_METAL_CPY: dict[str, frozenset[str]] = {
    "f32": _types("f32", "f16", "bf16", "q8_0", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
                  "tq2_0", "i32"),
    "f16": _types("f32", "f16"),
    "bf16": _types("f32", "bf16"),
    **{q: _types("f32", "f16") for q in ("q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "tq2_0")},
    "i32": _types("f32", "i32"),
}


def _metal_cpy(rec: Rec) -> Verdict:
    # case GGML_OP_SET/CPY/DUP/CONT: a table of src[0]->type -> op->type (dst type); no contiguity check.
    # Not listed (refused): K-quant or IQ src[0] (IQ4_NL only as a target of f32), f16 -> bf16,
    # bf16 -> f16.
    t0, td = _t(rec, 0), str(rec["type"])
    allowed = _METAL_CPY.get(t0, frozenset())
    return _first("Metal", f"case GGML_OP_{rec['op']}",
                  [(td in allowed, f"a listed src[0] -> dst type pair; {t0} -> {sorted(allowed)}, not {td}")])


def _metal_get_rows(rec: Rec) -> Verdict:
    # case GGML_OP_GET_ROWS: src[0] not NVFP4 and not TQ1_0
    t0 = _t(rec, 0)
    return _first("Metal", "case GGML_OP_GET_ROWS",
                  [(t0 not in ("nvfp4", "tq1_0"), "src[0] not nvfp4/tq1_0")])


def _metal_use_fwht(rec: Rec) -> bool:
    # ggml-metal-common.cpp ggml_metal_op_mul_mat_use_fwht: Hadamard hint, dst f32, src1 f32/f16 contiguous,
    # dst contiguous, same shape, src1->ne[0] in 64..512 (or 1024..8192 when float[n] fits the threadgroup
    # memory; assumed to fit up to 8192 on an M-series GPU, 32 KiB).
    s1 = _src(rec, 1)
    n = int(s1["ne"][0])
    return (
        int(rec.get("hint", 0)) == 1 and rec["type"] == "f32" and s1["type"] in F32_F16
        and bool(s1["contiguous"]) and _dst_contiguous(rec) and list(s1["ne"]) == list(rec["ne"])
        and n in (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    )


def _metal_mul_mat(rec: Rec) -> Verdict:
    # case GGML_OP_MUL_MAT: f32 src0 x f16 src1 with the FWHT path -> has_simdgroup_reduction (true); else
    # ggml_metal_supports_mul_mat_op(has_simdgroup_reduction, op, src0_f16_has_mv=true, mm_path):
    #   src[0] NVFP4 or TQ1_0 -> false; src[1] not f16 -> true; src[0] bf16 -> false; src[0] f16 -> true;
    #   else mm_path = ggml_metal_op_mul_mat_use_mm: neither source transposed, has_simdgroup_mm (true),
    #   src[0]->ne[0] >= 64 and src[1]->ne[1] > 8.
    # No contiguity or src[1] type check otherwise (src1 f32 and bf16 pass).
    s0, s1 = _src(rec, 0), _src(rec, 1)
    case = "case GGML_OP_MUL_MAT (ggml_metal_supports_mul_mat_op)"
    t0, t1 = str(s0["type"]), str(s1["type"])
    if t0 == "f32" and t1 == "f16" and _metal_use_fwht(rec):
        return _OK
    if t0 in ("nvfp4", "tq1_0"):
        return _first("Metal", case, [(False, "src[0] not nvfp4/tq1_0")])
    if t1 != "f16":
        return _OK
    tr0, tr1 = _transposed(s0), _transposed(s1)
    return _first("Metal", case, [
        (t0 != "bf16", "src[0] not bf16 when src[1] is f16"),
        *([] if t0 == "f16" else [
            (None if tr0 is None else not tr0, "!ggml_is_transposed(src[0]) (mm path, src[1] f16)"),
            (None if tr1 is None else not tr1, "!ggml_is_transposed(src[1]) (mm path, src[1] f16)"),
            (int(s0["ne"][0]) >= 64, "src[0]->ne[0] >= 64 (mm path, src[1] f16)"),
            (int(s1["ne"][1]) > 8, "src[1]->ne[1] > 8 (mm path, src[1] f16)"),
        ]),
    ])


def _metal_table() -> dict[tuple[str, str | None], Rule]:
    table: dict[tuple[str, str | None], Rule] = {(op, None): _always for op in NOOP_OPS}
    table.update({("UNARY", s): _metal_rows_f32_f16("case GGML_OP_UNARY") for s in UNARY_SUBS})
    table.update({("GLU", s): _metal_glu for s in GLU_SUBS})
    for op in ("SCALE", "FILL", "CLAMP", "SQR", "SQRT", "SIN", "COS", "LOG"):
        table[(op, None)] = _metal_rows_f32_f16(f"case GGML_OP_{op}")
    for op in ("ADD", "SUB", "MUL", "DIV"):
        table[(op, None)] = _metal_binary
    table[("LEAKY_RELU", None)] = _metal_leaky_relu
    table[("CPY", None)] = _metal_cpy
    table[("CONT", None)] = _metal_cpy
    table[("GET_ROWS", None)] = _metal_get_rows
    table[("MUL_MAT", None)] = _metal_mul_mat
    return table


# ---------------------------------------------------------------------------------------------------------
# Vulkan: ggml/src/ggml-vulkan/ggml-vulkan.cpp, ggml_backend_vk_device_supports_op
# Assumed device: fp16 support; tensors within max_buffer_size / maxStorageBufferRange (or shader 64-bit
# indexing). The rules below for our ops do not otherwise read device properties.


def _vk_unary(rec: Rec) -> Verdict:
    # case GGML_OP_UNARY (our subs): src[0] f32/f16, dst f32/f16, src[0]->type == op->type.
    # No contiguity check.
    t0, td = _t(rec, 0), str(rec["type"])
    return _first("Vulkan", "case GGML_OP_UNARY", [
        (t0 in F32_F16 and td in F32_F16 and t0 == td,
         f"src[0] and dst the same type, f32 or f16 ({t0} -> {td})"),
    ])


def _vk_glu(rec: Rec) -> Verdict:
    # case GGML_OP_GLU (our subs): src[0] f32/f16, dst f32/f16, src[0]->type == op->type, and src[1] (if any)
    # of src[0]'s type. No contiguity check.
    t0, td = _t(rec, 0), str(rec["type"])
    srcs = _srcs(rec)
    t1 = str(srcs[1]["type"]) if len(srcs) > 1 else t0
    return _first("Vulkan", "case GGML_OP_GLU", [
        (t0 in F32_F16 and td in F32_F16 and t0 == td,
         f"src[0] and dst the same type, f32 or f16 ({t0} -> {td})"),
        (t1 == t0, f"src[1] type == src[0] type ({t1} vs {t0})"),
    ])


def _vk_same_f32_f16(case: str) -> Rule:
    # case GGML_OP_SQR/SQRT/SIN/COS/CLAMP/LEAKY_RELU and case GGML_OP_LOG:
    #   src[0] f32/f16 and op->type == src[0]->type. No contiguity check.
    def rule(rec: Rec) -> Verdict:
        t0, td = _t(rec, 0), str(rec["type"])
        return _first("Vulkan", case, [
            (t0 in F32_F16 and td == t0, f"src[0] f32 or f16 and dst of its type ({t0} -> {td})"),
        ])
    return rule


def _vk_binary(rec: Rec) -> Verdict:
    # case GGML_OP_ADD/SUB/MUL/DIV: src0, src1 and dst each f32 or f16 (mixing allowed; no bf16).
    # No contiguity check.
    t0, t1, td = _t(rec, 0), _t(rec, 1), str(rec["type"])
    return _first("Vulkan", f"case GGML_OP_{rec['op']}", [
        (t0 in F32_F16 and t1 in F32_F16 and td in F32_F16,
         f"src0, src1 and dst each f32 or f16 ({t0}, {t1} -> {td})"),
    ])


def _vk_scale(rec: Rec) -> Verdict:
    # case GGML_OP_SCALE: ggml_is_contiguous(op->src[0]) && src[0] f32 (no f16, no strided views)
    s0 = _src(rec, 0)
    return _first("Vulkan", "case GGML_OP_SCALE", [
        (bool(s0["contiguous"]), "ggml_is_contiguous(src[0])"),
        (s0["type"] == "f32", f"src[0] f32, not {s0['type']}"),
    ])


def _vk_fill(rec: Rec) -> Verdict:
    # case GGML_OP_FILL: op->type f32 or f16
    td = str(rec["type"])
    return _first("Vulkan", "case GGML_OP_FILL", [(td in F32_F16, f"dst f32 or f16, not {td}")])


_VK_CPY_FROM_F32 = _types(
    "f32", "f16", "bf16", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl",
)
_VK_CPY_TO_F32 = _types("f16", "bf16", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl")


def _vk_cpy(rec: Rec) -> Verdict:
    # case GGML_OP_CONT/CPY/DUP: src1_type = src[1]->type, or src[0]->type when there is no src[1] (CONT);
    #   f32 -> {f32, f16, bf16, q1_0, q2_0, q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl}; those (less f32) -> f32;
    #   f16 -> f16; f32 <-> i32; or the same type when (not quantized, or ggml_is_contiguous(src[0]) and
    #   ggml_is_contiguous(op)) and ggml_type_size(type) % 2 == 0. (So f16 <-> bf16 is refused.)
    t0 = _t(rec, 0)
    srcs = _srcs(rec)
    t1 = str(srcs[1]["type"]) if len(srcs) > 1 else t0
    case = f"case GGML_OP_{rec['op']}"
    if (t0 == "f32" and t1 in _VK_CPY_FROM_F32) or (t1 == "f32" and t0 in _VK_CPY_TO_F32):
        return _OK
    if (t0, t1) in (("f16", "f16"), ("f32", "i32"), ("i32", "f32")):
        return _OK
    if t0 != t1:
        return _first("Vulkan", case, [(False, f"a listed (src[0], src[1]) type pair, not ({t0}, {t1})")])
    checks: list[tuple[bool | None, str]] = [(_traits(t0)[1] % 2 == 0, f"ggml_type_size({t0}) % 2 == 0")]
    if t0 in QUANTIZED:
        checks.insert(0, (bool(_src(rec, 0)["contiguous"]) and _dst_contiguous(rec),
                          f"ggml_is_contiguous(src[0]) && ggml_is_contiguous(op) for a quantized "
                          f"same-type copy ({t0})"))
    return _first("Vulkan", case, checks)


_VK_GET_ROWS_SRC0 = _types(
    "f32", "f16", "bf16", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
    "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
    "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_xs", "iq4_nl",
    "mxfp4", "nvfp4", "tq1_0", "tq2_0", "i32",
)
_VK_MUL_MAT_SRC0 = _VK_GET_ROWS_SRC0 - {"i32"}  # the same list less i32 (and, like GET_ROWS, no q8_K)


def _vk_get_rows(rec: Rec) -> Verdict:
    # case GGML_OP_GET_ROWS: switch on src[0]->type
    t0 = _t(rec, 0)
    return _first("Vulkan", "case GGML_OP_GET_ROWS",
                  [(t0 in _VK_GET_ROWS_SRC0, f"src[0] type in {sorted(_VK_GET_ROWS_SRC0)}, not {t0}")])


def _vk_mul_mat(rec: Rec) -> Verdict:
    # case GGML_OP_MUL_MAT: src[0] type in the list; a->ne[3] == b->ne[3] (no broadcast over dim 3);
    #   (ggml_vk_dim01_contiguous(src0) || src0 f32/f16/bf16) and
    #   (ggml_vk_dim01_contiguous(src1) || src1 f32/f16);
    #   not (src0 bf16 and src1 f16); not (src1 bf16 and src0 not bf16).
    s0, s1 = _src(rec, 0), _src(rec, 1)
    t0, t1 = str(s0["type"]), str(s1["type"])
    d0 = True if t0 in ("f32", "f16", "bf16") else _vk_dim01_contiguous(s0)
    d1 = True if t1 in F32_F16 else _vk_dim01_contiguous(s1)
    return _first("Vulkan", "case GGML_OP_MUL_MAT", [
        (t0 in _VK_MUL_MAT_SRC0, f"src[0] type in {sorted(_VK_MUL_MAT_SRC0)}, not {t0}"),
        (int(s0["ne"][3]) == int(s1["ne"][3]), "src[0]->ne[3] == src[1]->ne[3]"),
        (d0, f"ggml_vk_dim01_contiguous(src[0]) for a {t0} src[0]"),
        (d1, f"ggml_vk_dim01_contiguous(src[1]) for a {t1} src[1]"),
        (not (t0 == "bf16" and t1 == "f16"), "not bf16 src[0] x f16 src[1]"),
        (not (t1 == "bf16" and t0 != "bf16"), "src[0] bf16 when src[1] is bf16"),
    ])


def _vk_table() -> dict[tuple[str, str | None], Rule]:
    table: dict[tuple[str, str | None], Rule] = {(op, None): _always for op in NOOP_OPS}
    table.update({("UNARY", s): _vk_unary for s in UNARY_SUBS})
    table.update({("GLU", s): _vk_glu for s in GLU_SUBS})
    for op in ("SQR", "SQRT", "SIN", "COS", "CLAMP", "LEAKY_RELU", "LOG"):
        table[(op, None)] = _vk_same_f32_f16(f"case GGML_OP_{op}")
    for op in ("ADD", "SUB", "MUL", "DIV"):
        table[(op, None)] = _vk_binary
    table[("SCALE", None)] = _vk_scale
    table[("FILL", None)] = _vk_fill
    table[("CPY", None)] = _vk_cpy
    table[("CONT", None)] = _vk_cpy
    table[("GET_ROWS", None)] = _vk_get_rows
    table[("MUL_MAT", None)] = _vk_mul_mat
    return table


RULES: dict[str, dict[tuple[str, str | None], Rule]] = {
    "CUDA": _cuda_table(),
    "Metal": _metal_table(),
    "Vulkan": _vk_table(),
}


def supported(backend: str, rec: Mapping[str, Any]) -> tuple[bool, str]:
    """(True, "") if the backend's supports_op accepts the node, else (False, reason) naming the rule
    (with the source file and the condition) that refuses it. An op/sub-op not in the table raises KeyError
    with a clear message (so a new op our hook starts using must be added here, not silently passed)."""
    if backend not in RULES:
        raise KeyError(f"gpu_support: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    op = str(rec["op"])
    sub = rec.get("sub")
    key = (op, None if sub is None else str(sub))
    rules = RULES[backend]
    if key not in rules:
        what = op if sub is None else f"{op}/{sub}"
        raise KeyError(
            f"gpu_support: op {what} is not in the {backend} table of tests/gpu_support.py; read its case in "
            f"{SOURCES[backend]} (vendored llama.cpp) and add a rule for every backend before the hook "
            "uses it"
        )
    return rules[key](rec)


def cuda_kernel_asserts(rec: Mapping[str, Any]) -> list[str]:
    """GGML_ASSERTs in the CUDA kernels our ops reach that ggml_backend_cuda_device_supports_op does not check
    (supports_op says yes, then the kernel aborts). Empty when none applies or the op is not covered here.
    Read from ggml/src/ggml-cuda/unary.cu, clamp.cu, getrows.cu and fill.cu."""
    op = str(rec["op"])
    out: list[str] = []
    td = str(rec["type"])
    if op in ("UNARY", "SQR", "SQRT", "SIN", "COS", "LOG"):
        # unary.cu ggml_cuda_op_unary: ggml_is_contiguous(src0); src0 f32/f16/bf16; src0->type == dst->type
        s0 = _src(rec, 0)
        if not s0["contiguous"]:
            out.append("unary.cu ggml_cuda_op_unary: GGML_ASSERT(ggml_is_contiguous(src0))")
        if s0["type"] not in ("f32", "f16", "bf16") or s0["type"] != td:
            out.append("unary.cu ggml_cuda_op_unary: src0 f32/f16/bf16 and src0->type == dst->type")
    elif op == "LEAKY_RELU":
        s0 = _src(rec, 0)
        if not s0["contiguous"]:
            out.append("unary.cu ggml_cuda_op_leaky_relu: GGML_ASSERT(ggml_is_contiguous(src0))")
        if s0["type"] not in F32_F16 or s0["type"] != td:
            out.append("unary.cu ggml_cuda_op_leaky_relu: src0 f32/f16 and src0->type == dst->type")
    elif op == "CLAMP":
        t0 = _t(rec, 0)
        if t0 not in F32_F16 or t0 != td:
            out.append("clamp.cu ggml_cuda_op_clamp: src0 f32/f16 and src0->type == dst->type")
    elif op == "GLU":
        # unary.cu ggml_cuda_op_unary_gated: contiguous_1 + nb[0] == element size for both sources (asserted
        # by ggml_glu_impl as well), dst contiguous (a new tensor), src0 f32/f16/bf16,
        # src0->type == dst->type.
        t0 = _t(rec, 0)
        if t0 not in ("f32", "f16", "bf16") or t0 != td:
            out.append("unary.cu ggml_cuda_op_unary_gated: src0 f32/f16/bf16 and src0->type == dst->type")
    elif op == "GET_ROWS":
        # getrows.cu ggml_cuda_op_get_rows: src1 i32, src1->ne[3] == 1 (both asserted by ggml_get_rows too),
        # nb[0] == type size for src0, src1 and dst
        if not _nb0_is_type_size(_src(rec, 0)):
            out.append("getrows.cu ggml_cuda_op_get_rows: "
                       "GGML_ASSERT(src0->nb[0] == ggml_type_size(src0->type))")
        if not _nb0_is_type_size(_src(rec, 1)):
            out.append("getrows.cu ggml_cuda_op_get_rows: "
                       "GGML_ASSERT(src1->nb[0] == ggml_type_size(src1->type))")
    elif op == "FILL" and not _dst_contiguous(rec):
        out.append("fill.cu ggml_cuda_op_fill: GGML_ASSERT(ggml_is_contiguous(dst))")
    return out

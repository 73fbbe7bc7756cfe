"""Expression programs: a folded tree (:mod:`.expr`) compiled to the postfix program the native stack
machine runs (``llama_rewire_op`` in llama-rewire.h), its budget, and a numpy evaluator of it.

Each op is ``(code, a, b)``; it pops its operands and pushes its result. Constants never go on the
stack: ``t + c`` is ``affine(1, c)``, ``c*t`` ``affine(c, 0)``, ``c - t`` ``affine(-1, c)``, ``t / c``
``affine(1/c, 0)``, ``c / t`` ``rdiv(c)``, ``max(t, c)`` ``clamp(c, inf)``, ``min(t, c)``
``clamp(-inf, c)``; integer powers are squarings and products of copies (``dup``), negative ones end in
``rdiv(1)``. Consecutive affine ops merge into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from .. import _core
from ..errors import ExpressionError
from .expr import FLOAT32_MAX, Bin, Clamp, Neg, Node, Num, Pow, Var, format_expression, parse_expression

# The op codes of llama-rewire.h (llama_rewire_op_type). The native module exports the same table as
# _core.EXPR_OPS once it is rebuilt; until then this copy is used, and afterwards both must agree.
_EXPR_OPS_FALLBACK: dict[str, int] = {
    "x": 0, "dup": 1, "affine": 2, "add": 3, "sub": 4, "mul": 5, "div": 6, "rdiv": 7, "max": 8, "min": 9,
    "clamp": 10, "sqr": 11, "sqrt": 12, "exp": 13, "log": 14, "abs": 15, "neg": 16, "tanh": 17,
    "sigmoid": 18, "relu": 19, "gelu": 20, "silu": 21, "softplus": 22, "sin": 23, "cos": 24, "step": 25,
}
EXPR_OPS: dict[str, int] = dict(getattr(_core, "EXPR_OPS", _EXPR_OPS_FALLBACK))
if EXPR_OPS != _EXPR_OPS_FALLBACK:  # not an assert: it must hold under python -O too
    raise ImportError("llama_rewire._core.EXPR_OPS differs from the op table of llama_rewire.wiring.program: "
                      "the extension and the Python package are from different versions")
OP_NAMES: dict[int, str] = {code: name for name, code in EXPR_OPS.items()}

MAX_NODES: int = int(getattr(_core, "EXPR_MAX_NODES", 24))
MAX_STACK: int = int(getattr(_core, "EXPR_MAX_STACK", 8))
MAX_OPS: int = int(getattr(_core, "EXPR_MAX_OPS", 48))

# graph nodes an op adds: x and dup none, rdiv 2 (fill, div), max / min 3 (sub, relu, add), others 1
NODE_COST: dict[str, int] = dict.fromkeys(EXPR_OPS, 1)
NODE_COST.update({"x": 0, "dup": 0, "rdiv": 2, "max": 3, "min": 3})
_BINARY = {"add", "sub", "mul", "div", "max", "min"}
_BIN_OP = {"+": "add", "-": "sub", "*": "mul", "/": "div"}

Op = tuple[int, float, float]  # (code, a, b)


def op(name: str, a: float = 0.0, b: float = 0.0) -> Op:
    return (EXPR_OPS[name], float(a), float(b))


# ---------------------------------------------------------------- compiling

def _const(v: float) -> float:
    if not abs(v) <= FLOAT32_MAX:
        raise ExpressionError(f"the constant {v:g} does not fit in float32")
    return v


def _affine(a: float, b: float) -> Op:
    return op("affine", _const(a), _const(b))


def _power(node: Pow) -> list[Op]:
    n = abs(node.n)
    bits = bin(n)[3:]  # after the leading 1
    # square-and-multiply, left to right: one copy of the base beneath the accumulator per multiply
    prog = _compile(node.base) + [op("dup")] * bits.count("1")
    for bit in bits:
        prog.append(op("sqr"))
        if bit == "1":
            prog.append(op("mul"))
    if node.n < 0:
        prog.append(op("rdiv", 1.0))
    return prog


def _compile_bin(node: Bin) -> list[Op]:
    left, right = node.left, node.right
    if isinstance(right, Num):
        c = right.value
        if node.op == "+":
            return [*_compile(left), _affine(1.0, c)]
        if node.op == "-":
            return [*_compile(left), _affine(1.0, -c)]
        if node.op == "*":
            return [*_compile(left), _affine(c, 0.0)]
        return [*_compile(left), _affine(1.0 / c, 0.0)]
    if isinstance(left, Num):
        c = left.value
        if node.op == "+":
            return [*_compile(right), _affine(1.0, c)]
        if node.op == "-":
            return [*_compile(right), _affine(-1.0, c)]
        if node.op == "*":
            return [*_compile(right), _affine(c, 0.0)]
        return [*_compile(right), op("rdiv", _const(c))]
    return [*_compile(left), *_compile(right), op(_BIN_OP[node.op])]


def _compile(node: Node) -> list[Op]:
    if isinstance(node, Var):
        return [op("x")]
    if isinstance(node, Num):  # not reached for a tree that depends on x: constants fold into ops
        raise ExpressionError("a constant cannot be a whole operand of the program")
    if isinstance(node, Neg):
        return [*_compile(node.arg), op("neg")]
    if isinstance(node, Pow):
        return _power(node)
    if isinstance(node, Bin):
        return _compile_bin(node)
    if isinstance(node, Clamp):
        return [*_compile(node.arg), op("clamp", _const(node.lo), _const(node.hi))]
    if node.fn in ("max", "min"):
        a, b = node.args
        if isinstance(b, Num):  # max(t, c) = clamp(t, c, inf), min(t, c) = clamp(t, -inf, c)
            c = _const(b.value)
            return [*_compile(a), op("clamp", c, math.inf) if node.fn == "max" else op("clamp", -math.inf, c)]
        return [*_compile(a), *_compile(b), op(node.fn)]
    return [*_compile(node.args[0]), op(node.fn)]


def _peephole(prog: list[Op]) -> list[Op]:
    """Merge runs of affine / neg ops into one affine (dropping the identity)."""
    out: list[Op] = []
    affine, neg = EXPR_OPS["affine"], EXPR_OPS["neg"]
    for instr in prog:
        code = instr[0]
        if code not in (affine, neg):
            out.append(instr)
            continue
        a, b = instr[1:] if code == affine else (-1.0, 0.0)
        if out and out[-1][0] in (affine, neg):
            pc, pa, pb = out.pop()
            pa, pb = (pa, pb) if pc == affine else (-1.0, 0.0)
            a, b = a * pa, a * pb + b  # a (pa t + pb) + b
        if (a, b) == (1.0, 0.0):
            continue
        if a == 0.0:
            raise ExpressionError("the expression is constant: it must depend on x")
        out.append(op("neg") if (a, b) == (-1.0, 0.0) else _affine(a, b))
    return out


def compile_tree(node: Node) -> tuple[Op, ...]:
    """The program of a folded tree, without the budget check (see :func:`check_budget`)."""
    return tuple(_peephole(_compile(node)))


# ---------------------------------------------------------------- budget

def program_cost(program: Sequence[Op]) -> tuple[int, int, int]:
    """(graph nodes, stack depth, ops) of a program."""
    depth = peak = nodes = 0
    for code, _, _ in program:
        name = OP_NAMES[code]
        nodes += NODE_COST[name]
        depth += 1 if name in ("x", "dup") else -1 if name in _BINARY else 0
        peak = max(peak, depth)
    return nodes, peak, len(program)


def check_budget(program: Sequence[Op], text: str = "") -> None:
    """ExpressionError if the program is over the native limits (nodes, stack, ops)."""
    nodes, depth, n_ops = program_cost(program)
    what = f"the expression {text!r}" if text else "the expression"
    if nodes > MAX_NODES:
        raise ExpressionError(f"{what} needs {nodes} graph nodes; the budget is {MAX_NODES}")
    if depth > MAX_STACK:
        raise ExpressionError(f"{what} needs a stack of {depth} values; the limit is {MAX_STACK}")
    if n_ops > MAX_OPS:
        raise ExpressionError(f"{what} compiles to {n_ops} ops; the limit is {MAX_OPS}")


@lru_cache(maxsize=1024)
def compile_expression(text: str) -> tuple[Op, ...]:
    """Parse, fold and compile an expression of x, within the native budget."""
    node = parse_expression(text)
    program = compile_tree(node)
    check_budget(program, format_expression(node))
    return program


# ---------------------------------------------------------------- evaluating (numpy, for checks)

F64 = npt.NDArray[np.float64]


def np_sigmoid(t: F64) -> F64:
    """1 / (1 + exp(-t)) without overflow."""
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def np_gelu(t: F64) -> F64:
    """0.5 t (1 + tanh(sqrt(2/pi) (t + 0.044715 t^3))), ggml's gelu."""
    return 0.5 * t * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t * t * t)))


def np_softplus(t: F64) -> F64:
    """log(1 + exp(t)), and t where t > 20 (as ggml)."""
    return np.where(t > 20.0, t, np.logaddexp(0.0, t))


_NP_UNARY: dict[str, Callable[[F64], F64]] = {
    "sqr": lambda t: t * t, "sqrt": np.sqrt, "exp": np.exp, "log": np.log, "abs": np.abs,
    "neg": np.negative, "tanh": np.tanh, "sigmoid": np_sigmoid, "relu": lambda t: np.maximum(t, 0.0),
    "gelu": np_gelu, "silu": lambda t: t * np_sigmoid(t), "softplus": np_softplus, "sin": np.sin,
    "cos": np.cos, "step": lambda t: (t > 0).astype(t.dtype),
}
_NP_BINARY: dict[str, Callable[[F64, F64], F64]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
    "min": np.minimum,
}


def run_program(program: Sequence[Op], x: npt.ArrayLike) -> F64:
    """The program's value at x (float64 unless x is another float type), as the stack machine computes
    it; overflow gives inf and invalid operations nan, without warnings."""
    xs = np.asarray(x)
    if xs.dtype.kind != "f":
        xs = xs.astype(np.float64)
    stack: list[F64] = []
    with np.errstate(all="ignore"):
        for code, a, b in program:
            name = OP_NAMES[code]
            if name == "x":
                stack.append(xs)
            elif name == "dup":
                stack.append(stack[-1])
            elif name in _NP_BINARY:
                r, left = stack.pop(), stack.pop()
                stack.append(_NP_BINARY[name](left, r))
            else:
                t = stack.pop()
                if name == "affine":
                    stack.append(a * t + b)
                elif name == "rdiv":
                    stack.append(a / t)
                elif name == "clamp":
                    stack.append(np.minimum(np.maximum(t, a), b))
                else:
                    stack.append(_NP_UNARY[name](t))
    if len(stack) != 1:
        raise ValueError(f"a program must leave one value, this one leaves {len(stack)}")
    return stack[0]

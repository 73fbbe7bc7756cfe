"""Expression activations: the text ``x*sigmoid(1.5*x)`` as a folded syntax tree, and back as text.

Grammar (a small recursive-descent parser; nothing is ever evaluated by Python's ``eval``)::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('-' | '+') unary | power
    power  := atom (('^' | '**') unary)?          right-associative; the exponent folds to an integer
    atom   := number | 'x' | 'pi' | 'e' | name '(' expr (',' expr)* ')' | '(' expr ')'

Numbers as ``2``, ``1.5``, ``.5``, ``1e-3``. Functions: exp, log, sqrt, abs, tanh, sigmoid, relu, gelu
(the tanh approximation), silu, softplus, sin, cos, step (t > 0 ? 1 : 0), min(a, b), max(a, b) and
clamp(t, lo, hi) with constant bounds.

Constants fold as the tree is built (``sqrt(2/pi)`` is one number), and a few identities simplify
(``t*1``, ``t+0``, ``--t``, ``(t^m)^n``), so equal trees print equal text: :func:`format_expression` gives
the canonical text, and parsing it gives the same tree back. An expression nests at most ``MAX_DEPTH``
deep, and its folded tree is at most that deep: anything deeper is an ``ExpressionError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from ..errors import ExpressionError

# the largest finite float32: a constant the native program receives must fit in it
FLOAT32_MAX = 3.4028234663852886e38
MAX_POWER = 1024
# how deep an expression may nest (parentheses, calls, signs, powers) and how deep its folded tree may
# be: far beyond any expression within the native budget, and well inside Python's recursion limit
MAX_DEPTH = 64


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Var:
    """The activation's input x."""


@dataclass(frozen=True)
class Neg:
    arg: Node


@dataclass(frozen=True)
class Bin:
    op: str  # + - * /
    left: Node
    right: Node


@dataclass(frozen=True)
class Pow:
    base: Node
    n: int  # an integer other than 0 and 1


@dataclass(frozen=True)
class Call:
    fn: str  # a unary function, or min / max of two arguments
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Clamp:
    arg: Node
    lo: float
    hi: float


Node = Union[Num, Var, Neg, Bin, Pow, Call, Clamp]
X = Var()


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _softplus(v: float) -> float:
    return v if v > 20.0 else math.log1p(math.exp(v))


def _gelu(v: float) -> float:
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


# the unary functions, with their value on a constant (for folding)
UNARY: dict[str, Callable[[float], float]] = {
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "abs": abs,
    "tanh": math.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda v: max(v, 0.0),
    "gelu": _gelu,
    "silu": lambda v: v * _sigmoid(v),
    "softplus": _softplus,
    "sin": math.sin,
    "cos": math.cos,
    "step": lambda v: 1.0 if v > 0 else 0.0,
}
BINARY: dict[str, Callable[[float, float], float]] = {"min": min, "max": max}
FUNCTIONS = (*UNARY, *BINARY, "clamp")
CONSTANTS = {"pi": math.pi, "e": math.e}

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^(),]))"
)


# ---------------------------------------------------------------- building (with folding)

def num(value: float) -> Num:
    if not math.isfinite(value):
        raise ExpressionError(f"a constant is not finite ({value})")
    return Num(value + 0.0)  # -0.0 -> 0.0


def _fold(name: str, fn: Callable[..., float], *args: float) -> Num:
    try:
        v = fn(*args)
    except (ValueError, OverflowError, ZeroDivisionError) as e:
        shown = ", ".join(format_number(a) for a in args)
        raise ExpressionError(f"cannot fold {name}({shown}): {e}") from None
    return num(v)


def neg(a: Node) -> Node:
    if isinstance(a, Num):
        return num(-a.value)
    if isinstance(a, Neg):
        return a.arg
    return Neg(a)


def binop(op: str, left: Node, right: Node) -> Node:
    """left op right, folded and normalised: constants of a product first, no '+ -c' or '- -c'."""
    lc = left.value if isinstance(left, Num) else None
    rc = right.value if isinstance(right, Num) else None
    if lc is not None and rc is not None:
        fns: dict[str, Callable[[float, float], float]] = {
            "+": lambda a, b: a + b, "-": lambda a, b: a - b,
            "*": lambda a, b: a * b, "/": lambda a, b: a / b,
        }
        if op == "/" and rc == 0:
            raise ExpressionError("division by zero")
        return _fold(op, fns[op], lc, rc)
    if op in "+-" and (isinstance(right, Neg) or (rc is not None and rc < 0)):
        # t + -u -> t - u, t - -u -> t + u
        return binop("-" if op == "+" else "+", left, neg(right))
    if op in "+-" and rc is not None and isinstance(left, Bin) and left.op in "+-" \
            and isinstance(left.right, Num):  # (t + c1) - c2 -> t + (c1 - c2)
        c1 = left.right.value if left.op == "+" else -left.right.value
        return binop("+", left.left, _fold(op, lambda a, b: a + b, c1, rc if op == "+" else -rc))
    if op == "+":
        if lc == 0:
            return right
        if rc == 0:
            return left
    elif op == "-":
        if rc == 0:
            return left
        if lc == 0:
            return neg(right)
    elif op == "*":
        if rc is not None:  # constant first
            left, right, lc, rc = right, left, rc, None
        if lc == 1:
            return right
        if lc == -1:
            return neg(right)
        if lc is not None and isinstance(right, Bin) and right.op == "*" and isinstance(right.left, Num):
            return binop("*", num(lc * right.left.value), right.right)  # c1*(c2*t) -> (c1 c2)*t
    elif op == "/":
        if rc == 0:
            raise ExpressionError("division by zero")
        if rc == 1:
            return left
        if rc == -1:
            return neg(left)
    return Bin(op, left, right)


def power(base: Node, exponent: Node) -> Node:
    if not isinstance(exponent, Num):
        raise ExpressionError(f"the exponent must be a constant, got {format_expression(exponent)!r}")
    p = exponent.value
    if not p.is_integer():
        raise ExpressionError(f"non-integer power {format_number(p)}: only integer powers are supported "
                              "(use sqrt for ^0.5)")
    n = int(p)
    if abs(n) > MAX_POWER:
        raise ExpressionError(f"power {n} is too large (at most {MAX_POWER})")
    if isinstance(base, Num):
        if base.value == 0 and n < 0:
            raise ExpressionError("division by zero (0 to a negative power)")
        return _fold("pow", math.pow, base.value, float(n))
    if n == 0:
        return Num(1.0)
    if n == 1:
        return base
    if isinstance(base, Pow):
        return power(base.base, Num(float(base.n * n)))
    return Pow(base, n)


def call(fn: str, args: list[Node]) -> Node:
    arity = 3 if fn == "clamp" else 2 if fn in BINARY else 1
    if len(args) != arity:
        raise ExpressionError(f"{fn} takes {arity} argument{'s' if arity > 1 else ''}, got {len(args)}")
    if fn == "clamp":
        t, lo, hi = args
        if not isinstance(lo, Num) or not isinstance(hi, Num):
            raise ExpressionError("clamp needs constant bounds: clamp(t, lo, hi)")
        if lo.value > hi.value:
            raise ExpressionError(f"clamp bounds go backwards ({format_number(lo.value)} > "
                                  f"{format_number(hi.value)})")
        if isinstance(t, Num) or lo.value == hi.value:
            return num(min(max(t.value, lo.value), hi.value)) if isinstance(t, Num) else lo
        return Clamp(t, lo.value, hi.value)
    if all(isinstance(a, Num) for a in args):
        values = [a.value for a in args if isinstance(a, Num)]
        return _fold(fn, UNARY[fn] if arity == 1 else BINARY[fn], *values)
    if arity == 2 and isinstance(args[0], Num):  # the constant second: max(0, t) == max(t, 0)
        args = [args[1], args[0]]
    return Call(fn, tuple(args))


# ---------------------------------------------------------------- parsing

class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if not m or m.end() == pos:
                at = len(stripped) - len(stripped[pos:].lstrip())
                raise ExpressionError(f"unexpected {stripped[at]!r} at position {at}")
            kind = m.lastgroup or "op"
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0
        self.nesting = 0  # unary() calls in progress: every nested construct passes through one

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, *ops: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in ops:
            self.i += 1
            return tok[1]
        return None

    def expect(self, op: str) -> None:
        if self.take(op) is None:
            tok = self.peek()
            found = "the end" if tok is None else f"{tok[1]!r} at position {tok[2]}"
            raise ExpressionError(f"expected {op!r}, found {found}")

    # Each rule returns its folded node and a bound on the node's depth (folding never makes a node
    # deeper than its deepest operand plus one), so that no tree deeper than MAX_DEPTH is ever built:
    # printing, comparing and compiling a tree recurse through it.

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError("empty expression")
        node, _ = self.expr()
        tok = self.peek()
        if tok is not None:
            hint = " (write * for a product)" if tok[0] != "op" or tok[1] == "(" else ""
            raise ExpressionError(f"unexpected {tok[1]!r} at position {tok[2]}{hint}")
        return node

    @staticmethod
    def _deeper(node: Node, *depths: int) -> tuple[Node, int]:
        depth = max(depths) + 1
        if depth > MAX_DEPTH:
            raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} deep")
        return node, depth

    def expr(self) -> tuple[Node, int]:
        node, depth = self.term()
        while (op := self.take("+", "-")) is not None:
            right, rd = self.term()
            node, depth = self._deeper(binop(op, node, right), depth, rd)
        return node, depth

    def term(self) -> tuple[Node, int]:
        node, depth = self.unary()
        while (op := self.take("*", "/")) is not None:
            right, rd = self.unary()
            node, depth = self._deeper(binop(op, node, right), depth, rd)
        return node, depth

    def unary(self) -> tuple[Node, int]:
        if self.nesting >= MAX_DEPTH:
            tok = self.peek()
            at = f" at position {tok[2]}" if tok is not None else ""
            raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} deep{at}")
        self.nesting += 1
        try:
            op = self.take("-", "+")
            if op is None:
                return self.power()
            arg, depth = self.unary()
            return self._deeper(neg(arg), depth) if op == "-" else (arg, depth)
        finally:
            self.nesting -= 1

    def power(self) -> tuple[Node, int]:
        base, depth = self.atom()
        if self.take("^", "**") is not None:
            exponent, ed = self.unary()
            return self._deeper(power(base, exponent), depth, ed)
        return base, depth

    def atom(self) -> tuple[Node, int]:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("unexpected end of expression")
        kind, text, pos = tok
        self.i += 1
        if kind == "num":
            return num(float(text)), 1
        if kind == "name":
            name = text.lower()
            if name == "x":
                return X, 1
            if name in CONSTANTS:
                return Num(CONSTANTS[name]), 1
            if name not in FUNCTIONS:
                known = ", ".join(FUNCTIONS)
                raise ExpressionError(f"unknown name {text!r} at position {pos} (the variable is x; "
                                      f"constants pi, e; functions {known})")
            if self.take("(") is None:
                raise ExpressionError(f"{name} at position {pos} needs its argument in parentheses")
            parsed = [self.expr()]
            while self.take(",") is not None:
                parsed.append(self.expr())
            self.expect(")")
            return self._deeper(call(name, [a for a, _ in parsed]), *(d for _, d in parsed))
        if text == "(":
            node, depth = self.expr()
            self.expect(")")
            return node, depth
        raise ExpressionError(f"unexpected {text!r} at position {pos}")


def parse_expression(text: str) -> Node:
    """The folded tree of an expression of x; ExpressionError names what is wrong."""
    node = _Parser(text).parse()
    if not depends_on_x(node):
        raise ExpressionError(f"the expression is constant ({format_expression(node)}): it must depend on x")
    return node


def depends_on_x(node: Node) -> bool:
    if isinstance(node, Var):
        return True
    if isinstance(node, Num):
        return False
    if isinstance(node, (Neg, Pow, Clamp)):
        return depends_on_x(node.arg if isinstance(node, (Neg, Clamp)) else node.base)
    if isinstance(node, Bin):
        return depends_on_x(node.left) or depends_on_x(node.right)
    return any(depends_on_x(a) for a in node.args)


def mentions_x(text: str) -> bool:
    """The text names the variable x (``2x`` too, but not ``exp`` or ``max``)."""
    return re.search(r"(?<![A-Za-z_])x(?![A-Za-z0-9_])", text, re.IGNORECASE) is not None


def looks_like_expression(text: str) -> bool:
    """Whether an activation value is meant as an expression: it names x or uses an operator."""
    return mentions_x(text) or re.search(r"[-+*/^]", text) is not None


# ---------------------------------------------------------------- printing

def format_number(v: float) -> str:
    """The shortest text that reads back as exactly v: 2, 0.5, 1e-05, 0.7978845608028654."""
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY_PREC = 3  # a leading minus (of a node or of a negative number)
_POW_PREC = 4
_ATOM_PREC = 5


def _fmt(node: Node) -> tuple[str, int]:
    if isinstance(node, Var):
        return "x", _ATOM_PREC
    if isinstance(node, Num):
        return format_number(node.value), _UNARY_PREC if node.value < 0 else _ATOM_PREC
    if isinstance(node, Neg):
        text, p = _fmt(node.arg)
        return "-" + (text if p > _UNARY_PREC else f"({text})"), _UNARY_PREC
    if isinstance(node, Pow):
        text, p = _fmt(node.base)
        return (text if p == _ATOM_PREC else f"({text})") + f"^{node.n}", _POW_PREC
    if isinstance(node, Bin):
        prec = _PREC[node.op]
        lt, lp = _fmt(node.left)
        rt, rp = _fmt(node.right)
        lt = lt if lp >= prec else f"({lt})"
        rt = rt if rp > prec else f"({rt})"  # a right operand of equal precedence regroups
        return f"{lt}{node.op}{rt}", prec
    if isinstance(node, Clamp):
        return f"clamp({_fmt(node.arg)[0]},{format_number(node.lo)},{format_number(node.hi)})", _ATOM_PREC
    return f"{node.fn}({','.join(_fmt(a)[0] for a in node.args)})", _ATOM_PREC


def format_expression(node: Node) -> str:
    """The canonical text of a folded tree (no spaces): parsing it gives the same tree."""
    return _fmt(node)[0]


@lru_cache(maxsize=1024)
def canonical_expression(text: str) -> str:
    """The canonical text of an expression (ExpressionError if it is not one)."""
    return format_expression(parse_expression(text))

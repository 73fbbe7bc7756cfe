"""Built-in activations spelled out as expressions: ``x*sigmoid(x)`` is silu, and runs silu's graph.

Two passes, on the folded tree and on its compiled program:

1. Structural, for the family with a free parameter: ``x*sigmoid(c*x)`` (either factor first; ``c*x``
   in any linear form without offset: ``c*x``, ``x*c``, ``x/d``, ``-x``) is swish(c); c = 1 is silu and
   c = 1.702 gelu_quick, the names whose graphs are exactly that.
2. Numeric, for the built-ins without a parameter (and leaky_relu, elu, softplus at their defaults):
   the program is evaluated in float64 on a fixed grid and compared with each built-in's formula. A
   match within a relative 1e-9 (absolute 1e-12 near zero) is far below float32's resolution (6e-8), so
   no float32 graph could tell the two apart on these points.

Why numeric rather than more patterns: one function has many spellings (``x/(1+exp(-x))``,
``sigmoid(x)*x``, gelu's tanh form with its constants written and folded in any order, ``max(0,x)``), and
a matcher would need each of them; the grid needs none. It covers [-12, 12] densely, magnitudes 1e-6 to
1e6 logarithmically on both sides, and a few huge values (up to 1e30), so that functions that agree near
zero but not in the tails (``clamp(x,-100,100)`` is not the identity) are told apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Optional

import numpy as np

from .expr import Bin, Call, Neg, Node, Num, Var
from .program import F64, Op, np_gelu, np_sigmoid, np_softplus, run_program

GELU_QUICK_BETA = 1.702
RTOL = 1e-9
ATOL = 1e-12

Builtin = tuple[str, Optional[float]]  # (name, parameter), as Activation takes them


def _linear(node: Node) -> tuple[float, float] | None:
    """(a, b) when node is a x + b, else None."""
    if isinstance(node, Var):
        return 1.0, 0.0
    if isinstance(node, Neg):
        inner = _linear(node.arg)
        return None if inner is None else (-inner[0], -inner[1])
    if not isinstance(node, Bin):
        return None
    lc = node.left.value if isinstance(node.left, Num) else None
    rc = node.right.value if isinstance(node.right, Num) else None
    inner = _linear(node.right if lc is not None else node.left)
    if inner is None or (lc is None and rc is None):
        return None
    a, b = inner
    c = lc if lc is not None else rc
    assert c is not None
    if node.op == "*":
        return c * a, c * b
    if node.op == "/":
        return None if lc is not None else (a / c, b / c)
    if node.op == "+":
        return a, b + c
    return (-a, c - b) if lc is not None else (a, b - c)  # c - t or t - c


def _swish(node: Node) -> Builtin | None:
    if not isinstance(node, Bin) or node.op != "*":
        return None
    for v, s in ((node.left, node.right), (node.right, node.left)):
        if isinstance(v, Var) and isinstance(s, Call) and s.fn == "sigmoid":
            lin = _linear(s.args[0])
            if lin is not None and lin[1] == 0.0:
                beta = lin[0]
                if beta == 1.0:
                    return ("silu", None)
                if beta == GELU_QUICK_BETA:
                    return ("gelu_quick", None)
                return ("swish", beta)
    return None


def _grid() -> F64:
    tails = np.concatenate([np.logspace(-6, 6, 241), [1e8, 1e12, 1e20, 1e30]])
    return np.concatenate([np.linspace(-12.0, 12.0, 4801), tails, -tails, [0.0]])


def _hardsigmoid(x: F64) -> F64:
    return np.clip((x + 3.0) / 6.0, 0.0, 1.0)


# the built-ins the numeric pass knows, each with its formula (gelu_erf is left out: no expression
# can spell erf exactly)
_FORMULAS: Sequence[tuple[Builtin, Callable[[F64], F64]]] = (
    (("identity", None), lambda x: x),
    (("silu", None), lambda x: x * np_sigmoid(x)),
    (("gelu", None), np_gelu),
    (("gelu_quick", None), lambda x: x * np_sigmoid(GELU_QUICK_BETA * x)),
    (("relu", None), lambda x: np.maximum(x, 0.0)),
    (("relu2", None), lambda x: np.maximum(x, 0.0) ** 2),
    (("leaky_relu", 0.01), lambda x: np.where(x > 0, x, 0.01 * x)),
    (("elu", 1.0), lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))),
    (("tanh", None), np.tanh),
    (("sigmoid", None), np_sigmoid),
    (("softplus", 1.0), np_softplus),
    (("mish", None), lambda x: x * np.tanh(np_softplus(x))),
    (("hardswish", None), lambda x: x * _hardsigmoid(x)),
    (("hardsigmoid", None), _hardsigmoid),
)


@lru_cache(maxsize=1)
def _references() -> tuple[F64, list[tuple[Builtin, F64]]]:
    x = _grid()
    with np.errstate(all="ignore"):
        return x, [(b, f(x)) for b, f in _FORMULAS]


def _same(f: F64, g: F64) -> bool:
    with np.errstate(all="ignore"):
        return bool(np.all((f == g) | (np.abs(f - g) <= ATOL + RTOL * np.abs(g))))


def numeric_match(program: Sequence[Op]) -> Builtin | None:
    """The parameter-free built-in the program computes on the grid, if any."""
    x, refs = _references()
    values = run_program(program, x)
    for builtin, ref in refs:
        if _same(values, ref):
            return builtin
    return None


def recognize(node: Node, program: Sequence[Op]) -> Builtin | None:
    """(name, parameter) of the built-in activation an expression spells out, or None."""
    found = _swish(node) or numeric_match(program)
    if found is not None and found[1] is not None and not math.isfinite(found[1]):
        return None
    return found

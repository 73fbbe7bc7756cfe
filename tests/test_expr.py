"""Expression activations: parsing and folding, canonical text, the compiled program (checked against
the expression's float64 value), the native budget, and built-ins spelled out as expressions."""

from __future__ import annotations

import math
import random
from typing import Any, Callable

import numpy as np
import pytest

from llama_rewire import _core
from llama_rewire.errors import ActivationSpecError, ExpressionError
from llama_rewire.eval.sweep import sweep_act
from llama_rewire.wiring import ACT_EXPR, Activation, parse, parse_activation
from llama_rewire.wiring.expr import canonical_expression, parse_expression
from llama_rewire.wiring.program import (
    EXPR_OPS,
    MAX_NODES,
    check_budget,
    compile_expression,
    compile_tree,
    op,
    program_cost,
    run_program,
)

INF = math.inf


# ---------------------------------------------------------------- an independent float64 evaluator

def _np_softplus(t: np.ndarray) -> np.ndarray:
    return np.where(t > 20.0, t, np.logaddexp(0.0, t))


def _np_sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


NAMESPACE: dict[str, Any] = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh, "sigmoid": _np_sigmoid,
    "relu": lambda t: np.maximum(t, 0.0), "silu": lambda t: t * _np_sigmoid(t), "softplus": _np_softplus,
    "gelu": lambda t: 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
    "sin": np.sin, "cos": np.cos, "step": lambda t: np.where(t > 0, 1.0, 0.0), "clamp": np.clip,
    "min": np.minimum, "max": np.maximum, "pi": math.pi, "e": math.e,
}


def reference(text: str) -> Callable[[np.ndarray], np.ndarray]:
    """The expression as numpy code (test-only: the texts are this file's own literals)."""
    code = compile(text.replace("^", "**"), "<expr>", "eval")
    return lambda x: np.asarray(eval(code, {"__builtins__": {}}, {**NAMESPACE, "x": x}), dtype=np.float64)


GRID = np.concatenate([np.linspace(-8.0, 8.0, 1601), [-300.0, -30.0, 30.0, 300.0]])


# ---------------------------------------------------------------- the op table

def test_op_table_is_the_native_one() -> None:
    names = ["x", "dup", "affine", "add", "sub", "mul", "div", "rdiv", "max", "min", "clamp", "sqr", "sqrt",
             "exp", "log", "abs", "neg", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus", "sin", "cos",
             "step"]
    assert {n: i for i, n in enumerate(names)} == EXPR_OPS
    if hasattr(_core, "EXPR_OPS"):  # once the extension is rebuilt
        assert dict(_core.EXPR_OPS) == EXPR_OPS
        assert _core.ACT_EXPR == ACT_EXPR == 17
    assert ACT_EXPR == 17 and MAX_NODES == 24


# ---------------------------------------------------------------- parsing, folding, canonical text

@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("x * sigmoid( 1.5 * x )", "x*sigmoid(1.5*x)"),
        ("0.5*x*(1+tanh(0.8*x))", "0.5*x*(1+tanh(0.8*x))"),
        ("max(0, x)^2", "max(x,0)^2"),
        ("clamp(x, -3, 3)", "clamp(x,-3,3)"),
        ("x**2", "x^2"),
        ("X^2", "x^2"),
        ("x/2", "x/2"),
        ("x*2", "2*x"),
        ("2*(3*x)", "6*x"),
        ("(x+1)-3", "x-2"),
        ("x+(-2)", "x-2"),
        ("x-(-2)", "x+2"),
        ("x - -sin(x)", "x+sin(x)"),
        ("--x", "x"),
        ("+x", "x"),
        ("sqrt(2/pi)*x", "0.7978845608028654*x"),
        ("2^3*x", "8*x"),
        ("(x^2)^3", "x^6"),
        ("x^2^2", "x^4"),
        ("x^1 + 0", "x"),
        ("1*x/1", "x"),
        ("1e-3*x", "0.001*x"),
        ("2.5E+2*x", "250*x"),
        (".5*x", "0.5*x"),
        ("-(x+1)", "-(x+1)"),
        ("-x^2", "-x^2"),
        ("(-x)^2", "(-x)^2"),
        ("x-(x-1)", "x-(x-1)"),
        ("x/(x/2)", "x/(x/2)"),
        ("min(1, x)", "min(x,1)"),
        ("max(x, 2*3)", "max(x,6)"),
        ("x^-2", "x^-2"),
        ("exp(-x)", "exp(-x)"),
        ("e*x", "2.718281828459045*x"),
        ("x*(1+1e-20)", "x"),
        ("-0.5*x", "-0.5*x"),
        ("x*-0.5", "-0.5*x"),
        ("x/-2", "x/-2"),
        ("clamp(x, 1, 1) + x", "1+x"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert canonical_expression(text) == canonical
    assert canonical_expression(canonical) == canonical
    assert parse_expression(canonical) == parse_expression(text)


EXPRESSIONS = [
    "x*sigmoid(1.5*x)", "0.5*x*(1+tanh(0.8*x))", "max(x,0)^2", "clamp(x,-3,3)", "x*tanh(x)", "x^3-x",
    "(x+1)^3", "x^-2", "1/(1+x^2)", "2/x", "x/(1+abs(x))", "exp(-x^2)", "-x^5+x^7/7", "min(x,tanh(x))",
    "max(sin(x),cos(x))", "max(x,-1)", "min(x,0.5)", "step(x)*x", "sqrt(abs(x))", "log(1+x^2)",
    "softplus(2*x)/2", "gelu(x)-silu(x)", "relu(x-1)+relu(-x-1)", "3-x", "-(x-1)*(x+1)", "x^6", "x^-3",
    "x/3+1", "(x+1)/(x-1)", "exp(x/4)", "sin(3*x)^2", "1-x-x^2", "-x-1",
]


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_the_program_computes_the_expression(text: str) -> None:
    with np.errstate(all="ignore"):
        want = reference(text)(GRID)
    got = run_program(compile_expression(text), GRID)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    again = run_program(compile_expression(canonical_expression(text)), GRID)
    np.testing.assert_array_equal(again, got)


def test_canonical_text_is_a_fixed_point_on_random_expressions() -> None:
    rng = random.Random(7)
    functions = ["exp", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus", "sin", "abs", "step"]

    def gen(depth: int) -> str:
        r = rng.random()
        if depth == 0 or r < 0.2:
            return rng.choice(["x", "x", "0", "1", "2", "-1", "0.5", "-2.5", "pi"])
        if r < 0.45:
            return f"({gen(depth - 1)}{rng.choice('+-*/')}{gen(depth - 1)})"
        if r < 0.55:
            return f"-{gen(depth - 1)}"
        if r < 0.65:
            return f"({gen(depth - 1)})^{rng.choice([2, 3, -1, -2, 0, 1])}"
        if r < 0.75:
            return f"{rng.choice(['min', 'max'])}({gen(depth - 1)},{gen(depth - 1)})"
        if r < 0.8:
            return f"clamp({gen(depth - 1)},-1,2)"
        return f"{rng.choice(functions)}({gen(depth - 1)})"

    checked = 0
    for _ in range(3000):
        text = gen(4)
        try:
            canonical = canonical_expression(text)
        except ExpressionError:
            continue
        assert canonical_expression(canonical) == canonical, text
        assert parse_expression(canonical) == parse_expression(text), text
        checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("text", "program"),
    [
        ("x+1", [op("x"), op("affine", 1, 1)]),
        ("1+x", [op("x"), op("affine", 1, 1)]),
        ("3-x", [op("x"), op("affine", -1, 3)]),
        ("x-3", [op("x"), op("affine", 1, -3)]),
        ("x/4", [op("x"), op("affine", 0.25, 0)]),
        ("2/x", [op("x"), op("rdiv", 2)]),
        ("max(x,1)", [op("x"), op("clamp", 1, INF)]),
        ("max(1,x)", [op("x"), op("clamp", 1, INF)]),
        ("min(x,1)", [op("x"), op("clamp", -INF, 1)]),
        ("clamp(x,-3,3)", [op("x"), op("clamp", -3, 3)]),
        ("x^2", [op("x"), op("sqr")]),
        ("x^-2", [op("x"), op("sqr"), op("rdiv", 1)]),
        ("x^3", [op("x"), op("dup"), op("sqr"), op("mul")]),
        ("x^5", [op("x"), op("dup"), op("sqr"), op("sqr"), op("mul")]),
        ("x^7", [op("x"), op("dup"), op("dup"), op("sqr"), op("mul"), op("sqr"), op("mul")]),
        ("-x", [op("x"), op("neg")]),
        ("-(-x+1)", [op("x"), op("affine", 1, -1)]),
        ("2*(x+1)", [op("x"), op("affine", 2, 2)]),
        ("-(x+1)", [op("x"), op("affine", -1, -1)]),
        ("(x+1)-1", [op("x")]),
        ("x*tanh(x)", [op("x"), op("x"), op("tanh"), op("mul")]),
        ("max(x,tanh(x))", [op("x"), op("x"), op("tanh"), op("max")]),
        ("x-sin(x)", [op("x"), op("x"), op("sin"), op("sub")]),
        ("x/exp(x)", [op("x"), op("x"), op("exp"), op("div")]),
    ],
)
def test_compiled_programs(text: str, program: list[tuple[int, float, float]]) -> None:
    assert list(compile_tree(parse_expression(text))) == program


def test_program_costs() -> None:
    assert program_cost(compile_expression("x*tanh(x)")) == (2, 2, 4)  # (nodes, stack, ops)
    assert program_cost(compile_expression("2/x")) == (2, 1, 2)  # rdiv: fill, div
    assert program_cost(compile_expression("max(x,tanh(x))")) == (4, 2, 4)  # max: sub, relu, add
    assert program_cost(compile_expression("x^7")) == (4, 3, 7)  # x and dup cost no node


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*".join(["sin(x)"] * 13), "needs 25 graph nodes; the budget is 24"),
        ("x*(" * 9 + "x" + ")" * 9, "needs a stack of 10 values; the limit is 8"),
        ("+".join(["x"] * 25), "compiles to 49 ops; the limit is 48"),
    ],
)
def test_budget(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(")):
        parse_activation(text)
    with pytest.raises(ExpressionError, match=message):
        compile_expression(text)
    check_budget(compile_expression("*".join(["sin(x)"] * 12)))  # 24 nodes: fits


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x^0.5", "non-integer power 0.5"),
        ("x^x", "the exponent must be a constant"),
        ("x^2000", "power 2000 is too large"),
        ("2*3", "the expression is constant"),
        ("pi+e", "the expression is constant"),
        ("0*x", "the expression is constant"),
        ("x+y", "unknown name 'y' at position 2"),
        ("foo(x)", "unknown name 'foo'"),
        ("2x", r"unexpected 'x' at position 1 \(write \* for a product\)"),
        ("x x", "unexpected 'x'"),
        ("x # 2", "unexpected '#' at position 2"),
        ("x*", "unexpected end of expression"),
        ("(x", "expected '\\)', found the end"),
        ("x)", "unexpected '\\)'"),
        ("sqrt x", "needs its argument in parentheses"),
        ("tanh(x, 1)", "tanh takes 1 argument, got 2"),
        ("max(x)", "max takes 2 arguments, got 1"),
        ("clamp(x, x, 1)", "clamp needs constant bounds"),
        ("clamp(x, 3, -3)", "clamp bounds go backwards"),
        ("x/0", "division by zero"),
        ("x/(1-1)", "division by zero"),
        ("x/(x-x)*0+1/0*x", "division by zero"),
        ("log(-1)*x", r"cannot fold log\(-1\)"),
        ("exp(1000)*x", r"cannot fold exp\(1000\)"),
        ("1e400*x", "not finite"),
        ("1e30*1e30*x", "does not fit in float32"),
    ],
)
def test_bad_expressions(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        parse_activation(text, where="layer '3'")
    with pytest.raises(ValueError, match=r"^layer '3': expression "):
        parse_activation(text, where="layer '3'")


# ---------------------------------------------------------------- built-ins spelled out

@pytest.mark.parametrize(
    ("text", "builtin"),
    [
        ("x", "identity"),
        ("x*sigmoid(x)", "silu"),
        ("sigmoid(x)*x", "silu"),
        ("silu(x)", "silu"),
        ("x/(1+exp(-x))", "silu"),
        ("x*sigmoid(1*x)", "silu"),
        ("x*sigmoid(1.5*x)", "swish(1.5)"),
        ("x*sigmoid(x*1.5)", "swish(1.5)"),
        ("sigmoid(x/2)*x", "swish(0.5)"),
        ("x*sigmoid(-x)", "swish(-1)"),
        ("x*sigmoid(1.702*x)", "gelu_quick"),
        ("relu(x)", "relu"),
        ("max(x,0)", "relu"),
        ("max(0,x)", "relu"),
        ("(x+abs(x))/2", "relu"),
        ("relu(x)^2", "relu2"),
        ("max(x,0)^2", "relu2"),
        ("gelu(x)", "gelu"),
        ("0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))", "gelu"),
        ("x*(1+tanh(0.7978845608028654*x*(1+0.044715*x*x)))/2", "gelu"),
        ("tanh(x)", "tanh"),
        ("sigmoid(x)", "sigmoid"),
        ("softplus(x)", "softplus(1)"),
        ("x*tanh(softplus(x))", "mish"),
        ("x*clamp((x+3)/6,0,1)", "hardswish"),
        ("clamp(x/6+0.5,0,1)", "hardsigmoid"),
        ("max(x,0.01*x)", "leaky_relu(0.01)"),
        ("x*sigmoid(x)@0.05", "silu@0.05"),
        ("max(x,0)@0.1", "relu@0.1"),
    ],
)
def test_builtins_spelled_out_become_the_builtin(text: str, builtin: str) -> None:
    act = parse_activation(text)
    assert not act.is_expression
    assert act == parse_activation(builtin)


@pytest.mark.parametrize(
    "text",
    [
        "clamp(x,-100,100)",  # the identity near zero, not in the tails
        "gelu(x)+1e-7",
        "x*sigmoid(x+1)",
        "0.5*x*(1+tanh(0.8*x))",
        "0.5*x*(1+tanh(0.79788*(x+0.044715*x^3)))",  # gelu's constant, rounded
        "max(x,0.02*x)",
        "log(1+exp(x))",  # overflows where softplus does not
        "x*tanh(x)",
    ],
)
def test_near_misses_stay_expressions(text: str) -> None:
    act = parse_activation(text)
    assert act.is_expression and act.name == "expr"
    assert str(act) == canonical_expression(text)


# ---------------------------------------------------------------- expression activations

def test_an_expression_is_an_activation() -> None:
    act = parse_activation("x * tanh(x) @ 0.1")
    assert act == Activation("expr", None, 0.1, "x*tanh(x)")
    assert str(act) == "x*tanh(x)@0.1"
    assert act.type_id == ACT_EXPR
    assert act.program == compile_expression("x*tanh(x)")
    assert act.native_act() == (ACT_EXPR, 0.0, 0.1, [op("x"), op("x"), op("tanh"), op("mul")])
    assert Activation("expr", expr="x * tanh(x)").expr == "x*tanh(x)"  # canonical on construction
    assert parse_activation(str(act)) == act
    assert parse_activation({"expr": "x*tanh(x)", "threshold": 0.1}) == act
    assert parse_activation({"name": "expr", "expr": "x*tanh(x)", "threshold": 0.1}) == act
    assert parse_activation({"expr": "x*sigmoid(x)"}) == Activation("silu")
    assert Activation("relu").native_act() == (Activation("relu").type_id, 0.0, 0.0, [])
    with pytest.raises(ActivationSpecError, match="needs the wiring form"):
        act.native()
    with pytest.raises(ActivationSpecError, match="needs its expression"):
        Activation("expr")
    with pytest.raises(ActivationSpecError, match="an expression dict is"):
        parse_activation({"expr": "x", "beta": 2})


def test_expressions_in_activation_specs() -> None:
    table = parse("0:x*tanh(x), 1:clamp(x,-3,3), 2:x*sigmoid(1.5*x), 3:max(x,0)^2@0.5", 5)
    assert [str(a) for a in table] == ["x*tanh(x)", "clamp(x,-3,3)", "swish(1.5)", "relu2@0.5", "default"]
    expected = [parse_activation("min(x,1)")] * 2 + [Activation("identity")]
    assert parse({"0-1": "min(x, 1)", "*": "x"}, 3) == expected
    assert parse_activation("tanh(x)") == Activation("tanh")  # a name with x as its argument
    assert parse_activation("leaky_relu(-0.05)") == Activation("leaky_relu", -0.05)  # not an expression
    with pytest.raises(ValueError, match=r"layer '0': expression 'x\^0\.5'"):
        parse("0:x^0.5", 2)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        parse("0:swishy", 2)


def test_a_sweep_takes_an_expression() -> None:
    act, text = sweep_act("x*tanh(x)")
    assert act.is_expression and text == "x*tanh(x)"
    assert sweep_act("x*sigmoid(x)")[0] == Activation("silu")


def test_run_program_keeps_a_float_dtype_and_checks_the_stack() -> None:
    x32 = np.linspace(-2, 2, 9, dtype=np.float32)
    assert run_program(compile_expression("x*tanh(x)"), x32).dtype == np.float32
    assert run_program([op("x")], [1, 2]).dtype == np.float64
    with pytest.raises(ValueError, match="leaves 2"):
        run_program([op("x"), op("x")], GRID)

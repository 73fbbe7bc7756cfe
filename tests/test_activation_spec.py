"""Parsing activation specs: every accepted form, and a clear ValueError for each bad one."""

from __future__ import annotations

import pytest

from llama_rewire.wiring import DEFAULT, Activation, format_table, parse, parse_activation


def names(table: list[Activation]) -> list[str]:
    return [str(a) for a in table]


def test_string_form_with_ranges_params_and_star() -> None:
    table = parse("0-2:relu, 4:leaky_relu(0.05), *:gelu", 6)
    assert names(table) == ["relu", "relu", "relu", "gelu", "leaky_relu(0.05)", "gelu"]


def test_later_entries_override_earlier_ones() -> None:
    assert names(parse("0-3:relu, 2:mish", 4)) == ["relu", "relu", "mish", "relu"]
    assert names(parse("2:mish, 0-3:relu", 4)) == ["relu"] * 4


def test_dict_form_keys() -> None:
    table = parse({0: "relu", range(1, 3): "tanh", "3-4": {"name": "swish", "beta": 1.5}, -1: "sigmoid"}, 6)
    assert names(table) == ["relu", "tanh", "tanh", "swish(1.5)", "swish(1.5)", "sigmoid"]


def test_negative_indices_count_from_the_last_layer() -> None:
    assert names(parse("-1:relu", 3)) == ["default", "default", "relu"]
    assert names(parse({"-3..-2": "relu"}, 3)) == ["relu", "relu", "default"]


def test_defaults_of_parametric_activations() -> None:
    assert parse_activation("leaky_relu") == Activation("leaky_relu", 0.01)
    assert parse_activation("elu") == Activation("elu", 1.0)
    assert parse_activation({"name": "softplus"}) == Activation("softplus", 1.0)
    assert parse_activation({"name": "leaky_relu", "negative_slope": 0.2}) == Activation("leaky_relu", 0.2)


def test_empty_specs_restore_every_layer() -> None:
    assert parse(None, 3) == [DEFAULT] * 3
    assert parse({}, 3) == [DEFAULT] * 3
    assert parse("", 3) == [DEFAULT] * 3
    assert names(parse("relu", 2)) == ["relu", "relu"]


def test_format_table_round_trips() -> None:
    table = parse("0-2:relu, 4:leaky_relu(0.05), 5:gelu", 6)
    assert format_table(table) == "0-2:relu, 4:leaky_relu(0.05), 5:gelu"
    assert parse(format_table(table), 6) == table


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:swishy", "unknown activation 'swishy'"),
        ("7:relu", "layer 7 is out of range"),
        ("-9:relu", "layer -9 is out of range"),
        ("0-9:relu", "out of range"),
        ("3-1:relu", "range goes backwards"),
        ("x:relu", "a layer key is"),
        (":relu", "missing layer"),
        ("0:leaky_relu(abc)", "must be a number"),
        ("0:leaky_relu(nan)", "must be finite"),
        ("0:swish(inf)", "must be finite"),
        ("0:elu(-1)", "alpha must be >= 0"),
        ("0:softplus(0)", "beta must be > 0"),
        ("0:relu(2)", "relu takes no parameter"),
        ("0:relu((", "cannot parse"),
        ({0: {"name": "swish", "gamma": 2}}, "unknown parameter"),
        ({0: {"name": "swish", "beta": "x"}}, "must be a number"),
        ({0: {"beta": 2}}, "needs a 'name'"),
        ({0: 3.5}, "an activation is a name or a dict"),
        ({1.5: "relu"}, "a layer key is"),
        ({True: "relu"}, "not a layer"),
        ({range(2, 2): "relu"}, "empty range"),
        (42, "an activation spec is a dict or a string"),
    ],
)
def test_bad_specs_raise_value_error_naming_the_part(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(spec, 4)  # type: ignore[arg-type]

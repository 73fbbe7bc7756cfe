"""The wiring spec language: every knob in string, dict and profile form, the resolution order,
canonical strings and dicts, the native form, layout checks and their messages, and the old import
paths. No model is needed: layouts are made by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llama_rewire
from llama_rewire import wiring as wiring_pkg
from llama_rewire.errors import ActivationSpecError, WiringSpecError
from llama_rewire.wiring import (
    ACT_EXPR,
    DEFAULT,
    Activation,
    LayerInfo,
    LayerWiring,
    Wiring,
    describe_layout,
    format_table,
    parse,
    parse_activation,
    parse_wiring,
)
from llama_rewire.wiring.program import op

ATTN = LayerInfo(n_head=4, n_head_kv=2)
MOE = LayerInfo.moe(8, 2, n_head=4, shared=True)
# layers 0-3 dense, 4-7 MoE with a shared expert (8 experts, k = 2)
LAYOUT = [ATTN] * 4 + [MOE] * 4
# 0 recurrent (no attention), 1 KV read by later layers, 2 attention without FFN, 3 routed experts only
ODD = [LayerInfo(attn=False, recurrent=True, n_head=0), LayerInfo(n_head=4, kv_reused=True),
       LayerInfo(n_head=4, dense=False), LayerInfo.moe(4, 2, n_head=4, max_experts_used=3)]


def act(text: str) -> Activation:
    return parse_activation(text)


def layer(**kw: Any) -> LayerWiring:
    """A LayerWiring; act=... sets every scope."""
    a = kw.pop("act", None)
    if a is not None:
        kw.update(act_dense=act(a), act_shared=act(a), act_experts=act(a))
    return LayerWiring(**kw)


IDENT = LayerWiring()


# ---------------------------------------------------------------- knobs, one at a time

@pytest.mark.parametrize(
    ("spec", "il", "expected"),
    [
        ("5:relu", 5, layer(act="relu")),
        ("5:act=relu", 5, layer(act="relu")),
        ("5:act=leaky_relu(0.05)@0.1", 5, layer(act="leaky_relu(0.05)@0.1")),
        ("0:act.dense=relu", 0, layer(act="relu")),  # a dense layer's one scope is its act
        ("5:act.shared=relu", 5, layer(act_shared=act("relu"))),
        ("5:act.experts=silu@0.05", 5, layer(act_experts=act("silu@0.05"))),
        ("5:act.experts=x*tanh(x)", 5, layer(act_experts=act("x*tanh(x)"))),
        ("5:x*sigmoid(1.5*x)", 5, layer(act="swish(1.5)")),
        ("5:skip=attn", 5, layer(skip_attn=True)),
        ("5:skip=ffn", 5, layer(skip_ffn=True)),
        ("5:skip=layer", 5, layer(skip_attn=True, skip_ffn=True)),
        ("5:skip=LAYER", 5, layer(skip_attn=True, skip_ffn=True)),
        ("5:skip=none", 5, IDENT),
        ("5:attn_scale=0.5", 5, layer(attn_scale=0.5)),
        ("5:ffn_scale=-2", 5, layer(ffn_scale=-2.0)),
        ("5:ffn_scale=1e-3", 5, layer(ffn_scale=0.001)),
        ("5:heads_off=[0,3]", 5, layer(heads_off=(0, 3))),
        ("5:heads_off=[3, 0, 3]", 5, layer(heads_off=(0, 3))),
        ("5:heads_off=2", 5, layer(heads_off=(2,))),
        ("5:heads_off=[0-2]", 5, layer(heads_off=(0, 1, 2))),
        ("5:heads_off=[]", 5, IDENT),
        ("5:experts_used=1", 5, layer(experts_used=1)),
        ("5:experts_used=default", 5, IDENT),
        ("5:experts_used=2", 5, IDENT),  # the model's own k
        ("5:experts_off=[1,6]", 5, layer(experts_off=(1, 6))),
        ("5:experts_off=[0..3]", 5, layer(experts_off=(0, 1, 2, 3))),
        (" 5 : ffn_scale = 0.25 ", 5, layer(ffn_scale=0.25)),
    ],
)
def test_each_knob(spec: str, il: int, expected: LayerWiring) -> None:
    w = parse_wiring(spec, LAYOUT)
    assert w[il] == expected
    assert all(w[i] == IDENT for i in range(8) if i != il)


def test_the_example_of_the_spec_language() -> None:
    spec = ("*:gelu, 0-3:ffn_scale=0.5, 2:skip=ffn, 3:skip=layer, 5:heads_off=[0,3], *:experts_used=1, "
            "6:act.experts=relu, 7:x*sigmoid(1.5*x)")
    w = parse_wiring(spec, LAYOUT)
    gelu = act("gelu")
    assert w[0] == layer(act="gelu", ffn_scale=0.5)
    assert w[2] == layer(act="gelu", ffn_scale=0.5, skip_ffn=True)
    assert w[3] == layer(act="gelu", ffn_scale=0.5, skip_attn=True, skip_ffn=True)
    assert w[4] == layer(act="gelu", experts_used=1)
    assert w[5] == layer(act="gelu", experts_used=1, heads_off=(0, 3))
    # the dense scope, absent in an MoE layer, reads default where the present scopes differ
    assert w[6] == LayerWiring(DEFAULT, gelu, act("relu"), experts_used=1)
    assert w[7] == layer(act="swish(1.5)", experts_used=1)
    assert str(w) == ("0-5:gelu, 7:swish(1.5), 6:act.shared=gelu, 6:act.experts=relu, 2:skip=ffn, "
                      "3:skip=layer, 0-3:ffn_scale=0.5, 5:heads_off=[0,3], 4-7:experts_used=1")


def test_layer_keys() -> None:
    for spec in ("-1:relu", "7:relu", "7..7:relu", "6..-1:act.experts=relu, 6:act.experts=default"):
        assert parse_wiring(spec, LAYOUT)[7].act_experts == act("relu"), spec
    assert [w.ffn_scale for w in parse_wiring("2-4:ffn_scale=3", 8)] == [1, 1, 3, 3, 3, 1, 1, 1]
    assert [w.ffn_scale for w in parse_wiring("ffn_scale=3", 3)] == [3, 3, 3]  # no key: every layer
    commas = parse_wiring("0:heads_off=[0,1], 1:clamp(x,-3,3); 2:max(x,0)^2", 3)
    assert [str(w.act) for w in commas] == ["default", "clamp(x,-3,3)", "relu2"]
    assert commas[0].heads_off == (0, 1)


# ---------------------------------------------------------------- resolution

def test_star_entries_come_first_then_the_rest_in_order() -> None:
    w = parse_wiring("3:ffn_scale=2, *:ffn_scale=0.5, 3:ffn_scale=4, 1-3:ffn_scale=8", 5)
    assert [x.ffn_scale for x in w] == [0.5, 8, 8, 8, 0.5]
    w = parse_wiring("1:skip=attn, 1:skip=ffn", 2)  # per knob: the later skip replaces the earlier
    assert w[1].skip == "ffn"
    w = parse_wiring("*:skip=layer, 0:skip=none", 2)
    assert [x.skip for x in w] == ["none", "layer"]


def test_act_sets_every_scope_and_a_scope_overrides_it() -> None:
    w = parse_wiring("5:gelu, 5:act.experts=relu", LAYOUT)
    assert w[5].acts == (DEFAULT, act("gelu"), act("relu"))
    w = parse_wiring("5:act.experts=relu, 5:gelu", LAYOUT)  # a later act replaces the scopes
    assert w[5].act == act("gelu")
    w = parse_wiring("*:act.experts=relu, 5:tanh", LAYOUT)
    assert w[4].acts == (DEFAULT, DEFAULT, act("relu")) and w[5].act == act("tanh")
    w = parse_wiring("0:act.dense=relu", LAYOUT)  # a dense layer: its one scope is the layer's act
    assert w[0].act == act("relu") and str(w) == "0:relu" and w.activations[0] == act("relu")
    w = parse_wiring("0:act.dense=relu", 8)  # without a layout every scope is kept apart
    assert w[0].acts == (act("relu"), DEFAULT, DEFAULT) and str(w) == "0:act.dense=relu"
    with pytest.raises(WiringSpecError, match="layer 0: its FFN scopes run different activations"):
        _ = w.activations
    assert w.scope_activations("dense")[0] == act("relu")
    assert w.act_texts() == ["act.dense=relu", "default"] + ["default"] * 6
    assert parse_wiring("6:gelu, 6:act.experts=x*tanh(x)", LAYOUT).act_texts()[5:7] == \
        ["default", "act.shared=gelu act.experts=x*tanh(x)"]


def test_star_entries_skip_the_layers_without_the_part() -> None:
    w = parse_wiring("*:experts_used=1, *:act.experts=relu, *:heads_off=[1]", ODD)
    assert w[3] == LayerWiring(act("relu"), act("relu"), act("relu"), heads_off=(1,), experts_used=1)
    assert [x.heads_off for x in w] == [(), (1,), (1,), (1,)]
    assert w[0].experts_used is None
    w = parse_wiring("*:relu, *:ffn_scale=2, *:skip=ffn", ODD)
    assert [str(x.act) for x in w] == ["relu", "relu", "default", "relu"]
    assert [x.skip for x in w] == ["ffn", "ffn", "none", "ffn"]


def test_a_layer_count_checks_the_syntax_only() -> None:
    w = parse_wiring("0:heads_off=[99], 1:experts_used=64, 2:act.experts=relu, 0:skip=layer", 3)
    assert w[0].heads_off == (99,) and w[1].experts_used == 64
    assert w.layout is None


# ---------------------------------------------------------------- dict and profile forms

DICT_SPEC: dict[Any, Any] = {
    "*": "gelu",
    "0-3": {"ffn_scale": 0.5},
    "2": {"skip": "ffn"},
    5: {"heads_off": [0, 3], "act": "relu", "experts_off": [7]},
    range(6, 8): {"act": {"experts": "x*tanh(x)", "shared": {"name": "swish", "beta": 2}}},
    "-1": {"experts_used": 1, "attn_scale": "0.25"},
}
STRING_SPEC = ("*:gelu, 0-3:ffn_scale=0.5, 2:skip=ffn, 5:heads_off=[0,3], 5:relu, 5:experts_off=[7], "
               "6-7:act.experts=x*tanh(x), 6..7:act.shared=swish(2), -1:experts_used=1, -1:attn_scale=0.25")


def test_dict_form_equals_string_form() -> None:
    assert parse_wiring(DICT_SPEC, LAYOUT) == parse_wiring(STRING_SPEC, LAYOUT)
    assert parse_wiring({"5": {"act.experts": "relu"}}, LAYOUT) == parse_wiring("5:act.experts=relu", LAYOUT)
    assert parse_wiring({"*": {}}, 2).is_identity()


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_profiles_round_trip(tmp_path: Path, suffix: str) -> None:
    w = parse_wiring(STRING_SPEC, LAYOUT)
    path = w.save(tmp_path / f"w{suffix}", model="tiny", target_sparsity=0.5)
    doc = wiring_pkg.load_profile(path)
    assert doc["version"] == 2 and doc["model"] == "tiny" and doc["wiring"] == w.to_dict()
    assert parse_wiring(path, LAYOUT) == w
    assert parse_wiring(str(path), LAYOUT) == w
    assert Wiring.parse(path, LAYOUT) == w


def test_profile_v2_layout(tmp_path: Path) -> None:
    w = parse_wiring("*:gelu, 0-3:ffn_scale=0.5, 5:heads_off=[0,3], 6:act.experts=relu", LAYOUT)
    text = w.save(tmp_path / "w.toml", model="m").read_text()
    assert text == (
        'format = "llama-rewire-profile"\nversion = 2\nmodel = "m"\n\n'
        '[wiring."0-3"]\nffn_scale = 0.5\n\n'
        '[wiring."0-5"]\nact = "gelu"\n\n'
        '[wiring."5"]\nheads_off = [0, 3]\n\n'
        '[wiring."6"]\n"act.shared" = "gelu"\n"act.experts" = "relu"\n\n'
        '[wiring."7"]\nact = "gelu"\n'
    )
    doc = json.loads(w.save(tmp_path / "w.json").read_text())
    assert doc["wiring"] == {"0-3": {"ffn_scale": 0.5}, "0-5": {"act": "gelu"}, "5": {"heads_off": [0, 3]},
                             "6": {"act.shared": "gelu", "act.experts": "relu"}, "7": {"act": "gelu"}}
    assert '    "5": {"heads_off": [0, 3]},\n' in (tmp_path / "w.json").read_text()  # a group a line


def test_hand_written_profiles(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text('version = 2\n[wiring."4-7"]\nact.experts = "relu"\nexperts_used = 1\n')
    assert str(parse_wiring(toml, LAYOUT)) == "4-7:act.experts=relu, 4-7:experts_used=1"
    as_string = tmp_path / "s.json"
    as_string.write_text(json.dumps({"format": "llama-rewire-profile", "version": 2, "wiring": "0:skip=ffn"}))
    assert parse_wiring(as_string, LAYOUT)[0].skip_ffn
    v1 = wiring_pkg.save_profile(tmp_path / "v1.toml", {"0": "silu@0.125", "1-2": "mish"})
    assert parse_wiring(v1, 3) == parse_wiring("0:silu@0.125, 1-2:mish", 3)
    assert parse(v1, 3) == parse("0:silu@0.125, 1-2:mish", 3)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 2, "activations": {"0": "relu"}}, "version 2\\) has no 'wiring' entry"),
        ({"version": 1, "wiring": {"0": "relu"}}, "no 'activations' entry"),
        ({"version": 2, "wiring": {}, "activations": {}}, "holds 'activations', which belongs to version 1"),
        ({"version": 3, "wiring": {}}, "version 3 is not one this llama-rewire reads"),
        ({"version": 2, "wiring": [1]}, "'wiring' must be a table or a string"),
        ({"thresholds": [1]}, "no 'activations' \\(version 1\\) or 'wiring'"),
    ],
)
def test_bad_profiles(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ActivationSpecError, match=message):
        parse_wiring(path, 3)
    with pytest.raises(ActivationSpecError, match="not a metadata key"):
        wiring_pkg.save_wiring_profile(tmp_path / "x.json", {}, version=3)


# ---------------------------------------------------------------- canonical forms

ROUND_TRIP = [
    "", "0-11:relu, 20:leaky_relu(0.05), 21-23:gelu", STRING_SPEC, "*:skip=layer",
    "0:x*tanh(x)@0.1, 1:clamp(x,-3,3), 2:0.5*x*(1+tanh(0.8*x))", "4-7:experts_off=[0-3,5], 1:heads_off=[1,3]",
    "0:ffn_scale=0.123456789, 1:attn_scale=1e-07, 2:silu@0.012345678901", "5:act.shared=relu",
    "*:experts_used=1, 4:experts_used=default", "0:relu, 1:relu, 2:tanh, 3:relu",
]


@pytest.mark.parametrize("spec", ROUND_TRIP)
@pytest.mark.parametrize("with_layout", [True, False])
def test_canonical_string_and_dict_round_trip(spec: str, with_layout: bool) -> None:
    layout: Any = [ATTN] * 4 + [MOE] * 20 if with_layout else 24
    w = parse_wiring(spec, layout)
    assert parse_wiring(str(w), layout) == w
    assert parse_wiring(w.to_dict(), layout) == w
    assert parse_wiring(json.loads(json.dumps(w.to_dict())), layout) == w
    assert str(parse_wiring(str(w), layout)) == str(w)


def test_an_activation_only_wiring_prints_as_format_table() -> None:
    for spec in ("0-2:relu, 4:leaky_relu(0.05), 5:gelu", "relu", "0:silu@0.05, 1:silu@0.1, *:mish", ""):
        w = parse_wiring(spec, 6)
        assert str(w) == format_table(w.activations) == format_table(parse(spec, 6))
    assert str(parse_wiring("*:gelu", 3)) == "0-2:gelu"


def test_identity_wiring() -> None:
    for spec in (None, "", {}, "*:default", "0:ffn_scale=1, 1:heads_off=[], 2:skip=none, 5:experts_used=2",
                 "4:act.experts=default"):
        w = parse_wiring(spec, LAYOUT)  # type: ignore[arg-type]
        assert w.is_identity() and str(w) == "" and w.native() == [] and w.to_dict() == {}
    assert Wiring.identity(LAYOUT) == parse_wiring(None, LAYOUT)
    assert not parse_wiring("0:ffn_scale=0.5", LAYOUT).is_identity()


# ---------------------------------------------------------------- native form

IDENT_ACTS = ((0, 0.0, 0.0, []), (0, 0.0, 0.0, []), (0, 0.0, 0.0, []))


def test_native_form() -> None:
    w = parse_wiring("0:skip=attn, 0:attn_scale=0.5, 1:heads_off=[3,1], 4:experts_used=1, "
                     "4:experts_off=[2,0], 5:experts_used=2, 6:act.experts=relu@0.5, 7:x*tanh(x)", LAYOUT)
    native = w.native()
    assert len(native) == 8
    relu = act("relu").type_id
    assert native[0] == (IDENT_ACTS, True, False, 0.5, 1.0, [], 0, [])
    assert native[1] == (IDENT_ACTS, False, False, 1.0, 1.0, [1, 3], 0, [])
    assert native[2] == (IDENT_ACTS, False, False, 1.0, 1.0, [], 0, [])
    assert native[4] == (IDENT_ACTS, False, False, 1.0, 1.0, [], 1, [0, 2])
    assert native[5] == (IDENT_ACTS, False, False, 1.0, 1.0, [], 0, [])  # the model's own k is sent as 0
    assert native[6][0] == ((0, 0.0, 0.0, []), (0, 0.0, 0.0, []), (relu, 0.0, 0.5, []))
    program = [op("x"), op("x"), op("tanh"), op("mul")]
    assert native[7][0] == ((ACT_EXPR, 0.0, 0.0, program),) * 3
    # built by hand, without normalisation: the layout still sends the model's own k as 0
    hand = Wiring(tuple([IDENT] * 4 + [LayerWiring(experts_used=2)] * 4), tuple(LAYOUT))
    assert hand.native()[4][6] == 0
    assert Wiring(hand.layers).native()[4][6] == 2


def test_with_activations_keeps_the_other_knobs() -> None:
    w = parse_wiring("0:ffn_scale=0.5, 6:act.experts=relu", LAYOUT)
    table = parse("0-3:tanh, 4:x*tanh(x)", 8)
    v = w.with_activations(table)
    assert v.activations == table and v[0].ffn_scale == 0.5
    assert str(v) == "0-3:tanh, 4:x*tanh(x), 0:ffn_scale=0.5"
    assert w.with_activations(["relu"] * 8)[6].act == act("relu")
    with pytest.raises(WiringSpecError, match="the table has 3 activations for 8 layers"):
        w.with_activations(table[:3])
    with pytest.raises(WiringSpecError, match="layer 2: act: the layer has no FFN"):
        Wiring.identity(ODD).with_activations(["relu"] * 4)


def test_bind_checks_a_wiring_against_a_layout() -> None:
    w = parse_wiring("4:experts_used=2, 0:act.dense=relu", 8)
    bound = w.bind(LAYOUT)
    assert bound.layout == tuple(LAYOUT) and str(bound) == "0:relu"
    assert parse_wiring(w, LAYOUT) == bound
    assert parse_wiring(bound, LAYOUT) is not bound and parse_wiring(bound, LAYOUT) == bound
    with pytest.raises(WiringSpecError, match="layer 0: experts_used: the layer has no routed experts"):
        parse_wiring("0:experts_used=1", 8).bind(LAYOUT)
    with pytest.raises(WiringSpecError, match="the wiring has 8 layers, the model 3"):
        parse_wiring(w, 3)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("skip=atn", "entry 'skip=atn': unknown skip 'atn' (none, attn, ffn, layer)"),
        ("0:ffn_scal=0.5", "entry '0:ffn_scal=0.5': unknown knob 'ffn_scal' (known: act, act.dense, "
                           "act.shared, act.experts, skip, attn_scale, ffn_scale, heads_off, experts_used, "
                           "experts_off); did you mean 'ffn_scale'?"),
        ("0:act.mlp=relu", "unknown knob 'act.mlp'"),
        ("0:ffn_scale=nan", "entry '0:ffn_scale=nan': ffn_scale must be a finite number, got 'nan'"),
        ("0:attn_scale=-inf", "attn_scale must be a finite number, got '-inf'"),
        ("0:attn_scale=1e39", "attn_scale 1e+39 does not fit in float32"),
        ("0:ffn_scale=half", "ffn_scale must be a number, got 'half'"),
        ("1:heads_off=[0,9]", "layer 1: heads_off: head 9 is out of range (the layer has 4 heads)"),
        ("1:heads_off=[0,x]", "heads_off: 'x' is not a head index"),
        ("1:heads_off=[-1]", "heads_off: head -1 is out of range (heads count from 0)"),
        ("1:heads_off=[3-1]", "range '3-1' goes backwards"),
        ("1:heads_off=[0", "unbalanced brackets"),
        ("5:experts_used=9", "layer 5: experts_used: k = 9 is out of range (1 to 8 for this layer)"),
        ("5:experts_used=0", "experts_used must be >= 1 (or 'default'), got 0"),
        ("5:experts_used=1.5", "experts_used is an integer k >= 1 or 'default'"),
        ("5:experts_off=[8]", "layer 5: experts_off: expert 8 is out of range (the layer has 8 experts)"),
        ("5:experts_off=[0-6]", "layer 5: experts_off: 7 of 8 experts off leave 1, fewer than the 2 used per "
                                "token (the model's own k)"),
        ("5:experts_used=4, 5:experts_off=[0-4]",
         "5 of 8 experts off leave 3, fewer than the 4 used per token"),
        ("0:experts_used=1", "layer 0: experts_used: the layer has no routed experts"),
        ("0-4:experts_off=[1]", "layer 0: experts_off: the layer has no routed experts"),
        ("0:act.experts=relu", "layer 0: act.experts: the layer has no routed experts"),
        ("0:act.shared=relu", "layer 0: act.shared: the layer has no shared expert"),
        ("4:act.dense=relu", "layer 4: act.dense: the layer has no dense FFN"),
        ("0:act=swishy", "entry '0:act=swishy': unknown activation 'swishy'"),
        ("0:swishy", "layer '0': unknown activation 'swishy'"),
        ("0:act.experts=x^0.5", "expression 'x\\^0.5': non-integer power 0.5"),
        ("9:relu", "layer 9 is out of range (the model has 8 layers)"),
        (":skip=ffn", "missing layer"),
        ("a:skip=ffn", "a layer key is"),
        (42, "a wiring spec is a dict, a string or a Wiring, got int"),
        ({"0": {"ffn_scal": 1}}, "layer '0': unknown knob 'ffn_scal'"),
        ({"0": {"act": {"mlp": "relu"}}}, "layer '0': act: unknown scope 'mlp' (dense, shared, experts)"),
        ({"0": {"skip": 3}}, "layer '0': unknown skip 3"),
        ({"1": {"heads_off": "abc"}}, "layer '1': heads_off: 'abc' is not a head index"),
        ({"1": {"heads_off": [True]}}, "heads_off: True is not a head index"),
        ({"1": {"heads_off": 1.5}}, "heads_off is a list of head indices"),
        ({"1": {"ffn_scale": True}}, "ffn_scale must be a number, got True"),
        ({"1": {"experts_used": "two"}}, "experts_used is an integer"),
        ({"0": {"beta": 2}}, "needs a 'name'"),
    ],
)
def test_bad_wirings(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=_escape(message)):
        parse_wiring(spec, LAYOUT)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:skip=attn", "layer 0: skip=attn: the layer has no attention (it is recurrent)"),
        ("0:attn_scale=2", "layer 0: attn_scale: the layer has no attention (it is recurrent)"),
        ("0:heads_off=[0]", "layer 0: heads_off: the layer has no attention"),
        ("1:skip=attn", "layer 1: skip=attn: later layers read this layer's KV cache, so its attention "
                        "cannot be skipped"),
        ("*:skip=layer", "layer 1: skip=layer: later layers read this layer's KV cache"),  # '*' skips 0
        ("0-3:skip=layer", "layer 0: skip=layer: the layer has no attention"),
        ("2:skip=ffn", "layer 2: skip=ffn: the layer has no FFN"),
        ("2:ffn_scale=0", "layer 2: ffn_scale: the layer has no FFN"),
        ("2:relu", "layer 2: act: the layer has no FFN"),
        ("3:experts_used=4", "layer 3: experts_used: k = 4 is out of range (1 to 3 for this layer)"),
        ("*:experts_off=[0-2]", "layer 3: experts_off: 3 of 4 experts off leave 1, fewer than the 2"),
        ("*:act.shared=relu", "entry '*:act.shared=relu': no layer of the model has a shared expert"),
    ],
)
def test_bad_wirings_for_odd_layers(spec: str, message: str) -> None:
    with pytest.raises(WiringSpecError, match=_escape(message)):
        parse_wiring(spec, ODD)


def test_no_layer_has_the_part() -> None:
    with pytest.raises(WiringSpecError, match="entry '\\*:experts_used=1': no layer of the model has routed"):
        parse_wiring("*:experts_used=1", [ATTN] * 3)
    with pytest.raises(WiringSpecError, match="layer '\\*': heads_off: no layer of the model has attention"):
        parse_wiring({"*": {"heads_off": [0]}}, [LayerInfo(attn=False)])
    with pytest.raises(ActivationSpecError, match="the model has no layers"):
        parse_wiring("relu", 0)


def _escape(message: str) -> str:
    return message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("?", r"\?") \
        .replace("*", r"\*").replace("+", r"\+")


# ---------------------------------------------------------------- activation specs stay as they were

def test_activation_specs_refuse_the_other_knobs() -> None:
    assert parse("0:act=relu, 1:act.dense=tanh, 1:act.shared=tanh, 1:act.experts=tanh", 2) == \
        [act("relu"), act("tanh")]
    with pytest.raises(ActivationSpecError, match="the spec sets ffn_scale, skip: an activation spec holds "
                                                  "activations only"):
        parse("0:ffn_scale=2, 1:skip=ffn, 1:relu", 2)
    with pytest.raises(ValueError, match="an activation spec is a dict or a string, got int"):
        parse(42, 2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- layouts

NATIVE_INFO = {"attn": True, "n_head": 8, "n_head_kv": 2, "recurrent": False, "kv_reused": False,
               "dense": False, "shared": True, "experts": True, "n_expert": 64, "n_expert_used": 6,
               "max_experts_used": 8, "attn_post_norm": True, "ffn_post_norm": False}


def test_layer_info_from_native() -> None:
    info = LayerInfo.from_native(NATIVE_INFO)
    assert info == LayerInfo(n_head=8, n_head_kv=2, dense=False, shared=True, experts=True, n_expert=64,
                             n_expert_used=6, max_experts_used=8, attn_post_norm=True)
    assert info.ffn and info.has_scope("shared") and not info.has_scope("dense")
    with pytest.raises(ValueError, match="lacks \\['n_head'\\]"):
        LayerInfo.from_native({k: v for k, v in NATIVE_INFO.items() if k != "n_head"})


def test_describe_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_rewire import _core

    calls: list[int] = []

    def describe(ctx: object, il: int) -> dict[str, Any]:
        calls.append(il)
        return NATIVE_INFO

    monkeypatch.setattr(_core, "rewire_layer_describe", describe, raising=False)
    monkeypatch.setattr(_core, "rewire_n_layer", lambda ctx: 3)
    layout = describe_layout(object())
    assert calls == [0, 1, 2] and layout == (LayerInfo.from_native(NATIVE_INFO),) * 3
    monkeypatch.delattr(_core, "rewire_layer_describe")
    with pytest.raises(RuntimeError, match="rebuild"):
        describe_layout(object())


def test_layouts_are_checked() -> None:
    with pytest.raises(TypeError, match="a sequence of LayerInfo"):
        parse_wiring("relu", [ATTN, {"attn": True}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got a bool"):
        parse_wiring("relu", True)


# ---------------------------------------------------------------- the package's names

def test_the_package_exports_the_wiring_names() -> None:
    assert llama_rewire.Wiring is Wiring and llama_rewire.parse_wiring is parse_wiring
    assert llama_rewire.WiringSpecError is WiringSpecError
    assert issubclass(WiringSpecError, ActivationSpecError)
    assert llama_rewire.parse is parse and llama_rewire.Activation is Activation

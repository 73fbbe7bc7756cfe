"""Every ggml op our graph code builds, checked against what each GPU backend takes.

ggml's scheduler runs a node that a backend's ``supports_op`` refuses on the CPU instead, silently, and
splits the graph around it: a rewired model on a GPU would then copy activations to the host and back in
every layer. ``Llama.graph_nodes`` lists the nodes of the graph a decode would run, with their input types
and contiguity, without computing it. For every activation, threshold, expression op, knob and residual
edit, on every tiny architecture, the nodes that the rewiring adds to the model's own graph are checked
against the CUDA, Metal and Vulkan rules of tests/gpu_support.py (read from those backends' sources at the
vendored commit): a node any of them would refuse is a failure, and so is one that reaches a CUDA kernel
assert (which aborts instead of falling back).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from gpu_support import BACKENDS, cuda_kernel_asserts, supported

from llama_rewire import Llama, _core
from llama_rewire.wiring.activations import NAMES

KINDS = ("llama", "gpt2", "phi3", "gemma3", "moe", "moe_shared", "moe_merged")
MOE = ("moe", "moe_shared", "moe_merged")
BATCHES = (1, 0)  # a single-token step, and the worst case (the prompt batch over every sequence)

# every built-in on every layer; thresholds (CATS-style) on a few
ACTS = [f"*:{name}" for name in NAMES if name not in ("none", "expr")]
THRESHOLDS = ["*:relu@0.1", "*:silu@0.05", "*:gelu@0.2", "0:x*tanh(x)@0.1"]
# expressions that use every op of the expression language between them (each within the node budget)
EXPRS = [
    "*:exp(-abs(x))*x + log(1 + x^2)",
    "*:sqrt(abs(x)) - 1/(1 + abs(x))",
    "*:max(x, 0.1*x) + min(x, 0) * 0.5",
    "*:clamp(x, -2, 2) * sigmoid(1.5*x) + tanh(x)",
    "*:relu(x) + gelu(x) - silu(x) + softplus(x)",
    "*:sin(x) + cos(x) * step(x) - x/3",
]
KNOBS = [
    "0:skip=attn", "1:skip=ffn", "-1:skip=layer", "0:attn_scale=0.4", "*:ffn_scale=1.7", "0:heads_off=[1,3]",
    "*:relu, 0:ffn_scale=0.5, 0:heads_off=[2], -1:skip=attn, 1:x*sigmoid(1.5*x), 1:attn_scale=2",
]
ROUTING = ["*:experts_used=1", "1:experts_used=3, 1:experts_off=[2]", "0:experts_off=[0,1]",
           "0:act.experts=relu", "*:gelu, 0:experts_used=1, 1:experts_off=[3], 0:act.experts=x^2"]
SHARED = ["*:act.shared=relu", "*:tanh, 0:act.shared=relu, 1:act.experts=mish"]
DENSE = ["0:act.dense=relu2, 1:act.dense=x*sigmoid(1.5*x)"]


def wirings(kind: str) -> list[str]:
    out = ACTS + THRESHOLDS + EXPRS + KNOBS
    out += ROUTING if kind in MOE else DENSE
    if kind in ("moe_shared", "moe_merged"):
        out += SHARED
    return out


def signature(node: dict[str, Any], shapes: bool = True) -> str:
    """What a backend's decision can depend on: the node's op, type and layout, and its sources' types and
    layouts (not their names, nor which op made them); with ``shapes=False``, less the sizes and strides."""
    drop = {"name", "backend"} | (set() if shapes else {"ne", "nb"})
    keep = {k: v for k, v in node.items() if k not in drop}
    keep["src"] = [{k: v for k, v in s.items() if k not in drop | {"op", "sub"}} for s in node["src"]]
    return json.dumps(keep, sort_keys=True)


class Graph:
    """The nodes of a graph by signature, with and without their shapes."""

    def __init__(self, llm: Llama, n_tokens: int) -> None:
        nodes = llm.graph_nodes(n_tokens)["nodes"]
        self.nodes = {signature(n): n for n in nodes}
        self.kinds = {signature(n, shapes=False) for n in nodes}


def refusals(graph: Graph, baseline: Graph) -> tuple[list[str], int]:
    """Why a GPU backend would not take a node that the rewiring added (a new op, type or layout), and
    how many such nodes there were. A node of an op the table does not cover is an error, unless it is
    one of the model's own nodes at another size (the experts of a changed top-k: MUL_MAT_ID, SUM_ROWS),
    which the backends already take at the model's own size."""
    out = []
    checked = 0
    for key, node in graph.nodes.items():
        if key in baseline.nodes:
            continue
        checked += 1
        for backend in BACKENDS:
            try:
                ok, why = supported(backend, node)
            except KeyError:
                if signature(node, shapes=False) in baseline.kinds:
                    continue
                raise
            if not ok:
                out.append(f"{node['name']} ({node['op']}/{node['sub']}) on {backend}: {why}")
        out += [f"{node['name']} ({node['op']}/{node['sub']}) on CUDA aborts: {why}"
                for why in cuda_kernel_asserts(node)]
    return out, checked


@pytest.fixture(scope="module")
def models(tiny: Any) -> Any:
    opened: dict[str, Llama] = {}

    def get(kind: str) -> Llama:
        if kind not in opened:
            path, _ = tiny(kind)
            opened[kind] = Llama(str(path), n_ctx=64, n_batch=16, n_threads=1, verbose=False)
        return opened[kind]

    yield get
    for llm in opened.values():
        llm.close()


@pytest.mark.parametrize("kind", KINDS)
def test_every_rewiring_builds_only_ops_the_gpu_backends_take(models: Any, kind: str) -> None:
    llm = models(kind)
    llm.set_wiring(None)
    baseline = {n: Graph(llm, n) for n in BATCHES}
    problems: dict[str, list[str]] = {}
    checked = 0
    for spec in wirings(kind):
        llm.set_wiring(spec)
        for n in BATCHES:
            found, count = refusals(Graph(llm, n), baseline[n])
            checked += count
            if found:
                problems.setdefault(spec, []).extend(found)
    llm.set_wiring(None)
    assert checked > len(wirings(kind)), "the rewirings added no node to the graph: nothing was checked"
    assert not problems, "\n".join(f"{spec}:\n  " + "\n  ".join(sorted(set(p)))
                                   for spec, p in problems.items())


POINTS = dict(enumerate(_core.POINT_NAMES))


@pytest.mark.parametrize("kind", ["llama", "gemma3", "moe"])
def test_residual_taps_and_edits_build_only_ops_the_gpu_backends_take(models: Any, kind: str) -> None:
    llm = models(kind)
    llm.set_wiring(None)
    llm.clear_edits()
    baseline = {n: Graph(llm, n) for n in BATCHES}
    n_layer = llm.n_layer()
    widths = {name: _core.rewire_point_width(llm.ctx, i, 0) for i, name in POINTS.items()}
    problems: list[str] = []
    rng = np.random.default_rng(0)
    for point, width in widths.items():
        if width == 0:
            continue
        vector = rng.standard_normal(width).astype(np.float32)
        for name in ("steer", "ablate", "patch"):
            if name == "steer":
                llm.set_steering(vector, alpha=0.5, layers=range(n_layer), point=point)
            elif name == "ablate":
                llm.set_ablation(vector, layers=0, point=point)
            else:
                llm.set_patch({0: vector[None, :]}, positions=[0], point=point)
            for n in BATCHES:
                problems += [f"{name} {point}: {p}" for p in refusals(Graph(llm, n), baseline[n])[0]]
            llm.clear_edits()
        bit = 1 << next(i for i, p in POINTS.items() if p == point)
        _core.rewire_taps_set(llm.ctx, [bit] * n_layer)
        try:
            for n in BATCHES:
                problems += [f"tap {point}: {p}" for p in refusals(Graph(llm, n), baseline[n])[0]]
        finally:
            _core.rewire_taps_set(llm.ctx, [])
    assert not problems, "\n".join(problems)


def test_the_table_refuses_what_a_backend_lacks() -> None:
    """The check can fail: a unary op on a strided view is refused by CUDA (it needs a contiguous input),
    a bf16 one by Metal and Vulkan; the same op on a contiguous f32 tensor passes everywhere."""
    src = {"type": "f32", "contiguous": True, "contiguous_rows": True, "ne": [64, 4, 1, 1],
           "nb": [4, 256, 1024, 1024]}
    ok = {"op": "UNARY", "sub": "TANH", "type": "f32", "ne": [64, 4, 1, 1], "src": [src]}
    assert all(supported(b, ok)[0] for b in BACKENDS)
    view = {**src, "contiguous": False, "nb": [4, 512, 2048, 2048]}
    assert not supported("CUDA", {**ok, "src": [view]})[0]
    bf16 = {**src, "type": "bf16", "nb": [2, 128, 512, 512]}
    assert not supported("Metal", {**ok, "type": "bf16", "src": [bf16]})[0]
    assert not supported("Vulkan", {**ok, "type": "bf16", "src": [bf16]})[0]
    with pytest.raises(KeyError):
        supported("CUDA", {**ok, "sub": "XIELU"})


def test_graph_nodes_lists_the_graph_and_where_it_runs(models: Any) -> None:
    llm = models("llama")
    llm.set_wiring(None)
    plain = llm.graph_nodes(1)
    assert plain["n_splits"] >= 1 and plain["nodes"]
    assert {n["backend"] for n in plain["nodes"]} <= {"CPU", ""}
    assert any(n["op"] == "MUL_MAT" for n in plain["nodes"])
    llm.set_wiring("*:tanh")
    tanh = llm.graph_nodes(1)["nodes"]
    assert sum(n["op"] == "UNARY" and n["sub"] == "TANH" for n in tanh) == llm.n_layer()
    llm.set_wiring("0:skip=layer")
    assert len(llm.graph_nodes(1)["nodes"]) < len(plain["nodes"])
    llm.set_wiring(None)
    # the next decode builds its own graph: the logits are those of a model never inspected
    tokens = [1, 5, 9, 13]
    llm.reset()
    llm.eval(tokens)
    after = np.array(llm.scores[len(tokens) - 1])
    llm.graph_nodes(0)
    llm.reset()
    llm.eval(tokens)
    assert np.array_equal(after, np.array(llm.scores[len(tokens) - 1]))
    too_many = llm.context_params.n_ubatch + 1  # was built as n_ubatch tokens, silently
    for bad, err in ((-1, ValueError), (1.5, TypeError), ("1", TypeError), (None, TypeError),
                     (too_many, ValueError), (10**7, ValueError)):
        with pytest.raises(err, match="n_tokens"):
            llm.graph_nodes(bad)

"""The rewiring on a GPU: every activation and knob gives the CPU's result, and stays on the GPU.

These run only in a build with a GPU backend (``CMAKE_ARGS="-DGGML_CUDA=on" pip install .``, or Metal,
Vulkan) on a machine with the device; elsewhere each test says why it is skipped. The op-level proof that
works without a GPU is tests/test_graph_ops.py (every op the rewiring builds is one the GPU backends take).

Tolerance: test-backend-ops compares one op's GPU output with the CPU's by normalized mean squared
error, at most 1e-7 for elementwise ops and 5e-4 for matrix products; a whole tiny model chains a few
dozen such ops, so its logits are compared at NMSE 5e-4, and a real quantized model's by KL per token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_graph_ops import KINDS, wirings

from llama_rewire import Llama, system_info

GPUS = [d["name"] for d in system_info()["devices"] if d["kind"] in ("gpu", "igpu")]
pytestmark = pytest.mark.skipif(
    not GPUS, reason="no GPU device (llama_rewire.system_info()['devices'] has none): build with "
                     "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or Metal, Vulkan) on a machine with the GPU")
NMSE = 5e-4
TOKENS = [1, 7, 42, 99, 3, 18, 250, 64, 5, 11]


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean((got - want) ** 2) / max(np.mean(want**2), 1e-30))


def logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: llm.n_tokens])


def open_pair(path: str, **kw: Any) -> tuple[Llama, Llama]:
    base = {"n_ctx": 64, "logits_all": True, "n_threads": 2, "verbose": False, "flash_attn": False, **kw}
    return Llama(path, n_gpu_layers=0, **base), Llama(path, n_gpu_layers=-1, **base)


@pytest.mark.parametrize("kind", KINDS)
def test_every_rewiring_on_the_gpu_equals_the_cpu(tiny: Any, kind: str) -> None:
    path, _ = tiny(kind)
    cpu, gpu = open_pair(str(path))
    try:
        bad = []
        for spec in ["", *wirings(kind)]:
            cpu.set_wiring(spec)
            gpu.set_wiring(spec)
            want, got = logits(cpu, TOKENS), logits(gpu, TOKENS)
            if not nmse(got, want) <= NMSE:
                bad.append(f"{spec or 'the model'}: NMSE {nmse(got, want):.2e}")
        assert not bad, "\n".join(bad)
    finally:
        cpu.close()
        gpu.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_rewired_model_stays_on_the_gpu(tiny: Any, kind: str) -> None:
    """With every layer offloaded, no wiring adds a graph split: each node the rewiring builds runs on
    the GPU backend, none falls back to the CPU."""
    path, _ = tiny(kind)
    with Llama(str(path), n_gpu_layers=-1, n_ctx=64, n_batch=16, verbose=False) as llm:
        plain = {n: llm.graph_nodes(n) for n in (1, 0)}
        on_cpu = []
        for spec in wirings(kind):
            llm.set_wiring(spec)
            for n in (1, 0):
                graph = llm.graph_nodes(n)
                assert graph["n_splits"] == plain[n]["n_splits"], (spec, n, graph["n_splits"])
                on_cpu += [f"{spec}: {node['name']} ({node['op']}/{node['sub']})" for node in graph["nodes"]
                           if "rewire" in node["name"] and node["backend"].startswith("CPU")]
        assert not on_cpu, "\n".join(on_cpu)


@pytest.mark.real_model
@pytest.mark.parametrize("real_model_path", ["smollm2", "gemma3-270m"], indirect=True)
def test_a_real_rewired_model_on_the_gpu_matches_the_cpu(real_model_path: Any) -> None:
    """SmolLM2 and Gemma-3 rewired (relu early layers, a skipped FFN, an expression) on the GPU: a mean
    KL below 0.02 nats per token against the CPU, the bound the repacked CPU kernels meet too."""
    from llama_rewire.eval.windows import divergence

    cpu, gpu = open_pair(str(real_model_path), n_ctx=256)
    try:
        tokens = cpu.tokenize(b"The capital of France is Paris, and the capital of Germany is")
        for spec in ("", "0-9:relu, 12:skip=ffn, -1:x*sigmoid(1.5*x)"):
            cpu.set_wiring(spec)
            gpu.set_wiring(spec)
            want, got = logits(cpu, tokens), logits(gpu, tokens)
            targets = np.array([*tokens[1:], 0], dtype=np.int64)
            _, kl, _ = divergence(want, got, targets)
            assert float(kl.mean()) < 0.02, (spec, float(kl.mean()))
    finally:
        cpu.close()
        gpu.close()

"""Well-formed GGUF files with one wrong value, each of which used to kill the process (SIGABRT, SIGSEGV or a
hang), found by ``scripts/fuzz_gguf.py``: each is now a ModelLoadError (or, where the file loads but the
context cannot be built, a RuntimeError) that says what is wrong, and the process lives. Every case runs
in a child process: a regression would kill the child, not the suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import gguf_mutate

# (base, mutation label after "<base>: ", a fragment of the ModelLoadError message)
CASES = [
    # llama-model.cpp asserts at load time (GGML_ASSERT throws inside the llama library); the metadata is
    # checked before (src/llama_rewire/_gguf_check.py), so the message names the key and the value
    ("llama", "kv-set llama.block_count = 0 (0)",
     "llama.block_count is 0: the model must have at least one layer (1..512)"),
    ("llama", "kv-set llama.block_count = 2**31-1 (0x7fffffff)",
     "llama.block_count is 2147483647: llama.cpp supports at most 512 layers (1..512)"),
    ("gemma3", "kv-set gemma3.block_count = max (0xffffffff)", "gemma3.block_count is 4294967295"),
    ("moe", "kv-set llama.expert_count = 2**31-1 (0x7fffffff)",
     "llama.expert_count is 2147483647: llama.cpp supports at most 1024 experts"),
    ("moe", "kv-set llama.expert_used_count = 0 (0)",
     "llama.expert_used_count is 0: a model with 4 experts (llama.expert_count) must route each token to at "
     "least one (1..4)"),
    ("moe", "kv-del llama.expert_used_count = removed", "llama.expert_used_count is missing: a model with 4"),
    ("moe", "kv-set llama.expert_used_count = 2**31-1 (0x7fffffff)",
     "llama.expert_used_count is 2147483647: more than the 4 experts of llama.expert_count (1..4)"),
    ("moe", "kv-del llama.expert_count = removed",
     "llama.expert_used_count is 2 but llama.expert_count is missing: a model without experts routes to"),
    ("moe_shared", "kv-set qwen2moe.expert_count = 0 (0)",
     "qwen2moe.expert_used_count is 2 but qwen2moe.expert_count is 0"),
    ("moe_merged", "kv-set hy_v3.expert_gating_func = 2**31-1 (0x7fffffff)",
     "hy_v3.expert_gating_func is 2147483647: not a gating function llama.cpp knows (0..4)"),
    ("mamba", "kv-set mamba.ssm.inner_size = v+1 (129)",
     "mamba.ssm.inner_size is 129: llama.cpp's mamba needs twice mamba.embedding_length (128)"),
    ("llama", "kv-set llama.embedding_length = 0 (0)", "llama.embedding_length is 0"),
    # found only in the vocabulary: explained once llama.cpp has refused the file
    ("llama", "kv-set tokenizer.ggml.tokens = [n-1] = [n-2] (duplicate entry)",
     "tokenizer.ggml.tokens holds the token '<0xFF>' twice (ids 258 and 259): every token must be unique"),
    # values ggml's kernels assert on at decode time, checked right after loading
    ("llama", "kv-set llama.attention.layer_norm_rms_epsilon = -1 (-1.0)", "norm epsilon"),
    ("llama", "kv-set llama.attention.layer_norm_rms_epsilon = nan (nan)", "norm epsilon"),
    ("gpt2", "kv-set gpt2.attention.layer_norm_epsilon = -inf (-inf)", "norm epsilon"),
    ("phi3", "kv-set phi3.rope.dimension_count = v-1 (15)", "rope.dimension_count is 15"),
    ("phi3", "kv-set phi3.rope.dimension_count = v+1 (17)", "rope.dimension_count is 17"),
    ("phi3", "kv-set phi3.rope.dimension_count = 0 (0)", "rope.dimension_count is 0"),  # it hung
    ("llama", "tensor-type blk.0.attn_norm.weight = F32 -> F16", "reads it as F32"),
    ("gpt2", "tensor-type blk.0.attn_norm.bias = F32 -> Q8_0", "reads it as F32"),
    ("mamba", "tensor-type blk.0.ssm_a = F32 -> F16", "reads it as F32"),
    ("llama", "tensor-type token_embd.weight = F32 -> I32", "integer type"),
    ("llama", "tensor-type blk.0.attn_q.weight = F32 -> I32", "integer type"),
]

# the file loads (the loader treats the tensor as optional) but the architecture's graph needs it: the
# context fails to build, with the assert that says so (ggml's own asserts throw while a context is made)
CONTEXT_CASES = [
    ("phi3", "tensor-del blk.0.attn_qkv.weight = removed", "a weight this architecture needs is missing"),
    ("moe_merged", "tensor-del blk.0.ffn_down_exps.weight = removed", "a weight this architecture needs"),
    ("moe_merged", "tensor-del blk.0.ffn_gate_up_exps.weight = removed", "a weight this architecture needs"),
    ("moe_merged", "tensor-del blk.0.ffn_down_shexp.weight = removed", "ggml_can_repeat"),
    ("moe_merged", "tensor-del blk.0.ffn_up_shexp.weight = removed", "ggml_are_same_shape"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz_bases")
    return {base: gguf_mutate.read_image(gguf_mutate.base_path(base, root))
            for base in sorted({c[0] for c in CASES + CONTEXT_CASES})}


def run(images: dict[str, Any], tmp_path: Path, base: str, label: str) -> Any:
    img = images[base]
    found = [m for m in gguf_mutate.all_mutations(img, base) if m.label == f"{base}: {label}"]
    assert len(found) == 1, f"no mutation {label!r} of {base}"
    out, _ = gguf_mutate.run_case(img, found[0], workdir=tmp_path, timeout=60)
    assert out.verdict == "exception", (out.verdict, out.where, out.stderr_tail[-500:])
    assert out.stage == "load"
    return out


@pytest.mark.parametrize(("base", "label", "message"), CASES, ids=[f"{b}-{lab[:50]}" for b, lab, _ in CASES])
def test_wrong_metadata_is_a_model_load_error(images: dict[str, Any], tmp_path: Path, base: str, label: str,
                                              message: str) -> None:
    out = run(images, tmp_path, base, label)
    assert "ModelLoadError" in out.exc_type
    assert message in out.exc_msg, out.exc_msg


@pytest.mark.parametrize(("base", "label", "message"), CONTEXT_CASES,
                         ids=[f"{b}-{lab[:50]}" for b, lab, _ in CONTEXT_CASES])
def test_a_missing_weight_fails_the_context(images: dict[str, Any], tmp_path: Path, base: str, label: str,
                                            message: str) -> None:
    out = run(images, tmp_path, base, label)
    assert out.exc_type == "RuntimeError"
    assert "failed to create a llama_context" in out.exc_msg and message in out.exc_msg, out.exc_msg


def test_a_fixed_sample_of_mutations_never_kills_the_process(tmp_path: Path) -> None:
    """40 single mutations drawn with a fixed seed from every tiny base (scripts/fuzz_gguf.py runs them
    all): each loads, or raises; none kills, hangs or fails to exit cleanly."""
    import random

    cases = []
    for base in gguf_mutate.TINY_BASES:
        img = gguf_mutate.read_image(gguf_mutate.base_path(base, tmp_path / "bases"))
        cases += [(img, m) for m in gguf_mutate.all_mutations(img, base)]
    bad = []
    for img, m in random.Random(20261202).sample(cases, 40):
        out, _ = gguf_mutate.run_case(img, m, workdir=tmp_path, timeout=60)
        if out.verdict not in ("ok", "exception"):
            bad.append(f"{m.label}: {out.verdict} {out.where}")
    assert not bad, bad

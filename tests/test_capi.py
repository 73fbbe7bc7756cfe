"""The ctypes C API (llama_rewire.llama_cpp): generated from llama.h, bound to the extension's own llama.

The generation loops are written as code for llama-cpp-python's ``llama_cpp.llama_cpp`` is written
(tokenize, a llama_batch, llama_decode, the logits, the C sampler chain), and outlines' and guidance's
use of ``Llama.model`` / ``Llama.ctx``; they are checked against the high-level Llama.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama, _core, llama_cpp

ROOT = Path(__file__).resolve().parent.parent
PROMPT = b"Hello world"
N_GEN = 8


def test_system_info_is_the_extensions() -> None:
    info = llama_cpp.llama_print_system_info()
    assert isinstance(info, bytes)
    assert info.decode() == _core.system_info()
    assert llama_cpp.llama_max_devices() >= 1
    assert llama_cpp.llama_supports_mmap() in (True, False)


def test_every_function_has_the_extensions_address() -> None:
    addresses = _core.capi_addresses()
    functions = {name for name, value in vars(llama_cpp).items()
                 if isinstance(value, ctypes._CFuncPtr) and name in addresses}  # type: ignore[attr-defined]
    assert functions == set(addresses)
    assert {"llama_decode", "llama_batch_init", "llama_sampler_sample", "llama_rewire_set"} <= functions
    assert all(a > 0 for a in addresses.values())
    assert len(set(addresses.values())) > 0.9 * len(addresses)  # a few deprecated names alias others


def test_regenerating_gives_no_diff() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_capi.py"), "--check"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_struct_layouts_match_the_compiler() -> None:
    """Every struct's size and every field's offset and size, as ctypes lays them out and the compiler did."""
    layouts = _core.capi_layouts()
    assert {"llama_batch", "llama_context_params", "llama_model_params", "llama_rewire_layer"} <= set(layouts)
    for name, (size, offsets) in layouts.items():
        cls = getattr(llama_cpp, name)
        assert ctypes.sizeof(cls) == size, name
        got = {f[0]: (getattr(cls, f[0]).offset, getattr(cls, f[0]).size) for f in cls._fields_}
        assert got == offsets, name


def test_defaults_and_constants_match_the_header() -> None:
    cparams = llama_cpp.llama_context_default_params()
    assert cparams.n_ctx == 512 and cparams.n_batch == 2048 and cparams.n_seq_max == 1
    assert cparams.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    assert cparams.type_k == llama_cpp.GGML_TYPE_F16
    mparams = llama_cpp.llama_model_default_params()
    assert mparams.use_extra_bufts is True and mparams.vocab_only is False
    assert llama_cpp.LLAMA_DEFAULT_SEED == 0xFFFFFFFF and llama_cpp.LLAMA_TOKEN_NULL == -1
    assert llama_cpp.LLAMA_ROPE_TYPE_NEOX == 2 and llama_cpp.LLAMA_TOKEN_ATTR_SINGLE_WORD == 1 << 9
    assert llama_cpp.LLAMA_ROPE_SCALING_TYPE_MAX_VALUE == llama_cpp.LLAMA_ROPE_SCALING_TYPE_LONGROPE
    assert llama_cpp.LLAMA_REWIRE_SCOPE_COUNT == 3
    assert llama_cpp.llama_rewire_act_name(llama_cpp.LLAMA_REWIRE_ACT_SILU) == b"silu"
    kv = llama_cpp.llama_model_kv_override(tag=llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, key=b"a.b")
    kv.val_i64 = 7
    assert kv.value.val_i64 == 7  # the anonymous union, by either path


def _fill(batch: Any, tokens: list[int], pos0: int) -> None:
    batch.n_tokens = len(tokens)
    for i, t in enumerate(tokens):
        batch.token[i] = t
        batch.pos[i] = pos0 + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i == len(tokens) - 1


def _c_generation(path: Path, n_gen: int) -> tuple[list[int], list[int], list[np.ndarray]]:
    """A llama-cpp-python low-level loop: (prompt tokens, greedy tokens, the logits each came from)."""
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    assert model is not None
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 64
    cparams.n_batch = 64
    cparams.n_threads = cparams.n_threads_batch = 2
    cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_F32
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    assert ctx is not None
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    buf = (llama_cpp.llama_token * 64)()
    n = llama_cpp.llama_tokenize(vocab, PROMPT, len(PROMPT), buf, 64, True, False)
    assert n > 0
    prompt = list(buf[:n])
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    out: list[int] = []
    logits: list[np.ndarray] = []
    try:
        _fill(batch, prompt, 0)
        n_past = n
        for _ in range(n_gen):
            assert llama_cpp.llama_decode(ctx, batch) == 0
            row = llama_cpp.llama_get_logits_ith(ctx, -1)
            logits.append(np.ctypeslib.as_array(row, shape=(n_vocab,)).copy())
            tok = llama_cpp.llama_sampler_sample(chain, ctx, -1)
            out.append(tok)
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            _fill(batch, [tok], n_past)
            n_past += 1
    finally:
        llama_cpp.llama_sampler_free(chain)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return prompt, out, logits


def _completion_tokens(llm: Llama, n_gen: int) -> list[int]:
    """create_completion's greedy tokens: each is the argmax of the logits it was sampled from."""
    seen: list[np.ndarray] = []

    def record(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen.append(scores.copy())
        return scores

    text = llm.create_completion(PROMPT.decode(), max_tokens=n_gen, temperature=0.0, repeat_penalty=1.0,
                                 logits_processor=record)["choices"][0]["text"]
    plain = llm.create_completion(PROMPT.decode(), max_tokens=n_gen, temperature=0.0,
                                  repeat_penalty=1.0)["choices"][0]["text"]
    assert plain == text
    return [int(np.argmax(s)) for s in seen]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_low_level_loop_matches_create_completion(tiny: Callable[[str], tuple[Path, Any]],
                                                  tiny_llm: Callable[..., Llama], kind: str) -> None:
    path, _ = tiny(kind)
    prompt, tokens, logits = _c_generation(path, N_GEN)
    assert tokens == [int(np.argmax(row)) for row in logits]  # the C greedy sampler read these logits
    llm = tiny_llm(kind)
    assert llm.tokenize(PROMPT) == prompt
    assert _completion_tokens(llm, N_GEN) == tokens


def test_outlines_vocabulary_through_llama_model(tiny_llm: Callable[..., Llama]) -> None:
    """outlines: ``llama_model_get_vocab(llm.model)``, then ``llama_token_to_piece`` for every token."""
    llm = tiny_llm("llama")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert vocab == llama_cpp.llama_model_get_vocab(llm._model.model)
    assert llama_cpp.llama_vocab_n_tokens(vocab) == llm.n_vocab()
    for t in range(llm.n_vocab()):
        size = 32
        buf = (ctypes.c_char * size)()
        n = llama_cpp.llama_token_to_piece(vocab, t, buf, size, 0, True)
        text = llm.model.token_text(t).decode()
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", text)
        expected = bytes([int(byte.group(1), 16)]) if byte else text.replace("\u2581", " ").encode()
        assert buf[:n] == expected, (t, text)


def test_guidance_decode_on_llama_ctx(tiny_llm: Callable[..., Llama]) -> None:
    """guidance: a llama_batch decoded on ``Llama.ctx`` gives the logits ``Llama.eval`` gives."""
    llm = tiny_llm("llama")
    tokens = llm.tokenize(PROMPT)
    llm.eval(tokens)
    expected = llm.scores[len(tokens) - 1].copy()
    llm.reset()
    assert llama_cpp.llama_get_model(llm.ctx) == llm.model.ptr == llm._model.model
    assert llm._ctx.ctx == llm.ctx.ptr
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        _fill(batch, tokens, 0)
        assert llama_cpp.llama_decode(llm._ctx.ctx, batch) == 0
        row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        got = np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(llm.ctx), 0) == len(tokens) - 1
    finally:
        llama_cpp.llama_batch_free(batch)
    assert llama_cpp.llama_rewire_n_layer(llm.ctx) == llm.n_layer()


def test_a_closed_model_is_an_error_not_a_dangling_pointer(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    model, ctx = llm._model, llm._ctx
    assert llama_cpp.llama_model_n_layer(model) == llm.n_layer()
    llm.close()
    with pytest.raises(RuntimeError, match="closed"):
        llm.model  # noqa: B018
    with pytest.raises(ctypes.ArgumentError, match="closed"):
        llama_cpp.llama_n_ctx(ctx)
    with pytest.raises(ctypes.ArgumentError, match="closed"):
        llama_cpp.llama_model_n_layer(model)


@pytest.mark.parametrize("go_on", [True, False])
def test_a_python_callback_runs_from_c(tiny: Callable[[str], tuple[Path, Any]], go_on: bool) -> None:
    """llama_model_params.progress_callback: called during the load; returning False cancels it."""
    path, _ = tiny("llama")
    seen: list[float] = []

    @llama_cpp.llama_progress_callback
    def progress(fraction: float, user_data: Any) -> bool:
        seen.append(fraction)
        return go_on

    mparams = llama_cpp.llama_model_default_params()
    mparams.progress_callback = progress
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    assert seen
    if go_on:
        assert model is not None and seen[-1] == 1.0
        llama_cpp.llama_model_free(model)
    else:
        assert model is None and len(seen) == 1

"""Bad input raises a clear Python exception, and the process stays alive to try again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama, _core


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Model path does not exist"):
        Llama(str(tmp_path / "nope.gguf"), verbose=False)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        Llama(str(tmp_path), verbose=False)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 100)
    with pytest.raises(ValueError, match="failed to load model"):
        Llama(str(path), verbose=False)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="failed to load model"):
        Llama(str(path), verbose=False)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98])
def test_truncated_gguf(tiny: Any, tmp_path: Path, fraction: float) -> None:
    src, _ = tiny("llama")
    data = src.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="failed to load model"):
        Llama(str(path), verbose=False)
    # still alive: the intact model loads and runs
    with Llama(str(src), n_ctx=32, verbose=False) as llm:
        llm.eval([1, 2, 3])
        assert np.isfinite(llm.scores[2]).all()


@pytest.mark.parametrize(
    "kwargs", [{"n_ctx": -1}, {"n_batch": 0}, {"n_ubatch": 0}, {"n_ctx": "512"}, {"n_batch": 2.5}]
)
def test_bad_constructor_arguments(tiny: Any, kwargs: dict[str, Any]) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError):
        Llama(str(path), verbose=False, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attention_type": "causal"}, TypeError, "attention_type must be an integer, got 'causal'"),
        ({"attention_type": 1.5}, TypeError, "attention_type must be an integer"),
        ({"attention_type": 5}, ValueError, r"attention_type must be in \[-1, 1\], got 5"),
        ({"pooling_type": None}, TypeError, "pooling_type must be an integer, got None"),
        ({"rope_freq_base": "fast"}, TypeError, "rope_freq_base must be a number"),
        ({"yarn_orig_ctx": -4}, TypeError, "yarn_orig_ctx must be a non-negative integer"),
    ],
)
def test_bad_context_parameters_name_themselves(
    tiny: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    path, _ = tiny("llama")
    with pytest.raises(error, match=message):
        Llama(str(path), verbose=False, **kwargs)
    with Llama(str(path), n_ctx=32, verbose=False) as llm:  # still alive
        llm.eval([1, 2])
        assert np.isfinite(llm.last_logits).all()


def test_bad_spec_in_constructor_and_setter_leaves_model_usable(tiny_llm: Any) -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        tiny_llm("llama", activations="*:nonsense")
    llm = tiny_llm("llama", activations="0:relu")
    with pytest.raises(ValueError, match="out of range"):
        llm.set_activations("12:relu")
    with pytest.raises(ValueError, match="must be finite"):
        llm.set_activations({0: {"name": "leaky_relu", "slope": float("nan")}})
    assert llm.activations == ["relu", "default", "default"]  # unchanged by the failed calls
    llm.eval([1, 2, 3])
    assert np.isfinite(llm.scores[2]).all()


def test_native_table_rejects_what_python_would(tiny_llm: Any) -> None:
    """The C API validates on its own: a bad entry never reaches the graph builder."""
    llm = tiny_llm("llama")
    with pytest.raises(ValueError, match="one entry per layer"):
        _core.rewire_set(llm.ctx, [(1, 0.0, 0.0)])
    with pytest.raises(ValueError, match="layer 1: unknown activation type"):
        _core.rewire_set(llm.ctx, [(0, 0.0, 0.0), (99, 0.0, 0.0), (0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="layer 2: activation parameter"):
        _core.rewire_set(llm.ctx, [(0, 0.0, 0.0), (0, 0.0, 0.0), (11, -1.0, 0.0)])  # softplus beta <= 0
    with pytest.raises(ValueError, match="layer 0: activation parameter"):
        _core.rewire_set(llm.ctx, [(7, float("inf"), 0.0), (0, 0.0, 0.0), (0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="out of range"):
        _core.rewire_describe(llm.ctx, 3)
    assert _core.rewire_get(llm.ctx) == [(0, 0.0, 0.0)] * 3


def test_context_overflow(tiny_llm: Any) -> None:
    llm = tiny_llm("llama", n_ctx=16)
    n_ctx = llm.n_ctx()  # llama.cpp pads the window (to 256 here)
    message = rf"Requested tokens \({n_ctx + 4}\) exceed context window of {n_ctx}"
    with pytest.raises(ValueError, match=message):
        llm.eval([5] * (n_ctx + 4))
    llm.eval([5] * (n_ctx - 6))
    with pytest.raises(ValueError, match="exceed context window"):
        llm.eval([5] * 7)
    with pytest.raises(ValueError, match="exceed context window"):
        llm.create_completion([5] * n_ctx, max_tokens=4)
    llm.eval([6])  # still usable
    assert llm.n_tokens == n_ctx - 5


def test_bad_tokens(tiny_llm: Any) -> None:
    llm = tiny_llm("llama")
    with pytest.raises(ValueError, match="out of range"):
        llm.eval([1, 100000])
    with pytest.raises(ValueError, match="out of range"):
        llm.eval([-1])
    with pytest.raises(ValueError, match="out of range"):
        llm.detokenize([1, 99999])
    with pytest.raises(TypeError, match="takes bytes"):
        llm.tokenize("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        llm.create_completion("hi", max_tokens="5")  # type: ignore[arg-type]


def test_closed_objects_raise_instead_of_crashing(tiny: Any) -> None:
    path, _ = tiny("llama")
    llm = Llama(str(path), n_ctx=32, verbose=False)
    ctx = llm.ctx
    llm.close()
    with pytest.raises(RuntimeError, match="closed"):
        llm.eval([1])
    with pytest.raises(RuntimeError, match="closed"):
        ctx.decode([1], 0)
    with pytest.raises(RuntimeError, match="closed"):
        ctx.perf()
    with pytest.raises(RuntimeError, match="closed"):
        llm.tokenize(b"x")
    model = _core.Model(str(path))
    ctx2 = _core.Context(model, n_ctx=32)
    with pytest.raises(RuntimeError, match="open context"):
        model.close()
    ctx2.close()
    model.close()
    llm.close()  # twice is fine


@pytest.mark.real_model
def test_trained_window_of_a_large_vocab_model_does_not_exhaust_memory(gemma_path: Any) -> None:
    """n_ctx=0 (the trained 32k window) x a 262k vocabulary would be a 34 GB scores matrix."""
    with Llama(str(gemma_path), n_ctx=0, n_batch=64, verbose=False) as llm:
        assert llm.n_ctx() == 32768
        llm.eval(llm.tokenize(b"Hello"))
        assert llm.last_logits.shape == (262144,)
        assert np.isfinite(llm.last_logits).all()

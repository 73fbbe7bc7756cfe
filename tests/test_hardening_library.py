"""The library refuses what used to break it, with the exception it documents, and nothing changes then.

- A refused edit (the native setter says no, or alpha * v leaves float32) leaves the previous edits in
  force: generation goes on as before.
- Expressions, wiring specs and profiles nested thousands deep are spec errors, not RecursionError.
- A control-vector file whose directions have different widths is refused (never broadcast), and a
  path that is not a regular file (a FIFO) is refused before anything opens it; the FIFO case runs in a
  child process with a time limit, since the old reader blocked forever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama, _core
from llama_rewire.errors import ActivationSpecError, ExpressionError, NonFiniteLogitsError, WiringSpecError
from llama_rewire.residual import ControlVector, Steer, gguf_min
from llama_rewire.wiring import parse_wiring
from llama_rewire.wiring.activations import parse_activation

DEEP = 3000


def _nest(depth: int, leaf: Any, kind: str) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return value


def _last_logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[len(tokens) - 1], dtype=np.float64)


PROMPT = [1, 5, 9, 14, 3]


# -- edits: a refused one leaves the previous in force -------------------------------------------------


def test_a_refused_native_edit_leaves_the_previous_edits_in_force(
    tiny_llm: Callable[..., Llama], monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = tiny_llm("llama")
    v = np.linspace(-1.0, 1.0, llm.n_embd()).astype(np.float32)
    llm.set_steering(v, alpha=2.0, layers=1)
    before = llm.edits
    want = _last_logits(llm, PROMPT)

    def refuse(ctx: Any, edits: Any) -> None:
        raise ValueError("refused by the native setter")

    with monkeypatch.context() as m:
        m.setattr(_core, "rewire_edits_set", refuse)
        with pytest.raises(ValueError, match="refused"):
            llm.set_steering(v, alpha=-3.0, layers=2)
        with pytest.raises(ValueError, match="refused"):
            llm.clear_edits()
    assert llm.edits == before  # the same edit objects: nothing was committed
    got = _last_logits(llm, PROMPT)  # no retry of the refused set, the old steering still applies
    np.testing.assert_array_equal(got, want)
    llm.clear_edits()
    assert not np.array_equal(_last_logits(llm, PROMPT), want)


@pytest.mark.parametrize("alpha", [1e38, 1e308])
def test_steering_beyond_float32_is_refused_and_changes_nothing(
    tiny_llm: Callable[..., Llama], alpha: float
) -> None:
    llm = tiny_llm("llama")
    v = np.full(llm.n_embd(), 4.0, dtype=np.float32)  # alpha * 4 is finite in float64, inf in float32
    llm.set_steering(v, alpha=0.5, layers=1)
    before = llm.edits
    want = _last_logits(llm, PROMPT)
    with pytest.raises(ValueError, match="float32"):
        llm.set_steering(v, alpha=alpha, layers=1)
    with pytest.raises(ValueError, match="float32"):
        llm.set_edits([Steer(1, v, alpha, tokens="prompt")])  # checked whatever tokens it applies to
    assert llm.edits == before
    got = _last_logits(llm, PROMPT)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, want)


def test_two_steering_vectors_summing_beyond_float32_are_refused(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    big = np.full(llm.n_embd(), 3e38, dtype=np.float32)  # each fits float32, their sum does not
    with pytest.raises(ValueError, match="float32"):
        llm.set_edits([Steer(1, big), Steer(1, big)])
    assert llm.edits == ()


@pytest.mark.parametrize("flash_attn", [False, True])
def test_steering_that_overflows_the_residual_stream_is_an_error_and_leaves_no_nan(
    tiny_llm: Callable[..., Llama], flash_attn: bool
) -> None:
    # each value fits float32, but the stream it is added to overflows in the next layers: the logits
    # are NaN, which sampling used to turn into an arbitrary token (or an empty answer)
    llm = tiny_llm("llama", flash_attn=flash_attn, type_k=1, type_v=1)  # F16 KV, as served
    prompt = [1, 5, 9, 14, 3, 22, 7]
    want = llm.create_completion(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    big = np.full(llm.n_embd(), 3e38, dtype=np.float32)
    llm.set_edits([Steer(0, big), Steer(1, big)])  # each layer's fits float32, their sum in the stream not
    with pytest.raises(NonFiniteLogitsError, match="not finite"):
        llm.create_completion(prompt, max_tokens=6, temperature=0.0)
    with pytest.raises(ValueError, match="not finite"):  # a ValueError, for code that catches those
        llm.create_completion(prompt[:3], max_tokens=2, temperature=0.7, seed=1)
    llm.set_edits([])
    # the NaN keys and values were zeroed, not just forgotten: a masked cell's NaN value times its weight
    # of zero is NaN, so an unsteered prompt over the same cells would come out NaN (or empty) otherwise
    again = llm.create_completion(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert again == want
    assert np.all(np.isfinite(_last_logits(llm, prompt)))


def test_slots_end_every_sequence_on_non_finite_logits_and_recover(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_parallel=2, flash_attn=False, type_k=1, type_v=1)
    prompt = [1, 5, 9, 14, 3]
    want = llm.slots.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    llm.set_wiring("*:exp(1e30*x)")  # an activation that overflows float32 on every layer
    with pytest.raises(NonFiniteLogitsError):
        llm.slots.create_completion(prompt, max_tokens=4, temperature=0.0)
    llm.set_wiring(None)
    assert llm.slots.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"] == want
    assert llm.slots.stats()["slots_processing"] == 0


def test_a_logits_processor_returning_nan_is_an_error(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")

    def nan(ids: Any, logits: np.ndarray) -> np.ndarray:
        logits[3] = np.nan
        return logits

    with pytest.raises(NonFiniteLogitsError, match="logits_processor"):
        llm.create_completion([1, 5, 9], max_tokens=2, temperature=0.0, logits_processor=nan)


def test_a_processors_nan_on_a_slot_ends_only_its_own_request(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_parallel=2)
    prompt = [1, 5, 9, 14, 3]
    want = llm.slots.create_completion(prompt, max_tokens=24, temperature=0.0)["choices"][0]["text"]

    def nan(ids: Any, logits: np.ndarray) -> np.ndarray:
        logits[0] = np.nan
        return logits

    stream = llm.slots.create_completion(prompt, max_tokens=24, temperature=0.0, stream=True)
    first = next(iter(stream))  # running on its slot
    with pytest.raises(NonFiniteLogitsError):
        llm.slots.create_completion([1, 22, 7], max_tokens=4, temperature=0.0, logits_processor=nan)
    text = first["choices"][0]["text"] + "".join(c["choices"][0]["text"] for c in stream)
    assert text == want


def test_embeddings_that_overflow_are_an_error(tiny: Callable[[str], Any]) -> None:
    path, _ = tiny("llama")
    with Llama(str(path), embedding=True, verbose=False) as llm:
        want = llm.embed("hello")
        llm.set_wiring("*:exp(1e30*x)")
        with pytest.raises(NonFiniteLogitsError, match="embedding is not finite"):
            llm.embed("hello")
        llm.set_wiring(None)
        assert llm.embed("hello") == want


def test_a_scaled_control_vector_beyond_float32_is_refused() -> None:
    cv = ControlVector({1: np.full(8, 4.0, dtype=np.float32)})
    with pytest.raises(ValueError, match="float32"):
        cv.scaled(1e38)
    np.testing.assert_array_equal(cv.scaled(0.5).directions[1], np.full(8, 2.0, dtype=np.float32))


# -- nesting: spec errors, not RecursionError ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "(" * DEEP + "x" + ")" * DEEP,
        "-" * DEEP + "x",
        "+".join(["x"] * DEEP),
        "x" + "/2" * DEEP,
        "2^" * DEEP + "x",
        "sigmoid(" * DEEP + "x" + ")" * DEEP,
    ],
    ids=["parens", "signs", "sum", "quotients", "powers", "calls"],
)
def test_deep_expressions_are_expression_errors(text: str) -> None:
    with pytest.raises(ExpressionError, match="nested more than"):
        parse_wiring(f"0:{text}", 4)


def test_an_expression_within_the_depth_limit_still_parses() -> None:
    wiring = parse_wiring("0:" + "(" * 40 + "x*sigmoid(1.5*x)" + ")" * 40, 4)
    assert str(wiring) == "0:swish(1.5)"
    chain = "relu(x" + "/2" * 50 + ")"  # a tree 52 deep
    assert str(parse_wiring(f"0:{chain}", 4)) == f"0:{chain}"


def test_deep_spec_values_are_spec_errors() -> None:
    with pytest.raises(WiringSpecError, match="nested more than"):
        parse_wiring({"0": _nest(DEEP, 1, "dict")}, 4)
    with pytest.raises(WiringSpecError, match="nested more than"):
        parse_wiring({"0": {"heads_off": _nest(DEEP, [], "list")}}, 4)
    with pytest.raises(ActivationSpecError, match="nested more than"):
        parse_activation({"name": _nest(DEEP, 1, "dict")})
    looped: dict[str, Any] = {}
    looped["a"] = looped  # a dict that holds itself
    with pytest.raises(WiringSpecError, match="nested more than"):
        parse_wiring({"0": looped}, 4)


def test_thresholds_do_not_chain() -> None:
    with pytest.raises(ActivationSpecError, match="one threshold"):
        parse_activation("relu" + "@1" * DEEP)
    with pytest.raises(ActivationSpecError, match="one threshold"):
        parse_activation("relu@0.1@0.2")
    assert parse_activation("relu@0.1").threshold == 0.1


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"wiring": {"0": ' + "[" * DEEP + "]" * DEEP + "}}"),
        ("deep.toml", "wiring = " + "[" * DEEP + "]" * DEEP + "\n"),
        ("shallow.json", '{"wiring": {"0": ' + "[" * 200 + "]" * 200 + "}}"),
        ("expr.json", json.dumps({"wiring": {"0": {"act": "(" * DEEP + "x" + ")" * DEEP}}})),
    ],
    ids=["json", "toml", "json-200", "json-expression"],
)
def test_deep_profiles_are_spec_errors(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ActivationSpecError, match="nested more than"):
        parse_wiring(path, 4)


def test_set_wiring_refuses_a_deep_spec_and_keeps_the_wiring(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    llm.set_wiring("*:relu")
    before = str(llm.wiring)
    with pytest.raises(ExpressionError):
        llm.set_wiring("0:" + "(" * DEEP + "x" + ")" * DEEP)
    with pytest.raises(WiringSpecError):
        llm.set_wiring({"0": _nest(DEEP, 1, "dict")})
    assert str(llm.wiring) == before


# -- control-vector files -------------------------------------------------------------------------------


def test_a_direction_of_another_width_is_refused_not_broadcast(tmp_path: Path) -> None:
    path = tmp_path / "mixed.gguf"
    meta = {"general.architecture": "controlvector", "controlvector.layer_count": 2}
    wide, narrow = np.ones(64, np.float32), np.ones(1, np.float32)
    gguf_min.write(path, meta, {"direction.1": wide, "direction.2": narrow})
    with pytest.raises(ValueError, match="values, the other directions 64"):
        ControlVector.load(path)
    same_layer = tmp_path / "same.gguf"  # two tensors for one layer add up (01 is layer 1): no broadcast
    gguf_min.write(same_layer, meta, {"direction.1": wide, "direction.01": narrow})
    with pytest.raises(ValueError, match="values, the other directions 64"):
        ControlVector.load(same_layer)


def test_a_width_1_control_vector_is_refused_by_the_model(
    tmp_path: Path, tiny_llm: Callable[..., Llama]
) -> None:
    llm = tiny_llm("llama")
    path = tmp_path / "narrow.gguf"
    meta = {"general.architecture": "controlvector", "controlvector.layer_count": 2}
    narrow = np.ones(1, np.float32)
    gguf_min.write(path, meta, {"direction.1": narrow, "direction.2": narrow})
    with pytest.raises(ValueError, match=f"{llm.n_embd()} values"):
        llm.set_steering(str(path))
    assert llm.edits == ()


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "vector.gguf"
    os.mkfifo(fifo)
    code = f"""
        from llama_rewire.residual import ControlVector
        from llama_rewire.residual import gguf_min
        for read in (ControlVector.load, gguf_min.read):
            try:
                read({str(fifo)!r})
            except ValueError as e:
                print("refused:", e)
    """
    try:
        child = _run_child(code, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO blocked")
    assert child.returncode == 0, child.stderr
    assert child.stdout.count("refused:") == 2 and "not a regular file" in child.stdout, child.stdout
    with pytest.raises(ValueError, match="not a regular file"):
        gguf_min.read(tmp_path)  # a directory too


def test_detokenize_refuses_what_is_not_a_token_id(tiny_llm: Callable[..., Llama]) -> None:
    """[1.5], ["3"] and [True] came back as b"" (read as tokens 1, 3 and 1) and [2**63] raised pybind11's
    raw TypeError."""
    llm = tiny_llm("llama")
    cases = (([2**63], ValueError), ([-1], ValueError), ([1.5], TypeError), (["3"], TypeError),
             ([None], TypeError), ([True], TypeError), ("ab", TypeError), (np.zeros((2, 2), int), TypeError))
    for bad, err in cases:
        with pytest.raises(err, match="detokenize"):
            llm.detokenize(bad)
        with pytest.raises(err, match="prev_tokens"):
            llm.detokenize([5], prev_tokens=bad)
    assert llm.detokenize(np.array([5, 9])) == llm.detokenize([5, 9]) == llm.detokenize(iter([5, 9]))


def test_a_state_that_does_not_fit_is_refused_before_anything_changes(tiny_llm: Callable[..., Llama]) -> None:
    """A LlamaState built by hand or unpickled: a short input_ids was broadcast into place (accepted, wrong
    tokens), n_tokens 2.5 read as 2, and impossible sizes failed in numpy after the native state was
    already replaced."""
    import dataclasses

    llm = tiny_llm("llama")
    llm.eval([1, 5, 9])
    good = llm.save_state()
    llm.reset()
    llm.eval([1, 7])
    def seen() -> tuple[int, list[int], list[float]]:
        return llm.n_tokens, list(llm.input_ids[: llm.n_tokens]), list(llm.scores[llm.n_tokens - 1])

    before = seen()
    cases = {
        "n_tokens": [10**6, -1, 2.5],
        "input_ids": [np.zeros(1, np.intc), np.zeros((3, 3), np.intc), np.array([1, 5, 10**9]),
                      np.array([1.0, 5.0, 9.0])],
        "scores": [np.zeros((1, 3), np.single)],
        "llama_state": [None, b"xx"],
    }
    for field, values in cases.items():
        for value in values:
            with pytest.raises((TypeError, ValueError), match=field if field != "llama_state" else "state"):
                llm.load_state(dataclasses.replace(good, **{field: value}))
            assert seen() == before, (field, value)
    with pytest.raises(TypeError, match="LlamaState"):
        llm.load_state({"n_tokens": 1})  # type: ignore[arg-type]
    llm.load_state(good)
    assert list(llm.input_ids[: llm.n_tokens]) == [1, 5, 9]

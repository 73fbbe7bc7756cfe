"""engine.Sequence on its own: what one sequence of a context keeps, reuses and rolls back."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from llama_rewire import Llama
from llama_rewire.engine import Memory, Sequence, prefix_len


def test_prefix_len() -> None:
    assert prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert prefix_len([], [1]) == 0
    assert prefix_len([7], [7]) == 1
    assert prefix_len(np.array([1, 2], dtype=np.intc).tolist(), (1, 2, 3)) == 2


def test_what_a_cache_can_roll_back() -> None:
    assert Memory().can_roll_back
    assert not Memory(recurrent=True).can_roll_back
    assert not Memory(hybrid=True).can_roll_back
    assert not Memory(swa_window=512).can_roll_back


def test_the_llama_holds_sequence_0(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    seq = llm.sequence
    assert isinstance(seq, Sequence) and seq.seq_id == 0 and seq.n_ctx == llm.n_ctx()
    llm.eval([1, 2, 3])
    assert llm.n_tokens == seq.n_tokens == 3 and seq.tokens.tolist() == [1, 2, 3]
    assert llm.input_ids is seq.ids
    np.testing.assert_array_equal(llm.last_logits, seq.last_logits())


def test_reuse_keeps_the_shared_prefix_and_evaluates_the_rest(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    seq = llm.sequence
    seq.eval([1, 2, 3, 4, 5])
    assert (seq.n_tokens, seq.n_cached) == (5, 5)
    rest = seq.reuse([1, 2, 3, 9, 9])
    assert rest == [9, 9] and seq.n_tokens == 3 and seq.n_cached == 5  # the tail goes at the next eval
    assert seq.reuse([1, 2, 3]) == [3]  # the last token is evaluated again: its logits are needed
    seq.eval(seq.reuse([1, 2, 3, 9, 9]))
    assert seq.n_cached == 5 and seq.tokens.tolist() == [1, 2, 3, 9, 9]
    reused = seq.last_logits().copy()
    fresh = tiny_llm("llama")
    fresh.eval([1, 2, 3, 9, 9])
    # the same positions and tokens; the kept cells and the new ones may be summed in another order
    np.testing.assert_allclose(reused, fresh.last_logits, rtol=0, atol=1e-4)
    assert seq.reuse([]) == [] and seq.n_tokens == 0


def test_a_recurrent_state_is_evaluated_again_instead_of_cut(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("mamba")
    seq = llm.sequence
    assert not seq.memory.can_roll_back
    seq.eval([1, 2, 3, 4])
    assert seq.reuse([1, 2, 9]) == [9] and seq.n_tokens == 2
    # the state holds position 3 folded in: it cannot go back to 2, so the kept prefix comes again
    assert seq.settle([9]) == [1, 2, 9] and seq.n_tokens == 0
    seq.eval([1, 2, 9])
    reused = seq.last_logits().copy()
    fresh = tiny_llm("mamba")
    fresh.eval([1, 2, 9])
    np.testing.assert_allclose(reused, fresh.last_logits, rtol=0, atol=1e-5)


def test_a_continuation_of_a_recurrent_state_needs_no_cut(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("mamba")
    seq = llm.sequence
    seq.eval([1, 2, 3])
    assert seq.reuse([1, 2, 3, 4]) == [4] and seq.settle([4]) == [4] and seq.n_tokens == 3


def test_cut_fed_and_forget_on_a_slot_sequence(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", n_parallel=2)
    ctx = llm.ctx
    seq = Sequence(ctx, 1, n_ctx=llm.n_ctx(), n_batch=llm.n_batch, n_vocab=llm.n_vocab(), memory=Memory())
    ctx.decode_batch([5, 6, 7], [0, 1, 2], [1, 1, 1])
    seq.fed([5, 6, 7])
    assert (seq.n_tokens, seq.n_cached) == (3, 3) and seq.shared_prefix([5, 6, 8]) == 2
    assert ctx.memory_seq_pos_min(1) == 0
    seq.cut(1)
    assert (seq.n_tokens, seq.n_cached) == (1, 1) and seq.tokens.tolist() == [5]
    seq.clear()
    assert seq.n_tokens == 0 and ctx.memory_seq_pos_min(1) == -1  # nothing left of sequence 1
    seq.forget()
    assert seq.n_tokens == 0 and seq.n_cached == seq.n_ctx  # whatever the cache holds is not ours


def test_a_closing_owner_stops_the_next_decode(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")
    calls: list[int] = []

    def check_open() -> None:
        calls.append(1)
        raise RuntimeError("closing")

    seq = Sequence(llm.ctx, 0, n_ctx=llm.n_ctx(), n_batch=llm.n_batch, n_vocab=llm.n_vocab(),
                   memory=Memory(), check_open=check_open)
    with pytest.raises(RuntimeError, match="closing"):
        seq.eval([1, 2])
    assert calls == [1] and seq.n_tokens == 0


def test_rewiring_and_edits_invalidate_the_sequence(tiny_llm: Callable[..., Any]) -> None:
    llm = tiny_llm("llama")
    llm.eval([1, 2, 3])
    llm.set_wiring("0:skip=ffn")
    assert llm.sequence.n_tokens == 0
    llm.eval([1, 2, 3])
    with llm.rewired("") as wiring:
        assert str(wiring) == "" and llm.sequence.n_tokens == 0
        llm.eval([1, 2])
    assert str(llm.wiring) == "0:skip=ffn" and llm.sequence.n_tokens == 0


def test_scoped_wiring_and_edits_come_back_also_after_an_error(tiny_llm: Callable[..., Any]) -> None:
    from llama_rewire.residual import Steer

    def summary(edits: Any) -> list[tuple[int, float, list[float]]]:
        return [(e.layer, e.alpha, np.asarray(e.vector).tolist()) for e in edits]

    llm = tiny_llm("llama")
    n_embd = llm.n_embd()
    llm.set_edits([Steer(0, np.ones(n_embd, np.float32), 0.5)])
    kept = summary(llm.edits)
    with pytest.raises(KeyError), llm.edited([Steer(1, np.ones(n_embd, np.float32), 2.0)]) as in_force:
        assert summary(in_force) == summary(llm.edits) and [e.layer for e in in_force] == [1]
        raise KeyError("inside")
    assert summary(llm.edits) == kept
    with pytest.raises(KeyError), llm.rewired("*:relu"):
        assert str(llm.wiring) == "0-2:relu"  # canonical: the tiny model has 3 layers
        raise KeyError("inside")
    assert str(llm.wiring) == ""
    with pytest.raises(ValueError), llm.edited([Steer(99, np.ones(n_embd, np.float32), 1.0)]):
        pass  # refused on the way in: nothing changed
    assert summary(llm.edits) == kept


def test_a_scoped_block_is_one_turn_on_the_llama(tiny_llm: Callable[..., Any]) -> None:
    import threading

    llm = tiny_llm("llama")
    order: list[str] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        llm.eval([1, 2])  # waits for the block to end
        order.append("other thread")

    with llm.rewired("*:relu"):
        t = threading.Thread(target=other)
        t.start()
        started.wait()
        t.join(0.3)
        order.append("block")
    t.join()
    assert order == ["block", "other thread"]


def test_a_steered_block_computes_what_set_steering_does(tiny_llm: Callable[..., Any]) -> None:
    llm = tiny_llm("llama")
    v = np.linspace(-1.0, 1.0, llm.n_embd(), dtype=np.float32)
    llm.eval([1, 2, 3])
    plain = llm.last_logits.copy()
    with llm.steered({1: v}, alpha=3.0) as in_force:
        assert [(e.layer, e.alpha) for e in in_force] == [(1, 3.0)]
        llm.eval([1, 2, 3])
        inside = llm.last_logits.copy()
    assert llm.edits == ()
    llm.set_steering({1: v}, alpha=3.0)
    llm.eval([1, 2, 3])
    np.testing.assert_array_equal(inside, llm.last_logits)
    assert not np.array_equal(inside, plain)
    with pytest.raises(ValueError, match="steered"), llm.steered(v, alpha=1.0, layers=[99]):
        pass


def test_the_slots_refuse_to_start_inside_a_block(tiny: Callable[[str], Any]) -> None:
    import threading

    path, _ = tiny("llama")
    llm = Llama(str(path), n_parallel=2, n_ctx=64, verbose=False)  # not closed if it deadlocks
    errors: list[str] = []

    def inside_a_block() -> None:
        try:
            with llm.rewired("*:relu"):
                llm.slots.create_completion("Hi", max_tokens=2)  # the slots would wait for the block
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=inside_a_block, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the slots waited for the block that waited for them"
    assert len(errors) == 1 and "cannot run inside a call" in errors[0]
    assert llm.slots.create_completion("Hi", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 0
    llm.close()


@pytest.mark.parametrize("block", ["rewired", "edited", "steered"])
def test_a_stream_opened_in_a_block_ends_with_it(block: str, tiny_llm: Callable[..., Any]) -> None:
    from llama_rewire.residual import Steer

    llm = tiny_llm("llama")
    v = np.linspace(-1.0, 1.0, llm.n_embd(), dtype=np.float32)
    scopes = {"rewired": lambda: llm.rewired("*:relu"),
              "edited": lambda: llm.edited([Steer(1, v, 4.0)]),
              "steered": lambda: llm.steered({1: v}, alpha=4.0)}
    llm.eval([1, 2, 3])
    plain = llm.last_logits.copy()
    with scopes[block]():
        gen = llm.generate([1, 2, 3], temp=0.0)
        next(gen)
    assert list(gen) == []  # ended with the block, not continued under the restored model
    assert llm.edits == () and str(llm.wiring) == ""
    llm.eval([1, 2, 3])
    np.testing.assert_array_equal(llm.last_logits, plain)


def test_n_tokens_rewinds_and_refuses_anything_else(tiny_llm: Callable[..., Any]) -> None:
    llm = tiny_llm("llama")
    llm.eval([1, 2, 3, 4])
    last = llm.last_logits.copy()
    llm.n_tokens = llm.n_tokens  # a no-op keeps the last row
    np.testing.assert_array_equal(llm.last_logits, last)
    for bad in (-5, 5, 10**6):
        with pytest.raises(ValueError, match="n_tokens"):
            llm.n_tokens = bad
    with pytest.raises(TypeError, match="n_tokens"):
        llm.n_tokens = "abc"  # type: ignore[assignment]
    assert llm.n_tokens == 4
    llm.n_tokens = 2  # llama-cpp-python's callers rewind this way
    llm.eval([3, 4])
    np.testing.assert_allclose(llm.last_logits, last, rtol=0, atol=1e-5)  # the same tokens again


def test_inside_a_block_a_call_waits_for_no_stream_it_would_corrupt(tiny_llm: Callable[..., Any]) -> None:
    llm = tiny_llm("llama")
    alone = "".join(c["choices"][0]["text"] for c in llm([1, 2, 3], max_tokens=8, temperature=0.0,
                                                         stream=True))
    with llm.rewired(""):
        stream = llm([1, 2, 3], max_tokens=8, temperature=0.0, stream=True)
        first = next(stream)["choices"][0]["text"]
        # outside a block this is refused; inside, the thread holds the Llama: it was run, and the
        # stream went on from the other call's tokens
        with pytest.raises(RuntimeError, match="still open"):
            llm([4, 5], max_tokens=4, temperature=0.0)
        with pytest.raises(RuntimeError, match="still open"):
            llm.eval([4, 5])
        assert llm.describe_layers()  # looking is allowed between two steps, as outside a block
        rest = "".join(c["choices"][0]["text"] for c in stream)
    assert first + rest == alone


def test_a_block_given_a_bad_spec_changes_nothing(tiny_llm: Callable[..., Any]) -> None:
    from llama_rewire.errors import ActivationSpecError

    llm = tiny_llm("llama")
    llm.set_wiring("0:skip=ffn")
    for bad in ("*:nosuchact", "7:skip=ffn", "0:ffn_scale=nan", 42):
        with pytest.raises((ActivationSpecError, TypeError)), llm.rewired(bad):  # type: ignore[arg-type]
            pass
        assert str(llm.wiring) == "0:skip=ffn"
    with pytest.raises(TypeError), llm.edited("not a list"):  # type: ignore[arg-type]
        pass
    assert llm.edits == ()
    llm.eval([1, 2])  # still usable
    assert llm.n_tokens == 2

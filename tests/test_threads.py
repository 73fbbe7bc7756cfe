"""One Llama shared between threads: calls serialise (a stream holds the Llama from the call that
starts it to its end, its steps taken from any thread), a call that would wait for itself raises, and
close() during use makes the users raise instead of freeing the native objects under them.

The scenarios with many threads run in a child process (``tests/threads_child.py``), so that a
regression kills the child, not the suite. Without the guard (``--no-guard``) each of them failed 8 runs
in 8, by SIGABRT, SIGSEGV or wrong results; the concurrent completions of ``concurrent_completions``
killed 5 processes in 8 before this guard existed.
"""

from __future__ import annotations

import gc
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from llama_rewire import Llama

CHILD = Path(__file__).parent / "threads_child.py"
SCENARIO_RUNS = {  # scenario: (child processes, rounds in each)
    "serial_equals_threaded": (3, 6),
    "stream_across_threads": (2, 6),
    "close_during_use": (3, 8),
    "concurrent_completions": (3, 5),
}


def run_child(scenario: str, path: Path, rounds: int) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-X", "faulthandler", str(CHILD), scenario, str(path), str(rounds)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, f"{scenario}: the child exited with {p.returncode}\n{p.stderr[-3000:]}"
    figures: dict[str, Any] = json.loads(p.stdout.splitlines()[-1])
    return figures


@pytest.mark.parametrize("scenario", list(SCENARIO_RUNS))
def test_threads_in_a_child(scenario: str, tiny: Callable[[str], tuple[Path, Any]]) -> None:
    path, _ = tiny("llama")
    children, rounds = SCENARIO_RUNS[scenario]
    for _ in range(children):
        figures = run_child(scenario, path, rounds)
        print(scenario, figures)
        if scenario == "serial_equals_threaded":
            assert figures["mismatches"] == 0 and figures["calls"] == rounds * 48
        if scenario == "close_during_use":
            assert sum(figures["messages"].values()) == 3 * rounds


# -- in this process: what one thread sees ----------------------------------------------------------------

OPTS = {"n_ctx": 64, "n_threads": 1, "verbose": False}


def in_thread(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """fn() in another (daemon) thread; its result, or the exception it raised."""
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call is still waiting"
    return out[0]


def test_a_call_next_to_an_own_open_stream_raises(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    want = llm("abc", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    stream = llm("hello", max_tokens=8, temperature=0.0, stream=True)
    first = next(stream)
    for call in (lambda: llm("abc", max_tokens=6), lambda: llm.eval([1, 2]), llm.reset,
                 lambda: llm.set_wiring("0:relu"), lambda: llm.generate([1, 2]).__next__(),
                 lambda: llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2)):
        with pytest.raises(RuntimeError, match=r"streamed completion on this Llama .* is still open in this "
                                               r"thread: consume it to the end or close\(\) it first"):
            call()
    # looking is fine between two steps, and the vocabulary is always there
    assert llm.scores.shape[1] == llm.n_vocab()
    assert llm.tokenize(b"hi") and llm.detokenize([70]) and llm.save_state().n_tokens == llm.n_tokens
    rest = "".join(c["choices"][0]["text"] for c in stream)
    whole = llm("hello", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert first["choices"][0]["text"] + rest == whole
    assert llm("abc", max_tokens=6, temperature=0.0)["choices"][0]["text"] == want


def test_closing_or_dropping_a_stream_frees_the_llama(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    stream = llm("hello", max_tokens=8, stream=True)
    next(stream)
    stream.close()
    stream.close()
    assert list(stream) == []
    llm("abc", max_tokens=2)
    for _chunk in llm("hello", max_tokens=8, stream=True):
        break  # the loop drops the stream
    llm("abc", max_tokens=2)
    stream = llm("hello", max_tokens=8, stream=True)
    next(stream)
    del stream
    llm("abc", max_tokens=2)
    chat = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
    next(chat)
    chat.close()
    gen = llm.generate([1, 5, 6])
    next(gen)
    gen.close()
    # a stream kept alive only by a reference cycle is collected before the call gives up
    holder: dict[str, Any] = {"stream": llm("hello", max_tokens=8, stream=True)}
    holder["self"] = holder
    next(holder["stream"])
    del holder
    llm("abc", max_tokens=2)
    assert gc.collect() >= 0


def test_another_thread_waits_for_an_open_stream(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    want = llm("abc", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    stream = llm("hello", max_tokens=8, temperature=0.0, stream=True)
    next(stream)
    done = threading.Event()
    result: list[Any] = []

    def other() -> None:
        result.append(llm("abc", max_tokens=6, temperature=0.0)["choices"][0]["text"])
        done.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    assert not done.wait(0.3), "the other thread's call interleaved with the open stream"
    assert llm.tokenize(b"hi")  # meanwhile this thread still reads the vocabulary
    list(stream)
    assert done.wait(30)
    t.join()
    assert result == [want]


def test_a_stream_left_open_by_an_ended_thread_raises(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    kept: list[Any] = []

    def open_one() -> None:
        kept.append(llm("hello", max_tokens=8, stream=True))
        next(kept[0])

    assert in_thread(open_one) is None
    with pytest.raises(RuntimeError, match="still open by a thread that has ended"):
        llm("abc", max_tokens=2)
    # any thread may go on consuming it
    assert isinstance(in_thread(lambda: list(kept[0])), list)
    llm("abc", max_tokens=2)


def test_a_stream_steps_in_any_thread(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    want = [c["choices"][0]["text"] for c in llm("hello", max_tokens=10, temperature=0.0, stream=True)]
    stream = llm("hello", max_tokens=10, temperature=0.0, stream=True)
    got = [in_thread(lambda: next(stream, None)) for _ in range(len(want) + 1)]
    assert got[-1] is None
    assert [c["choices"][0]["text"] for c in got[:-1]] == want
    want_tokens = list(itertools.islice(llm.generate([1, 70, 71], temperature=0.0), 5))
    gen = llm.generate([1, 70, 71], temperature=0.0)
    tokens = [in_thread(lambda: next(gen)) for _ in range(5)]
    gen.close()
    assert tokens == want_tokens


def test_close_from_inside_a_call_raises(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)

    def processor(ids: Any, logits: Any) -> Any:
        llm.close()
        return logits

    with pytest.raises(RuntimeError, match=r"close\(\) was called inside a call on this Llama"):
        llm("abc", max_tokens=2, logits_processor=processor)
    llm("abc", max_tokens=2)  # still open


def test_close_closes_an_open_stream(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    stream = llm("hello", max_tokens=8, stream=True)
    next(stream)
    in_thread(llm.close)
    with pytest.raises(RuntimeError, match=r"^this Llama is closed$"):
        next(stream)
    stream.close()  # a no-op now
    with pytest.raises(RuntimeError, match=r"^this Llama is closed$"):
        llm("abc", max_tokens=2)


def test_close_waits_for_a_running_call(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama", **OPTS)
    started, release = threading.Event(), threading.Event()

    def criterion(ids: Any, logits: Any) -> bool:
        started.set()
        release.wait(10)
        return False

    result: list[Any] = []

    def run() -> None:
        try:
            result.append(llm("abc", max_tokens=20, stopping_criteria=criterion))
        except RuntimeError as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    closer = threading.Thread(target=llm.close, daemon=True)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() did not wait for the running call"
    release.set()
    closer.join(30)
    t.join(30)
    assert not closer.is_alive() and not t.is_alive()
    assert isinstance(result[0], RuntimeError) and "closed" in str(result[0])


def test_two_threads_pull_one_stream(tiny_llm: Callable[..., Llama]) -> None:
    """Concurrent next() calls on one stream take turns: each chunk goes to one of them, none is lost."""
    llm = tiny_llm("llama", **OPTS)
    want = [c["choices"][0]["text"] for c in llm("hello", max_tokens=40, temperature=0.0, stream=True)]
    stream = llm("hello", max_tokens=40, temperature=0.0, stream=True)
    got: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            for chunk in stream:
                got.append(chunk["choices"][0]["text"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=pull, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert sorted(got) == sorted(want)
    assert llm("abc", max_tokens=2)["choices"]

"""The call guard takes waiting calls in the order they arrived: a thread that calls a Llama in a loop
cannot starve another thread's call (it used to take the guard again before the waiting call woke up,
for as long as its loop ran). Each loop below is bounded in time, so the old behaviour fails the test
instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from llama_rewire import Llama
from llama_rewire._guard import CallGuard

LOOP_S = 4.0


class Looper:
    """A thread that takes the guard in a loop (``call`` runs under it) until ``stop()`` or LOOP_S."""

    def __init__(self, call: Callable[[], None]) -> None:
        self.count = 0
        self._call = call
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + LOOP_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._call()
            self.count += 1

    def __enter__(self) -> Looper:
        self._thread.start()
        while self.count < 3:  # running
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(LOOP_S + 30)


def test_a_looping_thread_lets_a_waiting_call_in_at_its_next_turn() -> None:
    guard = CallGuard()

    def one_call() -> None:
        guard.enter("loop")
        try:
            time.sleep(0.001)  # a native call: the GIL is released
        finally:
            guard.exit()

    with Looper(one_call) as loop:
        for _ in range(5):
            before, t0 = loop.count, time.monotonic()
            guard.enter("other")
            waited, between = time.monotonic() - t0, loop.count - before
            guard.exit()
            assert between <= 2, f"{between} calls of the looping thread went first"
            assert waited < 1.0
            time.sleep(0.01)


def test_waiting_calls_run_in_the_order_they_arrived() -> None:
    guard = CallGuard()
    order: list[int] = []
    guard.enter("holder")
    threads = []
    for i in range(5):
        def call(i: int = i) -> None:
            guard.enter(f"call {i}")
            try:
                order.append(i)
            finally:
                guard.exit()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while guard.waiting < i + 1 and time.monotonic() < deadline:  # queued before the next one starts
            time.sleep(0.001)
    guard.exit()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_set_wiring_is_not_starved_by_a_thread_calling_in_a_loop(tiny_llm: Callable[..., Llama]) -> None:
    llm = tiny_llm("llama")

    def generate() -> None:
        llm.create_completion([1, 5, 9], max_tokens=2, temperature=0.0)

    with Looper(generate) as loop:
        for spec in ("*:relu", "", "*:gelu"):
            before, t0 = loop.count, time.monotonic()
            llm.set_wiring(spec)
            waited, between = time.monotonic() - t0, loop.count - before
            assert between <= 2, f"set_wiring waited for {between} completions ({waited:.2f} s)"
    assert set(llm.activations) == {"gelu"}

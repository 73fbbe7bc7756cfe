"""The child process of ``tests/test_threads.py``: one scenario of threads sharing one ``Llama``.

    python tests/threads_child.py SCENARIO MODEL.gguf [ROUNDS]

It prints one JSON object (the figures of the scenario) as its last line and exits 0; a failed check
raises (exit 1). A regression that corrupts the native state kills this process, not the test suite.
``--no-guard`` turns the Llama's call guard off, to show that a scenario catches what it guards
against (that run is expected to crash or to give wrong results).

Every model here has ``n_batch=1``: each token is evaluated alone, so the logits of a call do not depend
on what the previous call left in the cache (prefix reuse evaluates only the tokens after the shared
prefix; with larger batches those would go through other kernels and could round differently), and
greedy results can be compared exactly between a serial and a threaded run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llama_rewire import Llama
from llama_rewire._guard import CallGuard

OPTIONS = {"n_ctx": 96, "n_batch": 1, "n_ubatch": 1, "n_threads": 1, "verbose": False}
N_THREADS = 4
PER_THREAD = 12

Call = tuple[str, Any, int]  # (kind, prompt or messages, max_tokens)


def calls() -> list[Call]:
    """N_THREADS * PER_THREAD calls of every kind, on prompts of different lengths."""
    words = ["hello", "the cat", "a b c", "once upon", "xyz", "tea", "in the", "42 is"]
    out: list[Call] = []
    for i in range(N_THREADS * PER_THREAD):
        prompt = f"{words[i % len(words)]} {i}"
        kind = ("completion", "stream", "chat", "chat_stream", "tokens")[i % 5]
        if kind.startswith("chat"):
            out.append((kind, [{"role": "user", "content": prompt}], 6 + i % 5))
        else:
            out.append((kind, prompt, 6 + i % 7))
    return out


def run_call(llm: Llama, call: Call) -> Any:
    kind, prompt, n = call
    if kind == "completion":
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        return out["choices"][0]["text"], out["usage"]["completion_tokens"]
    if kind == "stream":
        chunks = llm(prompt, max_tokens=n, temperature=0.0, stream=True)
        return "".join(c["choices"][0]["text"] for c in chunks)
    if kind == "chat":
        msg = llm.create_chat_completion(prompt, max_tokens=n, temperature=0.0)
        return msg["choices"][0]["message"]["content"]
    if kind == "chat_stream":
        chunks = llm.create_chat_completion(prompt, max_tokens=n, temperature=0.0, stream=True)
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    if kind == "tokens":
        toks = llm.tokenize(prompt.encode(), add_bos=True)
        gen = llm.generate(toks, temperature=0.0)
        got = [next(gen) for _ in range(n)]
        gen.close()
        return llm.detokenize(toks).decode(), got
    raise ValueError(kind)


def in_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0..n-1) in n threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def scenario_serial_equals_threaded(path: str, rounds: int) -> dict[str, Any]:
    """N threads x M calls of every kind on one Llama give exactly the serial results."""
    llm = Llama(path, **OPTIONS)
    todo = calls()
    want = [run_call(llm, c) for c in todo]
    assert want == [run_call(llm, c) for c in todo], "the serial results are not reproducible"
    mismatches = 0
    for _ in range(rounds):
        got: dict[int, Any] = {}

        def work(t: int, got: dict[int, Any] = got) -> None:
            for i in range(t, len(todo), N_THREADS):
                got[i] = run_call(llm, todo[i])

        errors = in_threads(N_THREADS, work)
        assert not errors, errors
        mismatches += sum(got[i] != want[i] for i in range(len(todo)))
    assert mismatches == 0, f"{mismatches} of {rounds * len(todo)} threaded calls differ from the serial ones"
    llm.close()
    return {"rounds": rounds, "calls": rounds * len(todo), "threads": N_THREADS, "mismatches": mismatches}


def scenario_stream_across_threads(path: str, rounds: int) -> dict[str, Any]:
    """A stream pulled chunk by chunk from a pool's threads (as the server does) while other threads
    complete on the same Llama: the stream is not interleaved, the others wait their turn."""
    llm = Llama(path, **OPTIONS)
    stream_want = run_call(llm, ("stream", "a long story", 40))
    others = [c for c in calls() if c[0] in ("completion", "chat")][:6]
    others_want = [run_call(llm, c) for c in others]
    pool = ThreadPoolExecutor(3)
    pulls = 0
    for _ in range(rounds):
        it = llm("a long story", max_tokens=40, temperature=0.0, stream=True)
        got_others: dict[int, Any] = {}

        def other(i: int, got_others: dict[int, Any] = got_others) -> None:
            got_others[i] = run_call(llm, others[i])

        side = [threading.Thread(target=other, args=(i,)) for i in range(len(others))]
        text = []
        first = True
        while True:
            chunk = pool.submit(next, it, None).result()
            if first:  # the stream has moved to a pool thread: the others now start, and wait for it
                for t in side:
                    t.start()
                first = False
            if chunk is None:
                break
            pulls += 1
            text.append(chunk["choices"][0]["text"])
        for t in side:
            t.join()
        assert "".join(text) == stream_want, ("".join(text), stream_want)
        assert [got_others[i] for i in range(len(others))] == others_want
        assert it.usage is not None
    pool.shutdown()
    llm.close()
    return {"rounds": rounds, "pulls": pulls}


def scenario_close_during_use(path: str, rounds: int) -> dict[str, Any]:
    """close() while other threads complete, stream and generate: they raise RuntimeError, nothing
    crashes, and the native objects are freed only once no call runs."""
    seen: dict[str, int] = {}
    for r in range(rounds):
        llm = Llama(path, **OPTIONS)
        llm.create_completion("warm up", max_tokens=2)
        ready = threading.Barrier(4)
        messages: list[str] = []

        def loop(kind: str, llm: Llama = llm, ready: threading.Barrier = ready,
                 messages: list[str] = messages) -> None:
            ready.wait()
            try:
                while True:
                    if kind == "completion":
                        llm.create_completion("hello there", max_tokens=30, temperature=0.0)
                    elif kind == "stream":
                        for _ in llm("a stream", max_tokens=30, temperature=0.0, stream=True):
                            time.sleep(0.001)
                    else:
                        gen = llm.generate(llm.tokenize(b"gen"), temperature=0.0)
                        for _, _tok in zip(range(30), gen):
                            pass
                        gen.close()
            except RuntimeError as e:
                messages.append(str(e))

        threads = [threading.Thread(target=loop, args=(k,)) for k in ("completion", "stream", "generate")]
        for t in threads:
            t.start()
        ready.wait()
        time.sleep(0.02 + 0.01 * (r % 5))
        llm.close()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a thread is still running after close()"
        assert len(messages) == 3, messages
        for m in messages:
            assert m.startswith("this Llama"), m
            seen[m] = seen.get(m, 0) + 1
    return {"rounds": rounds, "messages": seen}


def scenario_concurrent_completions(path: str, rounds: int) -> dict[str, Any]:
    """The scenario that used to kill the process: threads completing on one Llama at once."""
    llm = Llama(path, n_ctx=64, n_threads=1, verbose=False)
    for _ in range(rounds):
        errors = in_threads(4, lambda _i: [llm.create_completion("hello world", max_tokens=12,
                                                                  temperature=0.0) for _ in range(30)])
        assert not errors, errors
    llm.close()
    return {"rounds": rounds}


def _disable_guard() -> None:
    CallGuard.enter = lambda self, *a, **kw: True  # type: ignore[method-assign]
    CallGuard.exit = lambda self: None  # type: ignore[method-assign]
    CallGuard.open_stream = lambda self, gen, what: gen  # type: ignore[assignment,method-assign]


SCENARIOS = {
    "serial_equals_threaded": scenario_serial_equals_threaded,
    "stream_across_threads": scenario_stream_across_threads,
    "close_during_use": scenario_close_during_use,
    "concurrent_completions": scenario_concurrent_completions,
}


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-guard"]
    if "--no-guard" in sys.argv:
        _disable_guard()
    name, path = args[0], args[1]
    rounds = int(args[2]) if len(args) > 2 else 3
    t0 = time.monotonic()
    figures = SCENARIOS[name](path, rounds)
    figures["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()

"""Small helpers shared by the tests: logits of a fresh evaluation, errors, greedy-choice cases, greedy
answers compared up to a tie, a free loopback port and a child process's RSS."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import numpy as np


def logits_of(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """Every token's logits ([n, n_vocab], float64) from a fresh evaluation (needs logits_all)."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def greedy_cases(n: int, seed: int) -> list[np.ndarray]:
    """Logit rows whose first largest value sits in awkward places: ties within and across blocks of
    64, the last element, a lone finite value among -inf, all equal."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(20):
        cases.append(rng.normal(size=n).astype(np.float32))
    tie = rng.normal(size=n).astype(np.float32)
    tie[[3, n // 2, n - 1]] = 50.0
    cases.append(tie)
    near = rng.normal(size=n).astype(np.float32)
    near[[70, 71]] = 9.0
    near[200 % n] = np.nextafter(np.float32(9.0), np.float32(10.0))
    cases.append(near)
    last = rng.normal(size=n).astype(np.float32)
    last[-1] = 99.0
    cases.append(last)
    lone = np.full(n, -np.inf, np.float32)
    lone[n - 2] = -1e30
    cases += [lone, np.zeros(n, np.float32), np.full(n, -np.inf, np.float32)]
    return cases


# Two logits closer than this are a tie between batchings: a prompt evaluated in other batch sizes (a
# cached prefix, tokens of other sequences alongside) runs other kernels, most of all on AMX CPUs, and
# its logits move by up to ~0.8 (README, "Reproducible comparisons"); greedy text can only part at a tie.
BATCH_TIE = 0.8


# one greedy step: the token chosen, the runner-up, and how far the runner-up's logit is below it
Step = tuple[Any, Any, float]


def agree_up_to_a_tie(got: Sequence[Step], want: Sequence[Step], tie: float) -> int:
    """Two greedy runs of the same steps: the same tokens, or the same up to a step where each side's
    pick is the other's runner-up, by less than ``tie`` on both. Returns how many tokens they share."""
    for i, ((g, g2, gap_g), (w, w2, gap_w)) in enumerate(zip(got, want)):
        if g == w:
            continue
        where = f"token {i}: {g!r} vs {w!r}"
        assert g2 == w and w2 == g, f"{where}, not each other's second"
        assert gap_g < tie and gap_w < tie, f"{where}, top-2 gaps {gap_g:.3f} / {gap_w:.3f}"
        return i
    assert len(got) == len(want)
    return len(got)


def steps_of_logprobs(content: list[dict[str, Any]]) -> list[Step]:
    """The steps of a greedy answer's logprobs content (``logprobs=True, top_logprobs=2``)."""
    return [(c["token"], c["top_logprobs"][1]["token"],
             c["top_logprobs"][0]["logprob"] - c["top_logprobs"][1]["logprob"]) for c in content]


def steps_of_completion_logprobs(logprobs: dict[str, Any]) -> list[Step]:
    """The steps of a greedy completion's logprobs (``create_completion(..., logprobs=2)``)."""
    out: list[Step] = []
    for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"]):
        (first, lp1), (second, lp2) = sorted(top.items(), key=lambda kv: -kv[1])[:2]
        assert first == token, f"token {token!r} is not the best of its step ({first!r})"
        out.append((token, second, lp1 - lp2))
    return out


def steps_of_rows(tokens: Sequence[int], rows: np.ndarray) -> list[Step]:
    """The steps of greedy tokens and the logit rows each was chosen from (the pick must be the best)."""
    out: list[Step] = []
    for token, row in zip(tokens, rows):
        second, first = np.argsort(row)[-2:]
        assert int(first) == token, f"token {token} is not the argmax of its row ({int(first)})"
        out.append((token, int(second), float(row[first] - row[second])))
    return out


def same_greedy_up_to_a_tie(got: list[dict[str, Any]], want: list[dict[str, Any]],
                            tie: float = BATCH_TIE) -> int:
    """agree_up_to_a_tie for two greedy answers given as logprobs content."""
    return agree_up_to_a_tie(steps_of_logprobs(got), steps_of_logprobs(want), tie)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")

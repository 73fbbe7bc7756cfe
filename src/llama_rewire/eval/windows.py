"""Fixed windows over a text, evaluated the way llama.cpp's ``llama-perplexity`` does.

The whole text is tokenized once (with the model's BOS, as ``llama-perplexity`` does), then cut into
``len(tokens) // n_ctx`` consecutive windows of ``n_ctx`` tokens; the tail that does not fill a window is
dropped. Each window is evaluated fresh (empty KV cache), its first token replaced by BOS when the model
adds one. Only the second half of a window is scored: the logits at positions ``n_ctx/2 .. n_ctx-2``
predict the tokens at ``n_ctx/2+1 .. n_ctx-1``, so every window scores ``n_ctx/2 - 1`` tokens, each with
at least ``n_ctx/2`` tokens of context.

:func:`run_windows` is the one loop that perplexity, compare and sweep share: windows outer, wirings
inner, so that the original's logits are computed once per window and reused by every rewiring.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from ..wiring.spec import WiringSpec as Spec
from .progress import progress_bar

if TYPE_CHECKING:
    from ..llama import Llama

MIN_CTX: Final = 8

# bound on the float64 temporaries of the log-softmax: rows are processed in chunks of this many values
_CHUNK_VALUES: Final = 1 << 22

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def check_ctx(n_ctx: int) -> int:
    """The window size: an even integer >= 8 (half of it is context, half is scored)."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int):
        raise ValueError(f"the window size (ctx) must be an integer, got {n_ctx!r}")
    if n_ctx < MIN_CTX or n_ctx % 2:
        raise ValueError(f"the window size (ctx) must be an even number >= {MIN_CTX}, got {n_ctx}")
    return n_ctx


def check_llm(llm: Llama, n_ctx: int) -> None:
    """The model must keep every token's logits and hold a whole window."""
    if not llm._logits_all:
        raise ValueError("evaluation needs every token's logits: open the model with logits_all=True "
                         "(or with llama_rewire.eval.load)")
    if llm.n_ctx() < n_ctx:
        raise ValueError(f"the model's context ({llm.n_ctx()}) is smaller than the window ({n_ctx}): "
                         f"open it with n_ctx={n_ctx}")


@dataclass(frozen=True)
class Windows:
    """A tokenized text cut into ``count`` windows of ``n_ctx`` tokens."""

    tokens: tuple[int, ...]
    n_ctx: int
    count: int
    bos: int | None  # the token that replaces each window's first token, None when the model adds no BOS

    @property
    def first(self) -> int:
        """The first position whose logits are scored."""
        return self.n_ctx // 2

    @property
    def n_scored(self) -> int:
        """Tokens scored per window."""
        return self.n_ctx - self.first - 1

    def window(self, i: int) -> list[int]:
        """The tokens evaluated for window ``i``."""
        toks = list(self.tokens[i * self.n_ctx : (i + 1) * self.n_ctx])
        if self.bos is not None:
            toks[0] = self.bos
        return toks

    def targets(self, i: int) -> I64:
        """The scored tokens of window ``i`` (the text's tokens, never the BOS substitute)."""
        start = i * self.n_ctx
        return np.asarray(self.tokens[start + self.first + 1 : start + self.n_ctx], dtype=np.int64)


def make_windows(llm: Llama, text: str, n_ctx: int, max_windows: int | None = None) -> Windows:
    """Tokenize ``text`` and cut it into windows; at least two windows of text are required.

    ``max_windows`` keeps only the first windows (like ``llama-perplexity --chunks``).
    """
    check_ctx(n_ctx)
    if not isinstance(text, str):
        raise ValueError(f"the text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the text is empty")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 1):
        raise ValueError(f"max_windows must be a positive integer, got {max_windows!r}")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    if len(tokens) < 2 * n_ctx:
        raise ValueError(
            f"the text is too short: it has {len(tokens)} tokens, and a window of {n_ctx} needs at least "
            f"{2 * n_ctx} (two windows, as llama-perplexity requires); use a longer text or a smaller ctx"
        )
    count = len(tokens) // n_ctx
    if max_windows is not None:
        count = min(count, max_windows)
    bos = llm.token_bos() if llm.model.add_bos() else None
    return Windows(tuple(tokens), n_ctx, count, bos)


# -- scoring --------------------------------------------------------------------------------------


def row_chunks(n_rows: int, n_vocab: int) -> Iterator[slice]:
    """Row slices that keep float64 temporaries of a (rows, n_vocab) block near 32 MiB."""
    step = max(1, _CHUNK_VALUES // max(1, n_vocab))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def log_softmax(logits: npt.NDArray[np.floating]) -> F64:
    """Row-wise log-softmax in float64: z - max - log(sum(exp(z - max)))."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    out: F64 = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def token_nll(logits: F32, targets: npt.NDArray[np.int64]) -> F64:
    """-log p(target) of each row."""
    out = np.empty(len(targets), dtype=np.float64)
    for rows in row_chunks(len(targets), logits.shape[-1]):
        logp = log_softmax(logits[rows])
        out[rows] = -logp[np.arange(len(logp)), targets[rows]]
    return out


def divergence(ref: F32, logits: F32, targets: I64) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """Per scored token: -log q(target), KL(p || q) and whether argmax p == argmax q.

    p is the reference's distribution (the original model), q this one's. Both log-softmaxes go through
    the same code, so identical logits give a KL of exactly 0.
    """
    n = len(targets)
    nll, kl = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    for rows in row_chunks(n, logits.shape[-1]):
        logp, logq = log_softmax(ref[rows]), log_softmax(logits[rows])
        nll[rows] = -logq[np.arange(len(logq)), targets[rows]]
        kl[rows] = np.maximum(np.sum(np.exp(logp) * (logp - logq), axis=-1), 0.0)  # >= 0 up to rounding
    top1 = np.argmax(ref, axis=-1) == np.argmax(logits, axis=-1)
    return nll, kl, top1


def window_logits(llm: Llama, windows: Windows, i: int) -> F32:
    """Evaluate window ``i`` fresh and return (a copy of) the logits of its scored positions."""
    llm.reset()
    llm.eval(windows.window(i))
    return np.array(llm.scores[windows.first : windows.n_ctx - 1], dtype=np.float32)


# -- statistics -----------------------------------------------------------------------------------


def ppl_stats(nll: F64) -> tuple[float, float]:
    """(PPL, its standard error) from per-token NLLs, as llama-perplexity reports them.

    PPL = exp(mean NLL); the error is PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (n - 1)), the
    standard error of the mean NLL carried through exp to first order.
    """
    n = len(nll)
    if n == 0:
        return math.nan, math.nan
    mean = float(np.sum(nll)) / n
    ppl = math.exp(mean)
    if n < 2:
        return ppl, math.nan
    var = float(np.sum(nll * nll)) / n - mean * mean
    return ppl, (ppl * math.sqrt(var / (n - 1)) if var > 0 else 0.0)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined statistic (no token scored) is null."""
    return x if math.isfinite(x) else None


# -- the shared loop ------------------------------------------------------------------------------

KEEP: Final = object()  # a wiring entry meaning "leave the model as it is" (no set_activations)

T = TypeVar("T")


@dataclass
class LoopOutcome(Generic[T]):
    per_window: list[list[T]]  # per completed window, the scorer's result for each wiring
    interrupted: bool


def run_windows(llm: Llama, windows: Windows, wirings: Sequence[Spec | object],
                score: Callable[[int, int, F32], T], *, progress: bool = False,
                desc: str = "eval") -> LoopOutcome[T]:
    """For each window (outer) and each wiring (inner): wire, evaluate, score.

    A wiring is a wiring spec, or :data:`KEEP` for the model as it is. The scorer's results for a
    window are kept only once every wiring has seen it, so an interrupted run (Ctrl-C, caught here) stops
    with whole windows only. The model's wiring is restored at the end.
    """
    saved = llm.wiring
    per_window: list[list[T]] = []
    interrupted = False
    bar = progress_bar(total=windows.count * len(wirings), desc=desc, enabled=progress)
    try:
        for i in range(windows.count):
            results = []
            for j, wiring in enumerate(wirings):
                if wiring is not KEEP:
                    llm.set_wiring(wiring)  # type: ignore[arg-type]  # a spec here
                results.append(score(i, j, window_logits(llm, windows, i)))
                bar.update(1)
            per_window.append(results)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if any(w is not KEEP for w in wirings):
            llm.set_wiring(saved)
        llm.reset()
    return LoopOutcome(per_window, interrupted)

"""The completion engine behind ``Llama.create_completion``: sampled tokens to OpenAI-shaped results.

One ``CompletionRun`` is one call. It pulls tokens from the model's step generator, builds the text
(holding back an incomplete UTF-8 character, and in streaming the tail that could still become a stop
string), stops at end-of-generation, a stop string, a stopping criterion or the token limit, and
collects logprobs when asked for.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _core, _params
from .engine.sampling import SamplingParams
from .llama_grammar import LlamaGrammar

if TYPE_CHECKING:
    from .engine.sampling import LogitsProcessor

PromptType = Union[str, Sequence[int]]
StoppingCriteria = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], bool]

Step = tuple[int, Optional[npt.NDArray[np.single]]]
CriteriaArgs = Callable[[], tuple[npt.NDArray[np.intc], npt.NDArray[np.single]]]


def valid_utf8_prefix(data: bytes) -> str:
    """data as text, holding back a multi-byte character that is split at the end."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return data[: e.start].decode("utf-8", errors="replace")
        return data.decode("utf-8", errors="replace")


class StopMatcher:
    """Finds one stop string in a text given piece by piece, in time linear in the text.

    Knuth-Morris-Pratt: ``state`` is the length of the longest prefix of the stop that the text seen so
    far ends with, which is also how much of the text's end must be held back while streaming. The
    failure table is extended only as far as ``state`` reaches, so a long stop costs nothing until the
    text starts to match it."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.state = 0
        self._fail: list[int] = [0]  # _fail[i]: the longest proper border of stop[:i + 1]

    def _border(self, i: int) -> int:
        fail, s = self._fail, self.stop
        while len(fail) <= i:
            j = len(fail)
            k = fail[j - 1]
            while k > 0 and s[j] != s[k]:
                k = fail[k - 1]
            fail.append(k + 1 if s[j] == s[k] else 0)
        return fail[i]

    def feed(self, piece: str) -> int:
        """Take the next piece of text; the index in piece where the first match ends (exclusive), or -1."""
        s, q = self.stop, self.state
        if q == 0 and s[0] not in piece:
            return -1
        n = len(s)
        for i, c in enumerate(piece):
            while q > 0 and s[q] != c:
                q = self._border(q - 1)
            if s[q] == c:
                q += 1
                if q == n:
                    self.state = self._border(n - 1)
                    return i + 1
        self.state = q
        return -1


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of text could be the start of a stop string."""
    longest = 0
    for stop in stops:
        if stop:
            m = StopMatcher(stop)
            m.feed(text[-(len(stop) - 1):] if len(stop) > 1 else "")
            longest = max(longest, m.state)
    return longest


def log_softmax(logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
    x = logits.astype(np.float64)
    m = float(np.max(x))
    out: npt.NDArray[np.single] = (x - m - math.log(float(np.sum(np.exp(x - m))))).astype(np.single)
    return out


class CompletionIterator:
    """A stream of chunks; ``close()`` stops the generation, ``usage`` is set once it is exhausted."""

    def __init__(self, gen: Iterator[dict[str, Any]], run: CompletionRun) -> None:
        self._gen = gen
        self._run = run

    def __iter__(self) -> CompletionIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._gen)

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()

    @property
    def usage(self) -> dict[str, int] | None:
        return self._run.usage() if self._run.done else None


class CompletionRun:
    """One completion over a step generator of (token, raw logits or None) pairs.

    ``vocab`` is the model (end-of-generation, pieces of text), ``token_text`` names a token in the top
    logprobs, ``criteria_args`` gives what ``stopping_criteria`` is called with (the token ids so far and
    the last logits)."""

    def __init__(self, vocab: _core.Model, steps: Iterator[tuple[int, npt.NDArray[np.single] | None]], *,
                 token_text: Callable[[int], str], prompt_tokens: list[int], limit: int, stops: list[str],
                 meta: dict[str, Any], echo_text: str, logprobs: int | None, prompt_text_len: int = 0,
                 stopping_criteria: Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], bool] | None,
                 criteria_args: CriteriaArgs, prompt_logprobs: dict[str, Any] | None = None,
                 on_finish: Callable[[], None] | None = None) -> None:
        self.vocab = vocab
        self.token_text = token_text
        self.steps = steps
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.stops = [s for s in stops if s]
        self.matchers = [StopMatcher(s) for s in self.stops]
        self.holdback = 0  # trailing characters of the text that could still become a stop string
        self.meta = meta
        self.echo_text = echo_text
        self.prompt_text_len = prompt_text_len  # logprobs text offsets count from the prompt's end
        self.n_logprobs = logprobs
        self.stopping_criteria = stopping_criteria
        self.prompt_logprobs = prompt_logprobs
        self.on_finish = on_finish
        self.criteria_args = criteria_args
        self.completion_tokens: list[int] = []
        self.pieces: list[str] = []               # text of each completion token (for logprobs)
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.finish_reason = "length"
        self.done = False

    # -- the token loop ---------------------------------------------------------------------------

    def _record_logprobs(self, token: int, logits: npt.NDArray[np.single] | None, piece: str) -> None:
        if self.n_logprobs is None or logits is None:
            return
        lp = log_softmax(logits)
        k = max(0, int(self.n_logprobs))
        top: dict[str, float] = {}
        if k > 0:
            idx = np.argpartition(-lp, min(k, len(lp) - 1))[:k]
            for i in idx[np.argsort(-lp[idx])]:
                top[self.token_text(int(i))] = float(lp[i])
        top[piece] = float(lp[token])
        self.token_logprobs.append(float(lp[token]))
        self.top_logprobs.append(top)

    def _stop_at(self, offset: int, new: str) -> int:
        """Where in the text the first stop string starts, once new is appended at offset; -1 if none.

        Only the matchers see the text, piece by piece: no search goes back over earlier text."""
        cut = -1
        for m in self.matchers:
            end = m.feed(new)
            if end >= 0:
                start = offset + end - len(m.stop)
                cut = start if cut < 0 else min(cut, start)
        self.holdback = 0 if cut >= 0 else max((m.state for m in self.matchers), default=0)
        return cut

    def _texts(self) -> Iterator[str]:
        """Yield the completion text so far after each token; sets finish_reason.

        Bytes are decoded incrementally (an incomplete character waits for its next bytes; invalid bytes
        become U+FFFD), so the streamed pieces always add up to the text of the whole completion.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        model = self.vocab
        try:
            while len(self.completion_tokens) < self.limit:
                token, logits = next(self.steps)
                if model.is_eog(token):
                    self.finish_reason = "stop"
                    break
                self.completion_tokens.append(token)
                piece_bytes = model.token_to_piece(token, special=False)
                piece = piece_bytes.decode("utf-8", errors="replace")
                self.pieces.append(piece)
                self._record_logprobs(token, logits, piece)
                new = decoder.decode(piece_bytes)
                cut = self._stop_at(len(text), new)
                text += new
                if cut >= 0:
                    self.finish_reason = "stop"
                    yield text[:cut]
                    return
                if self.stopping_criteria is not None and _params.stop_verdict(
                        self.stopping_criteria(*self.criteria_args())):
                    self.finish_reason = "stop"
                    yield text + decoder.decode(b"", final=True)
                    return
                yield text
            yield text + decoder.decode(b"", final=True)
        finally:
            close = getattr(self.steps, "close", None)
            if close is not None:
                close()
            if not self.done:
                self.done = True
                if self.on_finish is not None:
                    self.on_finish()

    # -- results ----------------------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        n_prompt, n_completion = len(self.prompt_tokens), len(self.completion_tokens)
        return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion}

    def _logprobs(self, first: int, last: int, offset: int, with_prompt: bool) -> dict[str, Any] | None:
        """The logprobs object for completion tokens [first, last), text offsets starting at offset."""
        if self.n_logprobs is None:
            return None
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offsets: list[int] = []
        if with_prompt and self.prompt_logprobs is not None:
            tokens.extend(self.prompt_logprobs["tokens"])
            token_logprobs.extend(self.prompt_logprobs["token_logprobs"])
            top.extend(self.prompt_logprobs["top_logprobs"])
            pos = 0
            for piece in self.prompt_logprobs["tokens"]:
                offsets.append(pos)
                pos += len(piece)
        n = min(last, len(self.token_logprobs))
        for i in range(first, n):
            tokens.append(self.pieces[i])
            token_logprobs.append(self.token_logprobs[i])
            top.append(self.top_logprobs[i])
            offsets.append(offset)
            offset += len(self.pieces[i])
        return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_logprobs,
                "top_logprobs": top}

    def _chunk(self, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.meta,
                "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """Streaming: text pieces as they become final, then a last chunk with the finish reason."""
        sent = 0          # characters of the completion text sent
        sent_tokens = 0   # completion tokens whose logprobs were sent
        text_offset = self.prompt_text_len
        if self.echo_text:
            yield self._chunk(self.echo_text, None, self._logprobs(0, 0, 0, with_prompt=True))
        text = ""
        for text in self._texts():
            ready = len(text) - self.holdback
            if ready > sent:
                n_tok = len(self.completion_tokens)
                yield self._chunk(text[sent:ready], None,
                                  self._logprobs(sent_tokens, n_tok, text_offset + sent, with_prompt=False))
                sent, sent_tokens = ready, n_tok
        if len(text) > sent:
            yield self._chunk(text[sent:], None, self._logprobs(
                sent_tokens, len(self.completion_tokens), text_offset + sent, with_prompt=False))
        yield self._chunk("", self.finish_reason, None)

    def complete(self) -> dict[str, Any]:
        text = ""
        for latest in self._texts():
            text = latest
        logprobs = self._logprobs(0, len(self.completion_tokens), self.prompt_text_len,
                                  with_prompt=bool(self.echo_text))
        if logprobs is not None:
            # tokens cut by a stop string are not part of the text
            self._trim_logprobs(logprobs, self.prompt_text_len + len(text))
        out = self._chunk(self.echo_text + text, self.finish_reason, logprobs)
        out["usage"] = self.usage()
        return out

    @staticmethod
    def _trim_logprobs(logprobs: dict[str, Any], text_len: int) -> None:
        keep = sum(1 for off in logprobs["text_offset"] if off < text_len)
        for key in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
            del logprobs[key][keep:]


def prompt_logprobs(scores: npt.NDArray[np.single], tokens: list[int], k: int,
                    token_text: Callable[[int], str]) -> dict[str, Any]:
    """Logprobs of the prompt tokens (echo), from every prompt position's logits (``scores``)."""
    pieces = [token_text(t) for t in tokens]
    token_lp: list[float | None] = [None]
    top: list[dict[str, float] | None] = [None]
    for i in range(1, len(tokens)):
        lp = log_softmax(scores[i - 1])
        token_lp.append(float(lp[tokens[i]]))
        best = np.argsort(-lp)[:k] if k > 0 else np.zeros(0, dtype=np.intp)
        entry = {token_text(int(j)): float(lp[j]) for j in best}
        entry[pieces[i]] = float(lp[tokens[i]])
        top.append(entry)
    return {"tokens": pieces, "token_logprobs": token_lp, "top_logprobs": top}


def prepend(first: Step, rest: Iterator[Step]) -> Iterator[Step]:
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Request:
    """One ``create_completion`` call's arguments, checked when made: what to complete and how
    (``sampling``). ``stop`` becomes a tuple of stop strings."""

    prompt: PromptType
    sampling: SamplingParams
    suffix: str | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    stop: str | Sequence[str] | None = None
    stream: bool = False
    seed: int | None = None
    model: str | None = None
    stopping_criteria: StoppingCriteria | None = None
    logits_processor: LogitsProcessor | None = None
    grammar: LlamaGrammar | None = None
    grammar_lazy: tuple[Sequence[str], Sequence[int]] | None = None  # trigger patterns and tokens

    def __post_init__(self) -> None:
        def convert(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.max_tokens is not None and not isinstance(self.max_tokens, (int, np.integer)):
            raise ValueError(f"max_tokens must be an integer or None, got {self.max_tokens!r}")
        convert("max_tokens", _params.optional_integer("max_tokens", self.max_tokens))
        logprobs = self.logprobs
        if logprobs is not None and (not isinstance(logprobs, (int, np.integer)) or logprobs < 0):
            raise ValueError(f"logprobs must be a non-negative integer or None, got {logprobs!r}")
        convert("logprobs", _params.optional_integer("logprobs", logprobs))
        if _params.flag("suffix", self.suffix):
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        if self.grammar is not None and not isinstance(self.grammar, LlamaGrammar):
            raise TypeError("grammar must be a LlamaGrammar (see LlamaGrammar.from_string)")
        convert("echo", _params.flag("echo", self.echo))
        convert("stream", _params.flag("stream", self.stream))
        convert("stop", tuple(_params.stop_strings(self.stop)))
        convert("seed", _params.optional_integer("seed", self.seed))
        _params.callback("stopping_criteria", self.stopping_criteria)
        _params.callback("logits_processor", self.logits_processor)

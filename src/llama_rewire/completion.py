"""Turning a stream of sampled tokens into completion text: stop strings, UTF-8, streaming chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .llama import Llama


def valid_utf8_prefix(data: bytes) -> str:
    """data as text, holding back a multi-byte character that is split at the end."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return data[: e.start].decode("utf-8", errors="replace")
        return data.decode("utf-8", errors="replace")


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of text could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class CompletionStream:
    """One completion: consumes sampled tokens until EOG, a stop string or the token limit."""

    def __init__(self, llama: Llama, tokens: Iterator[int], *, prompt_tokens: list[int], limit: int,
                 stops: list[str], meta: dict[str, Any], echo_text: str) -> None:
        self.llama = llama
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.stops = [s for s in stops if s]
        self.meta = meta
        self.echo_text = echo_text
        self.completion_tokens: list[int] = []
        self.finish_reason = "length"

    def _texts(self) -> Iterator[str]:
        """Yield the completion text so far after each token; sets finish_reason."""
        data = b""
        try:
            while len(self.completion_tokens) < self.limit:
                token = next(self.tokens)
                if self.llama.model.is_eog(token):
                    self.finish_reason = "stop"
                    break
                self.completion_tokens.append(token)
                data += self.llama.model.token_to_piece(token, special=False)
                text = valid_utf8_prefix(data)
                cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
                if cut >= 0:
                    self.finish_reason = "stop"
                    yield text[:cut]
                    return
                yield text
            yield data.decode("utf-8", errors="replace")
        finally:
            close = getattr(self.tokens, "close", None)
            if close is not None:
                close()

    def _chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            **self.meta,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _usage(self) -> dict[str, int]:
        n_prompt, n_completion = len(self.prompt_tokens), len(self.completion_tokens)
        return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """Streaming: text pieces as they become final, then a last chunk with the finish reason."""
        sent = 0
        if self.echo_text:
            yield self._chunk(self.echo_text, None)
        text = ""
        for text in self._texts():
            ready = len(text) - stop_holdback(text, self.stops)
            if ready > sent:
                yield self._chunk(text[sent:ready], None)
                sent = ready
        if len(text) > sent:
            yield self._chunk(text[sent:], None)
        yield self._chunk("", self.finish_reason)

    def complete(self) -> dict[str, Any]:
        text = ""
        for latest in self._texts():
            text = latest
        out = self._chunk(self.echo_text + text, self.finish_reason)
        out["usage"] = self._usage()
        return out

"""Limits checked before a request waits for its model: inputs that cannot fit are refused before any
work is done on them (tokenizing an 18-million-character prompt, a logit_bias of 500,000 entries).

The request body's size is limited before this (``--max_body_bytes``, :mod:`.middleware`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import APIError

if TYPE_CHECKING:
    from .pool import ServedModel

# prompts shorter than this are left to the model's own check (tokenizing them costs little)
CHEAP_PROMPT_BYTES = 16 << 10
# /extras/tokenize takes text of at most this many bytes (a tokenizer's pre-split of long runs of spaces
# grows faster than linearly: 14 MB held a server for 82 s)
MAX_TOKENIZE_BYTES = 1 << 20


def _too_long(served: ServedModel, n_bytes: int, limit: int, param: str) -> APIError:
    return APIError(400, f"The {param} ({n_bytes} bytes) cannot fit the context window of "
                         f"{served.llama.n_ctx()} tokens: no token of this model stands for more than "
                         f"{limit // max(served.llama.n_ctx(), 1)} bytes", param=param,
                    code="context_length_exceeded")


async def check_prompt_size(served: ServedModel, prompt: str | list[int]) -> None:
    """A 400 (``context_length_exceeded``) for a prompt that cannot fit a sequence's window: more token
    ids than ``n_ctx``, or more text than ``n_ctx`` of the vocabulary's longest tokens."""
    if isinstance(prompt, list):
        if len(prompt) > CHEAP_PROMPT_BYTES // 4 and len(prompt) > served.llama.n_ctx():
            raise APIError(400, f"The prompt ({len(prompt)} tokens) exceeds the context window of "
                                f"{served.llama.n_ctx()} tokens", param="prompt",
                           code="context_length_exceeded")
        return
    await _check_text(served, len(prompt.encode("utf-8", errors="surrogatepass")), "prompt")


def _message_bytes(messages: list[dict[str, Any]]) -> int:
    """The bytes of the messages' text, as a chat template renders at least (trimmed, as some do)."""
    total = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                total += len(text.strip().encode("utf-8", errors="surrogatepass"))
    return total


async def check_messages_size(served: ServedModel, messages: list[dict[str, Any]]) -> None:
    """As :func:`check_prompt_size`, for the text of a chat's messages."""
    await _check_text(served, _message_bytes(messages), "messages")


async def _check_text(served: ServedModel, n_bytes: int, param: str) -> None:
    if n_bytes <= CHEAP_PROMPT_BYTES:
        return
    limit = await served.prompt_bytes_limit()
    if limit is not None and n_bytes > limit:
        raise _too_long(served, n_bytes, limit, param)


def check_tokenize_size(text: str) -> None:
    """A 400 for /extras/tokenize text over MAX_TOKENIZE_BYTES."""
    n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    if n_bytes > MAX_TOKENIZE_BYTES:
        raise APIError(400, f"input: {n_bytes} bytes of text; /extras/tokenize takes at most "
                            f"{MAX_TOKENIZE_BYTES}", param="input")


def check_bias_size(served: ServedModel, logit_bias: dict[str, float]) -> None:
    """A 400 for a logit_bias with more entries than the vocabulary has tokens (some key is then no
    token of it, or a text repeated)."""
    n_vocab = served.llama.n_vocab()
    if len(logit_bias) > n_vocab:
        raise APIError(400, f"logit_bias has {len(logit_bias)} entries, more than the model's {n_vocab} "
                            "tokens", param="logit_bias")

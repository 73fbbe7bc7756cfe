"""Tokenizers for ``Llama(tokenizer=...)``, shaped like llama-cpp-python's ``llama_cpp.llama_tokenizer``.

:class:`LlamaTokenizer` is a model's own vocabulary (what ``Llama.tokenize`` uses by default);
:class:`LlamaHFTokenizer` wraps a Hugging Face ``transformers`` tokenizer, for a model whose GGUF
vocabulary tokenizes differently from its original one. Any :class:`BaseLlamaTokenizer` can replace the
model's: ``Llama(path, tokenizer=LlamaHFTokenizer.from_pretrained("org/model"))``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from . import _core, _logging, _params
from .engine import vocab


class BaseLlamaTokenizer(abc.ABC):
    """Text (UTF-8 bytes) to token ids and back."""

    @abc.abstractmethod
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_bos`` adds the beginning-of-sequence token, ``special`` parses
        special-token texts (``<|im_start|>``) as those tokens."""

    @abc.abstractmethod
    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False
    ) -> bytes:
        """The text of ``tokens``; after ``prev_tokens`` only the continuation's text; ``special`` writes
        special tokens' texts."""


class LlamaTokenizer(BaseLlamaTokenizer):
    """The vocabulary of a loaded model (its GGUF's), whatever tokenizer the Llama was given. ``llama`` is
    the ``Llama`` (or anything with its ``_vocab_tokenize`` / ``_vocab_detokenize``)."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        tokens: list[int] = self.llama._vocab_tokenize(text, add_bos, special)
        return tokens

    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False
    ) -> bytes:
        text: bytes = self.llama._vocab_detokenize(tokens, prev_tokens, special)
        return text

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """``tokenize`` of a ``str`` (characters that do not encode are dropped)."""
        return self.tokenize(text.encode("utf-8", errors="ignore"), add_bos=add_bos, special=special)

    def decode(self, tokens: list[int]) -> str:
        """``detokenize`` as a ``str`` (an incomplete UTF-8 sequence at the end is dropped)."""
        return self.detokenize(tokens).decode("utf-8", errors="ignore")

    @classmethod
    def from_ggml_file(cls, path: str) -> LlamaTokenizer:
        """The tokenizer of a GGUF file (loaded vocabulary only)."""
        return cls(_VocabFile(path))


class _VocabFile:
    """The vocabulary of a GGUF file, loaded alone (as ``Llama(path, vocab_only=True)`` would)."""

    def __init__(self, path: str) -> None:
        path = _params.path("path", path)
        _params.model_file(path)
        _logging.install()
        _logging.set_verbose(False)
        self.model = _core.Model(path, vocab_only=True)

    def _vocab_tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return vocab.tokenize(self.model, text, add_bos, special)

    def _vocab_detokenize(self, tokens: list[int], prev_tokens: list[int] | None, special: bool) -> bytes:
        return vocab.detokenize(self.model, tokens, prev_tokens, special)


class LlamaHFTokenizer(BaseLlamaTokenizer):
    """A Hugging Face tokenizer (anything with ``encode(text, add_special_tokens=...)`` and
    ``decode(ids, skip_special_tokens=...)``)."""

    def __init__(self, hf_tokenizer: Any) -> None:
        if not (callable(getattr(hf_tokenizer, "encode", None))
                and callable(getattr(hf_tokenizer, "decode", None))):
            raise TypeError("hf_tokenizer must have encode() and decode() (a transformers tokenizer)")
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        # as in llama-cpp-python: add_special_tokens follows `special` (a HF tokenizer adds its BOS
        # itself when it adds special tokens)
        ids: Sequence[int] = self.hf_tokenizer.encode(text.decode("utf-8", errors="ignore"),
                                                      add_special_tokens=special)
        return [int(t) for t in ids]

    def _text(self, tokens: Sequence[int], special: bool) -> bytes:
        text: str = self.hf_tokenizer.decode(list(tokens), skip_special_tokens=not special)
        return text.encode("utf-8", errors="ignore")

    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False
    ) -> bytes:
        if prev_tokens is None:
            return self._text(tokens, special)
        # the continuation: a token's text may depend on the one before it (SentencePiece spaces)
        prefix = self._text(prev_tokens, special)
        return self._text(list(prev_tokens) + list(tokens), special)[len(prefix) :]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str) -> LlamaHFTokenizer:
        """``transformers.AutoTokenizer.from_pretrained(...)`` wrapped (needs transformers)."""
        try:
            from transformers import AutoTokenizer  # type: ignore[import-not-found]
        except ImportError:
            raise ImportError("LlamaHFTokenizer.from_pretrained needs the transformers package: "
                              "pip install transformers") from None
        return cls(AutoTokenizer.from_pretrained(pretrained_model_name_or_path))


__all__ = ["BaseLlamaTokenizer", "LlamaHFTokenizer", "LlamaTokenizer"]

"""A model's own vocabulary: text to token ids and back, as ``Llama.tokenize`` / ``detokenize`` do."""

from __future__ import annotations

from collections.abc import Sequence

from .. import _core


def tokenize(model: _core.Model, text: bytes, add_bos: bool, special: bool) -> list[int]:
    """Token ids of ``text`` (UTF-8 bytes); ``add_bos`` adds the model's special prefix tokens,
    ``special`` parses special-token texts as those tokens."""
    if isinstance(text, str):
        raise TypeError("tokenize takes bytes: use text.encode('utf-8')")
    return list(model.tokenize(bytes(text), add_special=add_bos, parse_special=special))


def detokenize(model: _core.Model, tokens: Sequence[int], prev_tokens: Sequence[int] | None,
               special: bool) -> bytes:
    """Token ids to UTF-8 bytes: the pieces joined, as llama-cpp-python does. A leading BOS drops the space
    its first word carries (SentencePiece vocabularies); after ``prev_tokens`` the text is the
    continuation, so nothing is dropped."""
    toks = [int(t) for t in tokens]
    out = b"".join(model.token_to_piece(t, special=special) for t in toks)
    if toks and not prev_tokens and toks[0] == model.token_bos() and out.startswith(b" "):
        out = out[1:]
    return out

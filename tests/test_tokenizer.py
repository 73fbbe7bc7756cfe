"""Tokenization on llama.cpp's vocab-only GGUFs: llama-cpp-python's own expectations, and every case of
the ``.inp``/``.out`` files that llama.cpp's tests/test-tokenizer-0 checks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from llama_rewire import Llama

MODELS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"
VOCABS_WITH_TESTS = sorted(p.name.removeprefix("ggml-vocab-").removesuffix(".gguf.inp")
                           for p in MODELS.glob("ggml-vocab-*.gguf.inp"))
SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vocab_tests(name: str) -> dict[str, list[int]]:
    """The cases of ggml-vocab-<name>.gguf.inp/.out, read as test-tokenizer-0.cpp reads them.

    The .inp file holds the texts, each followed by the separator line (the last one may lack it); the
    .out file one line of space-separated ids per text (stripped). Cases go into a map keyed by text, so
    a repeated text keeps its last ids.
    """
    raw = (MODELS / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        end = raw.find(SEPARATOR, pos)
        if end < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    lines = (MODELS / f"ggml-vocab-{name}.gguf.out").read_bytes().decode("utf-8").split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines  # getline: no line after the last newline
    assert len(texts) == len(lines), f"{name}: {len(texts)} texts, {len(lines)} id lines"
    return {text: [int(t) for t in line.strip().split()] for text, line in zip(texts, lines)}


# -- llama-cpp-python's expectations (its tests/test_llama.py, on the same llama-spm vocab) ---------


def test_llama_spm_tokenize(vocab: Callable[[str], Llama]) -> None:
    llm = vocab("llama-spm")
    assert (llm.token_bos(), llm.token_eos()) == (1, 2)
    assert llm.tokenize(b"Hello World") == [1, 15043, 2787]
    assert llm.tokenize(b"Hello World", add_bos=False) == [15043, 2787]
    assert llm.tokenize(b" Hello World") == [1, 29871, 15043, 2787]
    assert llm.tokenize(b"") == [1]
    assert llm.tokenize(b"", add_bos=True, special=True) == [llm.token_bos()]
    assert llm.tokenize(b"", add_bos=False) == []


def test_llama_spm_special_tokens_parse_only_with_special(vocab: Callable[[str], Llama]) -> None:
    llm = vocab("llama-spm")
    assert llm.tokenize(b"Hello World</s>") == [1, 15043, 2787, 829, 29879, 29958]  # "</" "s" ">"
    assert llm.tokenize(b"Hello World</s>", special=True) == [1, 15043, 2787, 2]
    assert llm.tokenize(b"</s>", add_bos=False, special=True) == [2]
    assert llm.tokenize(b"</s>", add_bos=False) == [1533, 29879, 29958]  # " </" (the SPM space) "s" ">"
    assert llm.tokenize(b"<s>Hi</s>", special=True) == [1, 1, 6324, 2]  # the text's <s> after the BOS


def test_llama_spm_detokenize_with_bos(vocab: Callable[[str], Llama]) -> None:
    """llama-cpp-python: the SentencePiece space before the first word goes when a BOS leads."""
    llm = vocab("llama-spm")
    assert llm.detokenize([1, 15043, 2787]) == b"Hello World"
    assert llm.detokenize(llm.tokenize(b"")) == b""


def test_llama_spm_detokenize_without_bos(vocab: Callable[[str], Llama]) -> None:
    """llama-cpp-python: without the BOS the pieces are joined as they are (its test asserts the text
    differs from "Hello World": the first piece is " Hello")."""
    llm = vocab("llama-spm")
    assert llm.detokenize([15043, 2787]) != b"Hello World"
    assert llm.detokenize([15043, 2787]) == b" Hello World"


def test_llama_spm_detokenize_special(vocab: Callable[[str], Llama]) -> None:
    llm = vocab("llama-spm")
    assert llm.detokenize([1, 15043, 2787], special=True) == b"<s> Hello World"
    assert llm.detokenize([15043, 2787, 2], special=True) == b" Hello World</s>"
    assert llm.detokenize([15043, 2787, 2]).endswith(b"World")  # EOS text only with special
    assert llm.detokenize([2787], prev_tokens=[15043]) == b" World"


def test_detokenize_joins_pieces_without_cleanup(vocab: Callable[[str], Llama]) -> None:
    """llama-cpp-python joins token pieces; it does not apply the vocabulary's clean-up of spaces
    before punctuation (which llama.cpp's llama_detokenize does for GPT-2-like vocabularies)."""
    llm = vocab("gpt-2")
    ids = llm.tokenize(b"How are you ?", add_bos=False)
    assert ids == [2437, 389, 345, 5633]
    assert llm.detokenize(ids) == b"How are you ?"


def test_llama_bpe(vocab: Callable[[str], Llama]) -> None:
    llm = vocab("llama-bpe")
    assert llm.tokenize(b"Hello World") == [128000, 9906, 4435]
    assert llm.detokenize([128000, 9906, 4435]) == b"Hello World"
    assert llm.detokenize([128000, 9906, 4435], special=True) == b"<|begin_of_text|>Hello World"
    assert llm.tokenize(b"<|eot_id|>", add_bos=False, special=True) == [128009]
    assert llm.tokenize(b"<|eot_id|>", add_bos=False) == [27, 91, 68, 354, 851, 91, 29]
    assert llm.detokenize([128009]) == b""
    assert llm.detokenize([128009], special=True) == b"<|eot_id|>"


@pytest.mark.parametrize(("name", "bos", "eos", "hello_world"), [
    ("llama-spm", 1, 2, [1, 15043, 2787]),
    ("llama-bpe", 128000, 128001, [128000, 9906, 4435]),
    ("phi-3", 1, 32000, [1, 15043, 2787]),
    ("qwen2", 151643, 151643, [9707, 4337]),  # no BOS added
    ("gpt-2", 50256, 50256, [15496, 2159]),
    ("gemma-4", 2, 1, [2, 9259, 4109]),
    ("command-r", 5, 255001, [5, 28339, 3930]),
    ("bert-bge", 101, -1, [101, 7592, 2088, 102]),  # [CLS] ... [SEP], lowercased
    ("baichuan", 1, 2, [1, 24568, 2025]),
    ("nomic-bert-moe", 0, 2, [0, 35378, 6661, 2]),
])
def test_special_ids_and_hello_world(vocab: Callable[[str], Llama], name: str, bos: int, eos: int,
                                     hello_world: list[int]) -> None:
    llm = vocab(name)
    assert (llm.token_bos(), llm.token_eos()) == (bos, eos)
    assert llm.tokenize(b"Hello World") == hello_world


def test_tokenize_takes_bytes(vocab: Callable[[str], Llama]) -> None:
    with pytest.raises(TypeError):
        vocab("llama-spm").tokenize("Hello World")  # type: ignore[arg-type]


# -- llama.cpp's tokenizer test files --------------------------------------------------------------


def test_every_vocab_with_tests_is_covered() -> None:
    assert VOCABS_WITH_TESTS == [
        "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
        "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder",
    ]
    sizes = {name: len(read_vocab_tests(name)) for name in VOCABS_WITH_TESTS}
    assert sizes == {name: 50 if name == "qwen35" else 46 for name in VOCABS_WITH_TESTS}


@pytest.mark.parametrize("name", VOCABS_WITH_TESTS)
def test_vocab_test_file(vocab: Callable[[str], Llama], name: str) -> None:
    """Every case tokenizes to its expected ids, as test-tokenizer-0 tokenizes it: no BOS/EOS added,
    special tokens not parsed."""
    llm = vocab(name)
    failures = []
    for text, expected in read_vocab_tests(name).items():
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if got != expected:
            failures.append(f"{text!r}: expected {expected}, got {got}")
    assert not failures, "\n".join(failures)

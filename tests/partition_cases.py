"""Texts that stress llama.cpp's special-token partition, and their tokens as recorded.

``tests/data/special_partition.json`` holds, for several of llama.cpp's vocab-only GGUFs, texts built
from the vocabulary's special-token strings (whole, cut, overlapping, glued, between whitespace that
the LSTRIP/RSTRIP attributes strip) with their tokens under ``special=True`` and ``special=False``.
The tokens were recorded with llama.cpp's original partition (one scan of the text per special token,
splitting a linked list of fragments); the linear partition must give the same tokens.

``python tests/partition_cases.py OUT.json`` records them again with the build that is installed.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"
DATA = Path(__file__).resolve().parent / "data" / "special_partition.json"

# vocabularies with different special-token shapes: RSTRIP on every special (phi-3), LSTRIP "<mask>"
# (nomic-bert-moe), runs of spaces as user-defined tokens (gpt-neox), single characters as user-defined
# tokens (deepseek-llm), hundreds of "<|...|>" tokens (qwen2, llama-bpe), SentencePiece (llama-spm)
VOCABS = ["phi-3", "nomic-bert-moe", "gpt-neox", "deepseek-llm", "qwen2", "llama-bpe", "llama-spm",
          "bert-bge"]
CASES_PER_VOCAB = 60
FILLERS = [" ", "  ", "\n", "\t", " \n ", "a", "hello", " world", "é", "日本", "ø", "<", ">", "|", "<|",
           "|>", "[", "]", "_", "0"]


def special_texts(name: str) -> list[str]:
    """The texts of the tokens llama.cpp partitions on: control, user-defined and unknown tokens."""
    import gguf

    reader = gguf.GGUFReader(str(MODELS / f"ggml-vocab-{name}.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    types = reader.fields["tokenizer.ggml.token_type"]
    out = []
    for i, part in enumerate(types.data):
        if int(types.parts[part][0]) in (2, 3, 4):  # unknown, control, user-defined
            text = bytes(tokens.parts[tokens.data[i]]).decode("utf-8", errors="replace")
            if text:
                out.append(text)
    return out


def make_texts(name: str, specials: list[str]) -> list[str]:
    rng = random.Random(f"partition-{name}")
    chosen = sorted(specials, key=len, reverse=True)[:6] + rng.sample(specials, min(30, len(specials)))
    pool: list[str] = []
    for s in chosen:
        k = rng.randrange(1, len(s)) if len(s) > 1 else 1
        pool += [s, s, s[:k], s[k:], s[:-1] + s, s + s[1:], s[:k] + s, " " + s + " ", "\n" + s]
    texts = []
    for _ in range(CASES_PER_VOCAB):
        n = rng.randrange(1, 30)
        texts.append("".join(rng.choice(pool) if rng.random() < 0.65 else rng.choice(FILLERS)
                             for _ in range(n)))
    texts += ["".join(chosen[:3]) * 20, (" " + chosen[0]) * 30 + "  ", chosen[0][:-1] * 10 + chosen[0]]
    return texts


def record(out: Path) -> None:
    from llama_rewire import Llama

    data: dict[str, list[dict[str, object]]] = {}
    for name in VOCABS:
        texts = make_texts(name, special_texts(name))
        llm = Llama(str(MODELS / f"ggml-vocab-{name}.gguf"), vocab_only=True, verbose=False)
        data[name] = [{"text": t,
                       "special": llm.tokenize(t.encode(), add_bos=False, special=True),
                       "plain": llm.tokenize(t.encode(), add_bos=False, special=False)} for t in texts]
        llm.close()
        print(name, len(texts), file=sys.stderr)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)

"""Shared fixtures: tiny generated GGUF models (with their numpy specs) and the real demo models."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models

from llama_rewire import Llama

# F32 KV cache and no flash attention: the engine then matches the float64 reference to ~1e-6
EXACT = {"n_ctx": 64, "logits_all": True, "type_k": 0, "type_v": 0, "flash_attn": False,
         "n_threads": 2, "verbose": False}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Any]]:
    """tiny(kind) -> (path, spec) for kind in llama, gpt2, moe, moe_shared (written once a session)."""
    made: dict[str, tuple[Path, Any]] = {}
    root = tmp_path_factory.mktemp("tiny")

    def get(kind: str) -> tuple[Path, Any]:
        if kind not in made:
            path = root / f"{kind}.gguf"
            made[kind] = (path, tiny_models.WRITERS[kind](path))
        return made[kind]

    return get


@pytest.fixture()
def tiny_llm(tiny: Callable[[str], tuple[Path, Any]]) -> Iterator[Callable[..., Llama]]:
    """tiny_llm(kind, **kwargs) -> an open Llama over a tiny model; closed after the test."""
    opened: list[Llama] = []

    def make(kind: str, **kwargs: Any) -> Llama:
        path, _ = tiny(kind)
        llm = Llama(str(path), **{**EXACT, **kwargs})
        opened.append(llm)
        return llm

    yield make
    for llm in opened:
        llm.close()


def _real(name: str) -> Path:
    from llama_rewire.models import fetch

    return fetch(name, progress=False)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _real("smollm2")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return _real("gemma3-270m")


@pytest.fixture(scope="session")
def real_model_path(request: pytest.FixtureRequest) -> Path:
    """Parametrized indirectly with 'smollm2' or 'gemma3-270m'."""
    return _real(request.param)


VOCAB_MODELS = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models"


@pytest.fixture(scope="module")
def vocab() -> Iterator[Callable[[str], Llama]]:
    """vocab(name) -> a vocab-only Llama over llama.cpp's ggml-vocab-<name>.gguf (opened once per module)."""
    opened: dict[str, Llama] = {}

    def get(name: str) -> Llama:
        if name not in opened:
            path = VOCAB_MODELS / f"ggml-vocab-{name}.gguf"
            opened[name] = Llama(str(path), vocab_only=True, verbose=False)
        return opened[name]

    yield get
    for llm in opened.values():
        llm.close()

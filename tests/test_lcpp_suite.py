"""llama-cpp-python's own offline tests, run against llama_rewire with only the import swapped.

The test files come from the llama-cpp-python sdist that the build takes llama.cpp from (pinned by
version and sha256 in scripts/llama_vendor.py; downloaded with pip once, then kept under vendor/). They
are imported with ``llama_cpp`` (and its submodules) standing for ``llama_rewire``, and with
``huggingface_hub.hf_hub_download`` answering for the hub models from the demo model. Their tests then run
here unchanged, except for those listed in NOT_APPLICABLE with the reason.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import llama_rewire
from llama_rewire import llama_chat_format, llama_grammar, llama_speculative, llama_types

ROOT = Path(__file__).resolve().parent.parent


def _suite_dir() -> Path:
    spec = importlib.util.spec_from_file_location("_llama_vendor", ROOT / "scripts" / "llama_vendor.py")
    assert spec is not None and spec.loader is not None
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    path: Path = vendor.extract_lcpp_tests()
    return path


SUITE = _suite_dir()

# their tests that do not apply, and why
NOT_APPLICABLE = {
    "test_llama.py::test_llama_cpp_tokenization": "reads llama._ctx.ctx, the ctypes context pointer",
    "test_llama.py::test_real_model": "drives the ctypes layer (llama_cpp._internals, llama_cpp.llama_*)",
    "test_llama.py::test_real_llama": "checks the text of one hub model (Qwen3.5-0.8B Q8_0)",
    "test_llama.py::test_real_llama_repeated_prompt_cache":
        "checks the text of one hub model (Qwen3.5-0.8B Q8_0)",
    "test_llama.py::test_real_llama_embeddings":
        "needs a pooled embedding hub model (bge-small); the demo models are causal LMs, whose embeddings "
        "are per token (tests/test_api.py checks batched against one-by-one embeddings on them)",
    "test_llama.py::test_recurrent_model_prompt_cache_reset": "needs a recurrent hub model (Mamba-130M)",
    "test_llama.py::test_hybrid_model_prompt_cache_reset": "needs a hybrid hub model (Falcon-H1-Tiny)",
    "test_llama.py::<prompt-cache tests>[recurrent, hybrid]":
        "their recurrent (Mamba-130M) and hybrid (Falcon-H1-Tiny) cases need those hub models; the "
        "transformer case runs below on the demo model",
}

# hub files their fixtures ask for -> the demo model standing in for them
HUB_STAND_INS = {
    ("ggml-org/models", "tinyllamas/stories15M-q4_0.gguf"): "smollm2",
}


def _hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
    from llama_rewire.models import fetch

    name = HUB_STAND_INS.get((repo_id, filename))
    if name is None:
        raise LookupError(f"{repo_id}/{filename}: no demo model stands in for it (see NOT_APPLICABLE)")
    return str(fetch(name, progress=False))


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _log_softmax(x: Any, axis: int = -1) -> Any:
    return llama_rewire.Llama.logits_to_logprobs(x, axis=axis)


def _not_available(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("llama_rewire has no ctypes layer (llama_cpp._internals)")


def _import_swapped(filename: str) -> types.ModuleType:
    """Import one of their test files with llama_cpp standing for llama_rewire."""
    internals = _stub("llama_cpp._internals", __getattr__=lambda name: _not_available)
    # llama_rewire's namespace under llama_cpp's name (a module of its own only so that
    # `import llama_cpp._internals` finds the stub)
    llama_cpp = _stub("llama_cpp", **{k: v for k, v in vars(llama_rewire).items() if not k.startswith("__")},
                      __version__=llama_rewire.__version__, _internals=internals)
    swapped = {
        "llama_cpp": llama_cpp,
        "llama_cpp.llama_types": llama_types,
        "llama_cpp.llama_chat_format": llama_chat_format,
        "llama_cpp.llama_grammar": llama_grammar,
        "llama_cpp.llama_speculative": llama_speculative,
        "llama_cpp._internals": internals,
        "huggingface_hub": _stub("huggingface_hub", hf_hub_download=_hf_hub_download),
        "scipy": _stub("scipy"),
        "scipy.special": _stub("scipy.special", log_softmax=_log_softmax),
    }
    saved = {name: sys.modules.get(name) for name in swapped}
    sys.modules.update(swapped)
    try:
        spec = importlib.util.spec_from_file_location(f"lcpp_suite_{Path(filename).stem}",
                                                      SUITE / "tests" / filename)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


chat_format_suite = _import_swapped("test_llama_chat_format.py")
grammar_suite = _import_swapped("test_llama_grammar.py")
speculative_suite = _import_swapped("test_llama_speculative.py")
llama_suite = _import_swapped("test_llama.py")

# their fixtures, visible to the tests of this module
llama_cpp_transformer_model_path = llama_suite.llama_cpp_transformer_model_path


def _their_tests(module: types.ModuleType, filename: str) -> list[str]:
    return [n for n in vars(module) if n.startswith("test_") and f"{filename}::{n}" not in NOT_APPLICABLE]


PLAIN = [
    *((chat_format_suite, n) for n in _their_tests(chat_format_suite, "test_llama_chat_format.py")),
    *((grammar_suite, n) for n in _their_tests(grammar_suite, "test_llama_grammar.py")),
    *((speculative_suite, n) for n in _their_tests(speculative_suite, "test_llama_speculative.py")),
    (llama_suite, "test_llama_cpp_version"),
]
CACHE_TESTS = [
    "test_exact_cached_prompt_reuse_matches_fresh",
    "test_loaded_exact_cached_prompt_reuse_matches_fresh",
    "test_ram_cache_exact_prompt_hit_matches_fresh",
    "test_shorter_prompt_prefix_reuse_matches_fresh",
]


def test_every_test_of_theirs_is_run_or_listed() -> None:
    """Nothing of their suite is silently dropped: each test function runs here or is listed."""
    run = {f"{Path(m.__file__ or '').name}::{n}" for m, n in PLAIN}
    names = set()
    for path in sorted((SUITE / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        names |= {f"{path.name}::{f.name}" for f in tree.body
                  if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    covered = {f"test_llama.py::{n}" for n in CACHE_TESTS}
    assert names - run - covered - set(NOT_APPLICABLE) == set()
    assert {k for k in NOT_APPLICABLE if "<" not in k} <= names


@pytest.mark.parametrize(("module", "name"), PLAIN, ids=[f"{m.__name__[11:]}::{n}" for m, n in PLAIN])
def test_theirs(module: types.ModuleType, name: str) -> None:
    getattr(module, name)()


@pytest.mark.real_model
@pytest.mark.parametrize("name", CACHE_TESTS)
def test_theirs_prompt_cache_on_a_transformer(name: str, request: pytest.FixtureRequest) -> None:
    """Their prompt-cache reuse tests, transformer case, on the demo model."""
    getattr(llama_suite, name)(request, "llama_cpp_transformer_model_path", False, False)


def _public_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def test_every_llama_types_name_is_at_the_top_level() -> None:
    """llama-cpp-python re-exports its whole llama_types namespace at the top level; so do we."""
    theirs = _public_names(SUITE / "llama_cpp" / "llama_types.py")
    assert theirs
    assert {n for n in theirs if not hasattr(llama_rewire, n)} == set()
    assert {n for n in theirs if not hasattr(llama_types, n)} == set()
    assert theirs <= set(llama_rewire.__all__)

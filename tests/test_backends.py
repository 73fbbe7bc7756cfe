"""Which backend modules the portable build loads (llama_rewire/_backends.py), on a stand-in for _core:
the scores and the loading are ggml's, the choice is ours. tests/test_wheel.py runs the real modules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llama_rewire
from llama_rewire import _backends


def fake_core(directory: Path, scores: dict[str, int], others: tuple[str, ...] = ("rpc",)) -> Any:
    """Module files in directory (empty: never opened) and a _core that scores and 'loads' them."""
    for variant in scores:
        (directory / f"{_backends.CPU_PREFIX}{variant}{_backends.SUFFIX}").touch()
    for name in others:
        (directory / f"{_backends.PREFIX}{name}{_backends.SUFFIX}").touch()
    # ggml itself, linked rather than loaded: never a candidate
    (directory / f"{_backends.PREFIX}base{_backends.SUFFIX}").touch()
    (directory / f"libllama-rewire-ggml{_backends.SUFFIX}").touch()
    loaded: list[str] = []

    def score(path: str) -> int:
        assert Path(path).parent == directory
        return scores[Path(path).name[len(_backends.CPU_PREFIX) : -len(_backends.SUFFIX)]]

    def load(path: str) -> str:
        loaded.append(Path(path).name)
        return "CPU" if Path(path).name.startswith(_backends.CPU_PREFIX) else Path(path).name.upper()

    return SimpleNamespace(BACKEND_DL=True, __file__=str(directory / "_core.so"), backend_score=score,
                           backend_load=load, loaded=loaded)  # fmt: skip


SCORES = {"x64": 1, "sse42": 5, "haswell": 64, "skylakex": 0, "sapphirerapids": 0}


def test_system_info_says_which_build_this_is() -> None:
    info = llama_rewire.system_info()
    if llama_rewire._core.BACKEND_DL:  # a portable build: one CPU variant loaded, the best it has
        assert info["build"] == "portable"
        assert info["cpu_variants"][info["cpu_variant"]] == max(info["cpu_variants"].values()) > 0
    else:  # `pip install .`: everything static, for this CPU, nothing loaded
        assert (info["build"], info["cpu_variant"], info["cpu_variants"]) == ("native", "native", {})
        assert _backends.LOADED.modules == []
    assert [d for d in info["devices"] if d["kind"] == "cpu"]  # a CPU device is registered either way


def test_the_best_scoring_variant_is_loaded_then_every_other_backend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    core = fake_core(tmp_path, SCORES, others=("rpc", "metal"))
    monkeypatch.setattr(_backends, "_core", core)
    monkeypatch.delenv(_backends.VARIANT_ENV, raising=False)
    got = _backends.load()
    assert (got.build, got.cpu_variant) == ("portable", "haswell")
    assert got.cpu_scores == SCORES
    # one CPU variant only, first; ggml-base and ggml are never loaded as modules
    suffix = _backends.SUFFIX
    assert core.loaded == [f"{_backends.CPU_PREFIX}haswell{suffix}", f"{_backends.PREFIX}metal{suffix}",
                           f"{_backends.PREFIX}rpc{suffix}"]  # fmt: skip
    assert got.modules[0] == "CPU"


@pytest.mark.parametrize(("value", "message"), [
    ("skylakex", "needs instructions this CPU lacks"),
    ("pentium", "is not a CPU variant of this build"),
])  # fmt: skip
def test_a_forced_variant_that_cannot_run_is_an_import_error_before_anything_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:  # fmt: skip
    core = fake_core(tmp_path, SCORES)
    monkeypatch.setattr(_backends, "_core", core)
    monkeypatch.setenv(_backends.VARIANT_ENV, value)
    with pytest.raises(ImportError, match=message):
        _backends.load()
    assert core.loaded == []


def test_a_forced_variant_that_runs_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    core = fake_core(tmp_path, SCORES)
    monkeypatch.setattr(_backends, "_core", core)
    monkeypatch.setenv(_backends.VARIANT_ENV, " x64 ")
    assert _backends.load().cpu_variant == "x64"
    assert core.loaded[0] == f"{_backends.CPU_PREFIX}x64{_backends.SUFFIX}"


@pytest.mark.parametrize("scores", [{}, {"x64": 0, "haswell": 0}])
def test_no_cpu_variant_that_runs_is_an_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     scores: dict[str, int]) -> None:  # fmt: skip
    core = fake_core(tmp_path, scores)
    monkeypatch.setattr(_backends, "_core", core)
    monkeypatch.delenv(_backends.VARIANT_ENV, raising=False)
    with pytest.raises(ImportError, match="CPU"):
        _backends.load()
    assert core.loaded == []

"""The llama-rewire command: info and run, on a tiny model and on the demo model, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llama_rewire.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llama_rewire.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_info_json_on_a_tiny_moe_model(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, spec = tiny("moe_shared")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "qwen2moe"
    assert info["n_layer"] == spec.n_layer
    assert all(row["act"] == "silu" and row["moe"] and row["dense"] for row in info["layers"])


def test_run_shows_both_completions(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    assert main(["run", "-m", str(path), "--act", "*:relu2", "-p", "hello", "-n", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["activations"] == ["relu2"] * 3
    assert out["original"] != out["rewired"]


def test_bad_input_is_one_line_and_exit_1(tiny: Any, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    assert main(["run", "-m", str(path), "--act", "0:bogus"]) == 1
    assert "unknown activation 'bogus'" in capsys.readouterr().err
    assert main(["run", "-m", str(path), "--act", "9:relu"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.gguf")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


@pytest.mark.real_model
def test_console_script_on_the_demo_model(smollm2_path: Path) -> None:
    info = cli("info", "smollm2")
    assert info.returncode == 0, info.stderr
    assert "llama" in info.stdout and "silu" in info.stdout
    run = cli("run", "--act", "0-11:relu, *:gelu", "-p", "The capital of France is", "-n", "12")
    assert run.returncode == 0, run.stderr
    assert "original" in run.stdout and "rewired" in run.stdout
    assert "Paris" in run.stdout

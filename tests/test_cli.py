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


SUBCOMMANDS = {  # a short run of each subcommand on the tiny model, once MODEL and once -m MODEL
    "info": ["--json"],
    "run": ["--act", "*:relu", "-n", "2", "--json"],
    "perplexity": ["--ctx", "16", "--max-windows", "1", "--json"],
    "compare": ["--act", "*:relu", "--ctx", "16", "--max-windows", "1", "--json"],
    "sweep": ["--act", "relu", "--ctx", "16", "--max-windows", "1", "--json"],
    "stats": ["--ctx", "16", "--json"],
}


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "calibrate"])
def test_every_subcommand_takes_the_model_both_ways(command: str, tiny: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    if command == "calibrate":
        rest = ["--sparsity", "0.5", "--ctx", "16", "-o", str(tmp_path / "p.json"), "--json"]
    else:
        rest = SUBCOMMANDS[command]
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is a tiny text for a tiny model. " * 8)
    if command not in ("info", "run"):
        rest = [*rest, "--text", str(text)]
    if command == "stats":
        rest = [*rest, "--plot", str(tmp_path / "stats.png")]
    outputs = []
    for model in ([str(path)], ["-m", str(path)], [str(path), "--no-repack"]):
        assert main([command, *model, *rest]) == 0, (command, model, capsys.readouterr().err)
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]  # one model, one way or the other
    assert main([command, "no-such-model", *rest]) == 1
    err = capsys.readouterr().err
    assert "not a known model name" in err and "smollm2" in err and "gemma3-270m" in err
    with pytest.raises(SystemExit):
        main([command, str(path), "-m", str(tmp_path / "other.gguf"), *rest])
    assert "two models given" in capsys.readouterr().err


def test_info_reports_where_the_weights_are(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    assert main(["info", str(path), "--json", "--system", "--no-repack"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["system"]["cpu_path"] and info["n_layer"] == 3
    assert sum(info["weight_buffers"].values()) > 0
    assert not {"AMX", "CPU_REPACK"} & set(info["weight_buffers"])


@pytest.mark.real_model
def test_console_script_on_the_demo_model(smollm2_path: Path) -> None:
    info = cli("info", "smollm2")
    assert info.returncode == 0, info.stderr
    assert "llama" in info.stdout and "silu" in info.stdout
    run = cli("run", "--act", "0-11:relu, *:gelu", "-p", "The capital of France is", "-n", "12")
    assert run.returncode == 0, run.stderr
    assert "original" in run.stdout and "rewired" in run.stdout
    assert "Paris" in run.stdout

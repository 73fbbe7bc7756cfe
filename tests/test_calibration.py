"""Calibrated sparse activations, rewiring profiles, and the stats / calibrate commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama
from llama_rewire.cli import main
from llama_rewire.eval.sparsity import calibrate, measure_sparsity
from llama_rewire.eval.text import sample_text
from llama_rewire.wiring import load_profile, parse, save_profile

PNG = b"\x89PNG\r\n\x1a\n"


def halves(text: str, n_chars: int) -> tuple[str, str]:
    """Calibration and held-out texts: two disjoint pieces of the sample."""
    return text[:n_chars], text[n_chars : 2 * n_chars]


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8])
def test_calibration_hits_the_target_on_held_out_text_tiny(tiny: Any, target: float) -> None:
    path, _ = tiny("llama")
    cal_text, held_out = halves(sample_text(), 600)
    with Llama(str(path), n_ctx=128, n_batch=128, observe_ffn=True, verbose=False) as llm:
        result = calibrate(llm, cal_text, target, 128)
        assert all(a.name == "silu" and a.threshold > 0 for a in result.activations)
        assert llm.activations == ["default"] * 3  # restored
        measured = measure_sparsity(llm, held_out, result.spec(), 128)
        assert llm.activations == ["default"] * 3
    assert all(abs(m - target) < 0.05 for m in measured), measured


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_calibration_hits_the_target_on_held_out_text(name: str) -> None:
    from llama_rewire.models import fetch

    cal_text, held_out = halves(sample_text(), 3000)
    with Llama(str(fetch(name, progress=False)), n_ctx=256, n_batch=256, observe_ffn=True,
               verbose=False) as llm:
        result = calibrate(llm, cal_text, 0.5, 256)
        measured = measure_sparsity(llm, held_out, result.spec(), 256)
    assert abs(float(np.mean(measured)) - 0.5) < 0.05
    assert all(abs(m - 0.5) < 0.1 for m in measured), measured


def test_profiles_round_trip_and_load_everywhere(tiny: Any, tmp_path: Path) -> None:
    path, _ = tiny("llama")
    acts = {"0": "silu@0.125", "1-2": "mish"}
    for suffix in (".json", ".toml"):
        profile = save_profile(tmp_path / f"p{suffix}", acts, model="tiny", target_sparsity=0.5)
        doc = load_profile(profile)
        assert doc["activations"] == acts and doc["target_sparsity"] == 0.5
        with Llama(str(path), n_ctx=32, verbose=False, activations=str(profile)) as llm:
            assert llm.activations == ["silu@0.125", "mish", "mish"]
            llm.set_activations(None)
            llm.set_activations(profile)  # a Path works too
            assert llm.activations == ["silu@0.125", "mish", "mish"]
    assert parse(str(tmp_path / "p.json"), 3) == parse("0:silu@0.125, 1-2:mish", 3)


def test_bad_profiles_and_settings(tiny: Any, tmp_path: Path) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError, match="profile file not found"):
        parse(str(tmp_path / "missing.json"), 3)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read profile"):
        parse(str(bad), 3)
    bad.write_text(json.dumps({"thresholds": [1, 2]}))
    with pytest.raises(ValueError, match="no 'activations'"):
        parse(str(bad), 3)
    bad.write_text(json.dumps({"activations": {"0": "silu@-1"}}))
    with pytest.raises(ValueError, match="finite and >= 0"):
        parse(str(bad), 3)
    with Llama(str(path), n_ctx=64, observe_ffn=True, verbose=False) as llm:
        for sparsity in (-0.1, 1.0, 1.5, float("nan")):
            with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
                calibrate(llm, "some text here", sparsity, 64)
        with pytest.raises(ValueError, match="too short"):
            calibrate(llm, "", 0.5, 64)
    with Llama(str(path), n_ctx=64, verbose=False) as llm, pytest.raises(RuntimeError, match="observe_ffn"):
        calibrate(llm, "some text here", 0.5, 64)


def test_stats_and_calibrate_commands(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, spec = tiny("llama")
    text = tmp_path / "t.txt"
    text.write_text(sample_text()[:800])
    plot = tmp_path / "hist.png"
    assert main(["stats", str(path), "--text", str(text), "--ctx", "64", "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["layers"]) == spec.n_layer and out["n_tokens"] > 64
    assert plot.read_bytes()[:8] == PNG
    profile = tmp_path / "profile.json"
    assert main(["calibrate", str(path), "--sparsity", "0.4", "--text", str(text), "--ctx", "64",
                 "-o", str(profile), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target_sparsity"] == 0.4
    assert main(["stats", str(path), "--text", str(text), "--ctx", "64", "--act", str(profile),
                 "--kind", "act", "--plot", "", "--json"]) == 0
    zeros = [row["zero_frac"] for row in json.loads(capsys.readouterr().out)["layers"]]
    assert all(abs(z - 0.4) < 0.05 for z in zeros), zeros
    assert main(["calibrate", str(path), "--sparsity", "2", "--text", str(text)]) == 1
    assert "sparsity" in capsys.readouterr().err
    assert main(["stats", str(path), "--text", str(tmp_path / "none.txt")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["stats", str(path), "--text", str(text), "--ctx", "64", "--kind", "act"]) == 1
    assert "no 'act' tensors" in capsys.readouterr().err

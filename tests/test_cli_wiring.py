"""--wiring on the subcommands (run, perplexity, compare, sweep, stats) and ``prune``, on the tiny models."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from llama_rewire import Llama
from llama_rewire import eval as ev
from llama_rewire.cli import main
from llama_rewire.eval.prune import prune

CTX = 32  # tiny windows: 15 scored tokens each
WINDOWS = ["-c", str(CTX), "--max-windows", "2"]


def ok_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """main(args) with --json succeeds; its output, parsed."""
    assert main([*args, "--json"]) == 0, (args, capsys.readouterr().err)
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def fails(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """main(args) exits 1 with a one-line error that says ``message``."""
    assert main(args) == 1, args
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, (args, err)


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(ev.sample_text()[:1500] + "\n", encoding="utf-8")
    return p


# -- run ------------------------------------------------------------------------------------------


def test_run_with_a_wiring(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    out = ok_json(capsys, "run", str(path), "--wiring", "0:skip=attn", "-n", "4", "-c", str(CTX))
    assert out["wiring"] == "0:skip=attn" and out["act"] is None
    assert out["activations"] == ["default"] * 3
    assert out["original"] != out["rewired"]


def test_run_act_replaces_the_wirings_activations(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    wiring, act = "0:skip=attn, *:gelu", "1:relu"
    out = ok_json(capsys, "run", str(path), "--wiring", wiring, "--act", act, "-n", "4", "-c", str(CTX))
    assert out["activations"] == ["default", "relu", "default"]  # the gelus are gone, the skip stays
    assert out["act"] == act
    with Llama(str(path), n_ctx=CTX, verbose=False, wiring=wiring, activations=act) as llm:
        assert out["wiring"] == str(llm.wiring) == "1:relu, 0:skip=attn"  # the API's canonical spec
    alone = ok_json(capsys, "run", str(path), "--wiring", "0:skip=attn", "-n", "4", "-c", str(CTX))
    assert out["original"] == alone["original"] and out["rewired"] != alone["rewired"]


def test_run_needs_a_rewiring_and_checks_it(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    m = [str(tiny("llama")[0]), "-n", "2", "-c", str(CTX)]
    fails(capsys, ["run", *m], "give the rewiring with --wiring SPEC or --act SPEC")
    fails(capsys, ["run", *m, "--wiring", "9:skip=layer"], "out of range")
    fails(capsys, ["run", *m, "--wiring", "0:bogus=1"], "unknown knob 'bogus'")
    fails(capsys, ["run", *m, "--wiring", "0:heads_off=[7]"], "head 7 is out of range")
    fails(capsys, ["run", *m, "--wiring", "0:skip=attn", "--act", "0:bogus"], "unknown activation 'bogus'")


# -- perplexity and compare -----------------------------------------------------------------------


def test_perplexity_with_a_wiring(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    base = ok_json(capsys, "perplexity", str(path), *WINDOWS)
    wiring = "1:skip=ffn, 0:attn_scale=0.5"
    wired = ok_json(capsys, "perplexity", str(path), *WINDOWS, "--wiring", wiring)
    assert wired["ppl"] != base["ppl"] and wired["n_tokens"] == base["n_tokens"] == 2 * (CTX // 2 - 1)
    with ev.load(path, CTX, wiring=wiring) as llm:  # the same figure as the API's
        assert wired["ppl"] == pytest.approx(ev.perplexity(llm, ev.load_text(None), CTX, max_windows=2).ppl,
                                             rel=1e-9)
    both = ok_json(capsys, "perplexity", str(path), *WINDOWS, "--wiring", wiring, "--act", "*:relu")
    assert both["activations"] == ["relu"] * 3 and both["ppl"] not in (base["ppl"], wired["ppl"])
    fails(capsys, ["perplexity", str(path), *WINDOWS, "--wiring", "0:skip=sideways"],
          "unknown skip 'sideways'")


def test_compare_with_a_wiring(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    out = ok_json(capsys, "compare", str(path), *WINDOWS, "--wiring", "1:skip=layer")
    assert out["kl_mean"] > 0 and out["top1_agreement"] < 1
    assert out["wiring"] == "1:skip=layer"
    assert out["activations"] == ["default"] * 3
    # given in any order, reported canonically
    out = ok_json(capsys, "compare", str(path), *WINDOWS, "--wiring", "2:skip=layer, 1:skip=layer",
                  "--act", "*:relu")
    assert out["wiring"] == "0-2:relu, 1-2:skip=layer" and out["activations"] == ["relu"] * 3
    fails(capsys, ["compare", str(path), *WINDOWS], "give the rewiring with --wiring SPEC or --act SPEC")


# -- sweep ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "entry"), [("llama", "skip=layer"), ("moe_shared", "experts_used=1"),
                                             ("gemma3", "attn_scale=0.5")])
def test_sweep_a_knob(tiny: Any, capsys: pytest.CaptureFixture[str], kind: str, entry: str) -> None:
    path, spec = tiny(kind)
    out = ok_json(capsys, "sweep", str(path), *WINDOWS, "--wiring", entry)
    assert out["act"] == entry
    n = spec.n_layer
    assert [r["label"] for r in out["rows"]] == [str(il) for il in range(n)]
    assert [r["spec"] for r in out["rows"]] == [f"{il}:{entry}" for il in range(n)]
    assert all(r["kl_mean"] > 0 for r in out["rows"])
    # each row is that one change compared alone, on the same windows
    alone = ok_json(capsys, "compare", str(path), *WINDOWS, "--wiring", f"1:{entry}")
    assert out["rows"][1]["kl_mean"] == pytest.approx(alone["kl_mean"], rel=1e-9)
    assert out["rows"][1]["ppl"] == pytest.approx(alone["ppl_rewired"], rel=1e-9)
    assert out["ppl_original"] == pytest.approx(alone["ppl_original"], rel=1e-9)


def test_sweep_groups_and_layers_of_a_knob(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    out = ok_json(capsys, "sweep", str(path), *WINDOWS, "--wiring", "skip=layer", "--group", "2")
    assert [r["spec"] for r in out["rows"]] == ["0-1:skip=layer", "2:skip=layer"]
    out = ok_json(capsys, "sweep", str(path), *WINDOWS, "--wiring", "heads_off=[0,1]", "--layers", "1-2")
    assert [r["spec"] for r in out["rows"]] == ["1:heads_off=[0,1]", "2:heads_off=[0,1]"]


def test_sweep_bad_input(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    m = [str(tiny("llama")[0]), *WINDOWS]
    cases = [
        (["--act", "relu", "--wiring", "skip=layer"], "--act ACT or --wiring KNOB=VALUE (one of them)"),
        ([], "--act ACT or --wiring KNOB=VALUE (one of them)"),
        (["--wiring", "0:skip=layer"], "not a spec"),
        (["--wiring", "ffn_scale=1"], "would compare the model with itself"),
        (["--wiring", "skip=none"], "would compare the model with itself"),
        (["--wiring", "bogus=1"], "unknown knob 'bogus'"),
        (["--wiring", "experts_used=1"], "the layer has no routed experts"),  # a dense model
    ]
    for args, message in cases:
        fails(capsys, ["sweep", *m, *args], message)


# -- stats ----------------------------------------------------------------------------------------


def test_stats_with_a_wiring(tiny: Any, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    common = ["stats", str(path), "--text", str(text_file), "--ctx", str(CTX), "--plot", ""]
    base = ok_json(capsys, *common)
    relu = ok_json(capsys, *common, "--wiring", "*:relu")
    assert relu["n_tokens"] == base["n_tokens"] > 0
    assert all(row["zero_frac"] < 0.01 for row in base["layers"])  # SiLU: hardly an exact zero
    assert all(0.3 < row["zero_frac"] < 0.7 for row in relu["layers"])  # ReLU(gate) * up: about half


# -- prune ----------------------------------------------------------------------------------------


def check_steps(steps: list[dict[str, Any]], budget: float) -> None:
    """Accepted steps first, each within the budget; then at most one rejected step, over it."""
    accepted = [s for s in steps if s["accepted"]]
    assert steps[: len(accepted)] == accepted
    assert all(s["rise"] <= budget for s in accepted)
    rejected = steps[len(accepted):]
    assert len(rejected) <= 1
    assert all(s["rise"] > budget for s in rejected)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_prune_writes_a_profile_that_loads_back(tiny: Any, tmp_path: Path, suffix: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    profile = tmp_path / f"pruned{suffix}"
    out = ok_json(capsys, "prune", str(path), "--budget", "50%", *WINDOWS, "--profile", str(profile))
    assert out["budget"] == 0.5 and out["profile"] == str(profile) and profile.is_file()
    assert out["n_layer"] == 3 and out["wiring"]  # the tiny llama's layers 1-2 fit in 50%
    check_steps(out["steps"], out["budget"])
    assert out["skipped"] == sorted(s["layer"] for s in out["steps"] if s["accepted"])
    assert len(out["steps"]) <= 2  # at least one layer stays
    assert [r["spec"] for r in out["sweep"]["rows"]] == [f"{il}:skip=layer" for il in range(3)]
    with Llama(str(path), n_ctx=CTX, verbose=False, wiring=str(profile)) as llm:
        assert str(llm.wiring) == out["wiring"]
        assert sorted(il for il in range(3) if llm.wiring[il].skip == "layer") == out["skipped"]
    # the speed of both, measured
    for key in ("speed_original", "speed_pruned"):
        assert out[key]["pp"] > 0 and out[key]["tg"] > 0
    assert set(out["speedup"]) == {"pp", "tg"}
    # and the profile is a --wiring for the other subcommands
    compared = ok_json(capsys, "compare", str(path), *WINDOWS, "--wiring", str(profile))
    assert compared["wiring"] == out["wiring"]


def test_prune_text_output_and_no_speed(tiny: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    profile = tmp_path / "p.json"
    args = ["prune", str(path), *WINDOWS, "--profile", str(profile), "--no-speed"]
    out = ok_json(capsys, *args, "--budget", "0.5")
    assert out["speed_original"] is None and out["speed_pruned"] is None and out["speedup"] == {}
    assert main([*args, "--budget", "50%"]) == 0
    shown = capsys.readouterr().out
    assert f"profile written to {profile}" in shown and "speed" not in shown
    assert f"skipped {len(out['skipped'])} of 3 layers: {out['wiring'] or '(none)'}" in shown


def test_prune_bad_input(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.json"
    m = [str(tiny("llama")[0]), *WINDOWS, "--profile", str(profile)]
    for budget in ("0", "abc", "-5%", "0%", "1000%"):
        fails(capsys, ["prune", *m, f"--budget={budget}"], "--budget")
    fails(capsys, ["prune", *m, "--budget", "5%", "--wiring", "0:skip=attn"], "takes no --wiring or --act")
    assert not profile.exists()


def test_prune_directly(tiny_llm: Any) -> None:
    llm = tiny_llm("llama", n_ctx=CTX, n_batch=CTX, n_threads=1)  # (two threads spin-wait on a busy CPU)
    llm.set_wiring("0:gelu")  # restored afterwards
    text = ev.sample_text()
    rank_text, heldout = text[: len(text) // 2], text[len(text) // 2 :]

    def pruned(budget: float, rank_by: str = "kl") -> Any:
        r = prune(llm, rank_text, heldout, budget, CTX, rank_by=rank_by, max_windows=2, speed=False)
        assert str(llm.wiring) == "0:gelu"
        # consistent with itself
        check_steps([asdict(s) for s in r.steps], budget)
        accepted = [s for s in r.steps if s.accepted]
        assert r.skipped == sorted(s.layer for s in accepted)
        assert r.ppl_pruned == (accepted[-1].ppl if accepted else r.ppl_original)
        assert r.speed_original is None and r.speed_pruned is None and r.speedup == {}
        # the layers are tried least harmful first
        figure = {"kl": "kl_mean", "dppl": "delta_ppl"}[rank_by]
        order = [row.layers[0] for row in sorted(r.sweep.rows, key=lambda row: getattr(row, figure))]
        assert [s.layer for s in r.steps] == order[: len(r.steps)]
        # the wiring is the skipped set, canonical, and its held-out perplexity is the one reported
        llm.set_wiring(", ".join(f"{il}:skip=layer" for il in r.skipped) or None)
        assert r.wiring == str(llm.wiring)
        assert r.ppl_pruned == pytest.approx(ev.perplexity(llm, heldout, CTX, max_windows=2).ppl, rel=1e-9)
        llm.set_wiring("0:gelu")
        return r

    everything = pruned(9.0)  # anything goes, but one layer stays
    assert [s.accepted for s in everything.steps] == [True, True] and len(everything.skipped) == 2
    first, second = (s.rise for s in everything.steps)
    assert first < second, "the tiny llama's second step should cost more than its first"
    between = pruned((first + second) / 2)  # the first step fits, the second does not
    assert [s.accepted for s in between.steps] == [True, False]
    assert between.skipped == [everything.steps[0].layer]
    assert between.wiring == f"{everything.steps[0].layer}:skip=layer"
    nothing = pruned(first / 2)
    assert [s.accepted for s in nothing.steps] == [False]
    assert nothing.skipped == [] and nothing.wiring == "" and nothing.ppl_pruned == nothing.ppl_original
    pruned(9.0, rank_by="dppl")

    for budget in (0, -0.05, 10, True):
        with pytest.raises(ValueError, match="budget"):
            prune(llm, rank_text, heldout, budget, CTX, max_windows=2, speed=False)
    with pytest.raises(ValueError, match="rank_by"):
        prune(llm, rank_text, heldout, 0.5, CTX, rank_by="luck", max_windows=2, speed=False)
    assert str(llm.wiring) == "0:gelu"


def test_sweeping_the_models_own_expert_count_is_refused(tiny: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, spec = tiny("moe_shared")
    code = main(["sweep", str(path), "--wiring", f"experts_used={spec.n_expert_used}", "-c", "32",
                 "--max-windows", "1"])
    assert code == 1
    assert "compare the model with itself" in capsys.readouterr().err


def test_perplexity_json_records_the_wiring(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    assert main(["perplexity", str(path), "--wiring", "1:skip=ffn", "-c", "32", "--max-windows", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wiring"] == "1:skip=ffn"

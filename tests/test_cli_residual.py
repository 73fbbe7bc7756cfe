"""The residual-stream subcommands on the tiny models: ``lens``, ``steer build`` / ``steer show`` and
``run --steer``, and their errors (one line, exit status 1, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_rewire import Llama
from llama_rewire.cli import main
from llama_rewire.residual import ControlVector

CTX = ["-c", "64"]
POSITIVE = ["I love this, it is wonderful", "what a great day", "so happy to see you"]
NEGATIVE = ["I hate this, it is awful", "what a terrible day", "so sad to see you"]


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0, (args, capsys.readouterr().err)
    return capsys.readouterr().out


def ok_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(ok(capsys, *args, "--json"))
    return out


def fails(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """main(args) exits 1 with a one-line error that says ``message`` (no traceback)."""
    assert main(args) == 1, args
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)


@pytest.fixture()
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("\n".join(POSITIVE[:2]) + "\n\n" + POSITIVE[2] + "\n")  # a blank line is skipped
    neg.write_text("\n".join(NEGATIVE) + "\n")
    return pos, neg


@pytest.fixture()
def vector(tiny: Any, tmp_path: Path, pairs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    path, _ = tiny("llama")
    out = tmp_path / "vec.gguf"
    ok(capsys, "steer", "build", str(path), "--positive", str(pairs[0]), "--negative", str(pairs[1]),
       "-o", str(out), *CTX)
    return out


# -- lens -----------------------------------------------------------------------------------------


def test_lens_prints_one_row_per_layer(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, spec = tiny("llama")
    out = ok(capsys, "lens", str(path), "-p", "hello world", *CTX)
    table = out[out.index("layer  "):].splitlines()
    assert [row.split()[0] for row in table[1:]] == [str(il) for il in range(spec.n_layer)]
    with Llama(str(path), n_ctx=64, verbose=False) as llm:
        n_tokens = len(llm.tokenize(b"hello world", add_bos=True, special=True))
        expected = llm.logit_lens("hello world", layers=[1, 2], top_k=3)
    assert all(row.count(".") == n_tokens for row in table[1:])  # a probability per position
    picked = ok(capsys, "lens", "-m", str(path), "-p", "hello world", "--layers", "1-2", *CTX)
    assert [row.split()[0] for row in picked[picked.index("layer  "):].splitlines()[1:]] == ["1", "2"]
    d = ok_json(capsys, "lens", str(path), "-p", "hello world", "--layers=-2--1", "--top-k", "3", *CTX)
    assert d["layers"] == [1, 2] and d["tokens"] == expected.tokens
    assert len(d["top"]) == 2 and all(len(pos) == n_tokens and len(pos[0]) == 3 for pos in d["top"])
    assert [[t["id"] for t in pos] for pos in d["top"][1]] == expected.ids[1].tolist()
    np.testing.assert_allclose([[t["prob"] for t in pos] for pos in d["top"][0]],
                               np.exp(expected.logprobs[0]), rtol=1e-6)


def test_lens_with_a_wiring_and_a_plot(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    png = tmp_path / "lens.png"
    out = ok(capsys, "lens", str(path), "-p", "hello", "--plot", str(png), *CTX)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"written to {png}" in out
    plain = ok_json(capsys, "lens", str(path), "-p", "hello", *CTX)
    wired = ok_json(capsys, "lens", str(path), "-p", "hello", "--wiring", "1:skip=ffn", *CTX)
    assert wired["wiring"] == "1:skip=ffn"
    assert wired["top"][0] == plain["top"][0] and wired["top"][2] != plain["top"][2]


def test_lens_bad_input(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    m = [str(tiny("llama")[0]), "-p", "hi", *CTX]
    fails(capsys, ["lens", *m, "--layers", "3"], "--layers: layer 3 is out of range (the model has 3 layers")
    fails(capsys, ["lens", *m, "--layers", "2-1"], "goes backwards")
    fails(capsys, ["lens", *m, "--layers", "one"], "cannot parse 'one'")
    fails(capsys, ["lens", *m, "--top-k", "0"], "--top-k must be positive")
    fails(capsys, ["lens", *m, "--wiring", "0:bogus=1"], "unknown knob 'bogus'")
    fails(capsys, ["lens", str(tiny("llama")[0]), "-p", "hi " * 400, *CTX], "do not fit the context")


# -- steer build / show ---------------------------------------------------------------------------


def test_steer_build_writes_a_control_vector(tiny: Any, tmp_path: Path, pairs: tuple[Path, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, spec = tiny("llama")
    out = tmp_path / "vec.gguf"
    d = ok_json(capsys, "steer", "build", str(path), "--positive", str(pairs[0]), "--negative", str(pairs[1]),
                "--layers", "1-2", "-o", str(out), *CTX)
    assert d["pairs"] == 3 and d["layers"] == [1, 2] and d["n_embd"] == spec.n_embd
    vec = ControlVector.load(out)
    assert vec.layers == [1, 2] and vec.n_embd == spec.n_embd and vec.model_hint == "llama"
    with Llama(str(path), n_ctx=64, verbose=False) as llm:  # the mean difference at the last token
        def h(text: str) -> np.ndarray:
            return llm.capture(text, layers=[1, 2])["resid_post"][:, -1].astype(np.float64)

        want = np.mean([h(p) - h(n) for p, n in zip(POSITIVE, NEGATIVE)], axis=0)
    np.testing.assert_allclose(np.stack([vec.directions[1], vec.directions[2]]), want, rtol=1e-5, atol=1e-6)
    assert [d["norms"][k] for k in ("1", "2")] == pytest.approx(np.linalg.norm(want, axis=1), rel=1e-5)
    # the default layers: 1 to the last (llama.cpp has no layer 0); --read mean; layer 0 on request
    assert ControlVector.load(Path(ok_json(capsys, "steer", "build", "-m", str(path), "--positive",
                                           str(pairs[0]), "--negative", str(pairs[1]), "-o", str(out),
                                           "--read", "mean", *CTX)["path"])).layers == [1, 2]
    ok(capsys, "steer", "build", str(path), "--positive", str(pairs[0]), "--negative", str(pairs[1]),
       "--layers", "0,2", "--allow-layer0", "-o", str(out), *CTX)
    assert ControlVector.load(out).layers == [0, 2]


def test_steer_show(vector: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ok_json(capsys, "steer", "show", str(vector))
    vec = ControlVector.load(vector)
    assert d["layers"] == [1, 2] and d["layer_ranges"] == "1-2" and d["n_embd"] == 64
    assert d["model_hint"] == "llama"
    norms = {str(il): pytest.approx(float(np.linalg.norm(v))) for il, v in vec.directions.items()}
    assert d["norms"] == norms
    text = ok(capsys, "steer", "show", str(vector))
    assert "layers:         1-2 (2)" in text and "n_embd:         64" in text


def test_steer_bad_input(tiny: Any, tmp_path: Path, pairs: tuple[Path, Path],
                         capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    pos, neg = (str(p) for p in pairs)
    out = str(tmp_path / "v.gguf")
    build = ["steer", "build", str(path), *CTX]
    fails(capsys, [*build, "--positive", str(tmp_path / "none.txt"), "--negative", neg, "-o", out],
          "--positive " + str(tmp_path / "none.txt") + ": no such file")
    short = tmp_path / "short.txt"
    short.write_text("only one\n")
    fails(capsys, [*build, "--positive", pos, "--negative", str(short), "-o", out],
          "has 3 prompts and --negative " + str(short) + " has 1: they pair by line")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    fails(capsys, [*build, "--positive", str(empty), "--negative", neg, "-o", out], "no prompts")
    fails(capsys, [*build, "--positive", pos, "--negative", neg, "-o", out, "--layers", "1-5"],
          "--layers: layer 5 is out of range (the model has 3 layers, 0-2)")
    fails(capsys, [*build, "--positive", pos, "--negative", neg, "-o", out, "--layers", "0-2"],
          "layer 0 has no slot in llama.cpp's control vectors")
    fails(capsys, [*build, "--positive", pos, "--negative", neg, "-o", str(tmp_path / "no" / "v.gguf")],
          "does not exist")
    assert not Path(out).exists()
    fails(capsys, ["steer", "show", str(tmp_path / "none.gguf")], "cannot be read")
    fails(capsys, ["steer", "show", pos], "not a GGUF file")
    with pytest.raises(SystemExit):
        main(["steer"])  # build or show is required
    assert "{build,show}" in capsys.readouterr().err


def text_of(llm: Llama) -> str:
    """The greedy completion the run tests use, through the API."""
    out = llm.create_completion("hello", max_tokens=6, temperature=0.0)
    return str(out["choices"][0]["text"])  # type: ignore[index]


# -- run --steer -----------------------------------------------------------------------------------


def test_run_steer_shows_both_columns(tiny: Any, vector: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    m = [str(path), "-p", "hello", "-n", "6", *CTX]
    out = ok(capsys, "run", *m, "--steer", str(vector), "--alpha", "40")
    assert "original" in out and "steered (alpha 40)" in out and "| hello" in out
    assert "steer:  " in out and "layers 1-2, tokens all" in out
    d = ok_json(capsys, "run", *m, "--steer", str(vector), "--alpha", "40")
    assert d["steer"] == {"vector": str(vector), "alpha": 40.0, "tokens": "all", "layers": [1, 2]}
    assert d["wiring"] is None and d["original"] != d["rewired"]
    with Llama(str(path), n_ctx=64, verbose=False) as llm:  # the right column is the API's steered output
        llm.set_steering(vector, alpha=40.0)
        assert text_of(llm) == d["rewired"]
    zero = ok_json(capsys, "run", *m, "--steer", str(vector), "--alpha", "0")
    assert zero["rewired"] == zero["original"] == d["original"]
    one = ok_json(capsys, "run", *m, "--steer", str(vector), "--alpha", "40", "--steer-layers", "2",
                  "--steer-tokens", "generated")
    assert one["steer"]["layers"] == [2] and one["steer"]["tokens"] == "generated"
    # with a wiring too, the right column has both
    both = ok_json(capsys, "run", *m, "--steer", str(vector), "--alpha", "2", "--wiring", "0:skip=attn")
    steered = ok_json(capsys, "run", *m, "--steer", str(vector), "--alpha", "2")
    wired = ok_json(capsys, "run", *m, "--wiring", "0:skip=attn")
    assert both["original"] == d["original"] and both["wiring"] == "0:skip=attn"
    assert both["rewired"] not in (steered["rewired"], wired["rewired"])
    with Llama(str(path), n_ctx=64, verbose=False, wiring="0:skip=attn") as llm:
        llm.set_steering(vector, alpha=2.0)
        assert text_of(llm) == both["rewired"]
    assert "rewired + steered (alpha 2)" in ok(capsys, "run", *m, "--steer", str(vector), "--alpha", "2",
                                               "--act", "*:relu")


def test_run_steer_bad_input(tiny: Any, tmp_path: Path, vector: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny("llama")
    m = ["run", str(path), "-n", "2", *CTX]
    fails(capsys, m, "give the rewiring with --wiring SPEC or --act SPEC, or a steering vector with --steer")
    fails(capsys, [*m, "--act", "*:relu", "--alpha", "2"], "--alpha, --steer-layers and --steer-tokens go")
    fails(capsys, [*m, "--steer", str(tmp_path / "none.gguf")], "cannot be read")
    fails(capsys, [*m, "--steer", str(vector), "--alpha", "nan"], "--alpha must be finite, got nan")
    fails(capsys, [*m, "--steer", str(vector), "--alpha", "inf"], "--alpha must be finite, got inf")
    fails(capsys, [*m, "--steer", str(vector), "--steer-layers", "5"], "--steer-layers: layer 5 is out of")
    fails(capsys, [*m, "--steer", str(vector), "--steer-layers", "0"], "has no direction for layers [0]")
    narrow = tmp_path / "narrow.gguf"
    ControlVector({1: np.ones(32, dtype=np.float32)}, "llama").save(narrow)
    fails(capsys, [*m, "--steer", str(narrow)], "expected rows of 64 values")
    deep = tmp_path / "deep.gguf"
    ControlVector({7: np.ones(64, dtype=np.float32)}, "llama").save(deep)
    fails(capsys, [*m, "--steer", str(deep)], "layer 7 is out of range")
    fails(capsys, [*m, "--steer", str(tmp_path / "narrow.gguf"), "--wiring", "0:bogus=1"], "unknown knob")


def test_the_subcommands_are_listed_and_run_as_a_console_script(vector: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "llama_rewire.cli", "steer", "show", str(vector)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "n_embd:" in proc.stdout, proc.stderr
    listing = subprocess.run([sys.executable, "-m", "llama_rewire.cli", "--help"], capture_output=True,
                             text=True, timeout=120, check=False).stdout
    assert "lens" in listing and "steer" in listing

"""Control vectors as files: ours have llama.cpp's control-vector GGUF layout (read back with the
independent ``gguf`` package), files written the way llama.cpp's cvector-generator and repeng write them
load here, and a loaded vector steers as llama.cpp applies it (direction.N after layer N)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy_ref
import pytest
from checks import logits_of, rel_err

from llama_rewire.residual import ControlVector

TOKENS = [1, 17, 200, 45, 3, 99, 128, 64]


def vector(n_embd: int, layers: list[int], seed: int = 0) -> ControlVector:
    rng = np.random.default_rng(seed)
    return ControlVector({il: rng.normal(size=n_embd).astype(np.float32) for il in layers}, "llama")


def test_our_file_has_llama_cpps_layout(tmp_path: Path) -> None:
    cv = vector(64, [1, 2, 5])
    path = tmp_path / "v.gguf"
    cv.save(path)
    r = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in r.fields.values()}
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    hint = fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 3
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.5"]
    for il in (1, 2, 5):
        t = tensors[f"direction.{il}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in t.shape] == [64]
        assert np.array_equal(np.asarray(t.data), cv.directions[il])


@pytest.mark.parametrize("writer", ["cvector-generator", "repeng"])
def test_files_written_by_the_others_load(tmp_path: Path, writer: str) -> None:
    """cvector-generator writes layer_count as i32; repeng (via the gguf package) as u32 and adds
    several directions per file; both use direction.N, N >= 1."""
    rng = np.random.default_rng(1)
    dirs = {il: rng.normal(size=32).astype(np.float32) for il in (1, 3)}
    path = tmp_path / f"{writer}.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    if writer == "repeng":
        w.add_uint32("controlvector.layer_count", len(dirs))
    else:
        w.add_int32("controlvector.layer_count", len(dirs))
    for il, v in dirs.items():
        w.add_tensor(f"direction.{il}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cv = ControlVector.load(path)
    assert cv.model_hint == "mistral"
    assert cv.layers == [1, 3]
    for il, v in dirs.items():
        assert np.array_equal(cv.directions[il], v)


def test_round_trip_and_layer_zero(tmp_path: Path) -> None:
    cv = vector(16, [0, 4])
    with pytest.raises(ValueError, match="layer 0"):
        cv.save(tmp_path / "a.gguf")
    cv.save(tmp_path / "a.gguf", allow_layer0=True)
    back = ControlVector.load(tmp_path / "a.gguf")
    assert back.layers == [0, 4]
    assert all(np.array_equal(back.directions[k], cv.directions[k]) for k in cv.layers)


def test_a_loaded_vector_steers_as_llama_cpp_applies_it(tmp_path: Path, tiny: Any, tiny_llm: Any) -> None:
    """llama.cpp adds direction.N (times its strength) to the output of layer N: resid_post of N."""
    _, spec = tiny("llama")
    cv = vector(spec.n_embd, [1, 2], seed=3)
    path = tmp_path / "v.gguf"
    cv.save(path)
    llm = tiny_llm("llama")
    llm.set_steering(str(path), alpha=0.7)
    edits = [
        {
            "kind": "add",
            "point": "resid_post",
            "layer": il,
            "rows": 0.7 * cv.directions[il][None, :].astype(np.float64),
        }
        for il in (1, 2)
    ]
    want = numpy_ref.forward(spec, TOKENS, hook=numpy_ref.edit_hook(edits))
    assert rel_err(logits_of(llm, TOKENS), want) < 1e-4
    # only some of its layers
    llm.set_steering(cv, alpha=0.7, layers=[2])
    want = numpy_ref.forward(spec, TOKENS, hook=numpy_ref.edit_hook(edits[1:]))
    assert rel_err(logits_of(llm, TOKENS), want) < 1e-4


def test_a_model_file_is_not_a_control_vector(tiny: Any) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ValueError, match="not a control vector"):
        ControlVector.load(path)


@pytest.mark.parametrize("damage", ["empty", "magic", "truncated", "huge_count", "bad_name", "2d"])
def test_damaged_control_vectors_are_value_errors(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.gguf"
    vector(8, [1, 2]).save(good)
    raw = bytearray(good.read_bytes())
    path = tmp_path / "bad.gguf"
    if damage == "empty":
        raw = bytearray()
    elif damage == "magic":
        raw[:4] = b"GGUX"
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "huge_count":
        raw[8:16] = (1 << 62).to_bytes(8, "little")  # tensor count
    if damage in ("bad_name", "2d"):
        w = gguf.GGUFWriter(str(path), "controlvector")
        w.add_tensor(
            "weights.1" if damage == "bad_name" else "direction.1",
            np.zeros((2, 8) if damage == "2d" else 8, np.float32),
        )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    else:
        path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        ControlVector.load(path)

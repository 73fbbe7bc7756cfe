"""The metadata check made before llama.cpp loads a file (``llama_rewire._gguf_check``): its reader
survives any bytes without hanging or allocating what a length field claims, its messages name the key
and the value, and it costs well under a few milliseconds on real models."""

from __future__ import annotations

import random
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import gguf_mutate
from gguf import GGUFValueType as VT

from llama_rewire import Llama, _gguf_check
from llama_rewire.errors import ModelLoadError


def _header(n_kv: int, version: int = 3) -> bytes:
    return struct.pack("<4sIQQ", b"GGUF", version, 0, n_kv)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def test_the_reader_survives_truncation_and_garbage(tiny: Callable[[str], tuple[Path, Any]],
                                                     tmp_path: Path) -> None:
    src, _ = tiny("moe")
    data = src.read_bytes()
    whole = _gguf_check.read_metadata(str(src))
    assert whole is not None and whole.complete and whole.values["llama.expert_count"] == 4
    path = tmp_path / "cut.gguf"
    rng = random.Random(0)
    t0 = time.perf_counter()
    cuts = sorted({*range(64), *rng.sample(range(len(data)), 150)})
    for cut in cuts:
        path.write_bytes(data[:cut])
        meta = _gguf_check.read_metadata(str(path))
        # a cut inside the metadata is not a GGUF this reader accepts; one in the tensors reads whole
        assert meta is None or meta.values == whole.values
    for _ in range(100):
        junk = bytearray(data[:4096])
        for _ in range(rng.randrange(1, 20)):
            junk[rng.randrange(len(junk))] = rng.randrange(256)
        path.write_bytes(bytes(junk))
        _gguf_check.read_metadata(str(path))  # any result, no exception
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("body", [
    _header(2**63),                                                      # more pairs than bytes
    _header(1) + struct.pack("<Q", 2**63) + b"x",                        # a key longer than the file
    _header(1) + _kv("a", 8, struct.pack("<Q", 2**62)),                 # a string longer than the file
    _header(1) + _kv("a", 9, struct.pack("<IQ", 4, 2**62)),             # 2**62 uint32 values
    _header(1) + _kv("a", 9, struct.pack("<IQ", 8, 2**40)),             # 2**40 strings
    _header(1) + _kv("a", 9, struct.pack("<IQ", 9, 3)),                 # an array of arrays
    _header(1) + _kv("a", 77, b""),                                      # no such type
    _header(1, version=1) + _kv("a", 4, b"\0\0\0\0"),                    # GGUF v1
    b"GGUG" + _header(0)[4:], b"", b"GGUF",
])
def test_a_malformed_header_is_left_to_llama_cpp(body: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(body)
    t0 = time.perf_counter()
    meta = _gguf_check.read_metadata(str(path))
    assert meta is None or not meta.complete  # 2**40 strings: a quick read stops there
    assert _gguf_check.check(str(path)) is None
    assert time.perf_counter() - t0 < 0.5
    with pytest.raises(ModelLoadError, match="failed to load model"):
        Llama(str(path), verbose=False)


def _meta(arch: str = "llama", complete: bool = True, **values: Any) -> _gguf_check.Metadata:
    meta = _gguf_check.Metadata(complete=complete)
    meta.values["general.architecture"] = arch
    meta.types["general.architecture"] = 8
    for name, value in values.items():
        key = f"{arch}.{name.replace('__', '.')}"
        meta.values[key] = value
        meta.types[key] = 9 if isinstance(value, list) else 4
    return meta


@pytest.mark.parametrize(("values", "message"), [
    ({"block_count": 0}, "llama.block_count is 0: the model must have at least one layer (1..512)"),
    ({"block_count": 513}, "llama.block_count is 513: llama.cpp supports at most 512 layers (1..512)"),
    ({"block_count": 4, "nextn_predict_layers": 5}, "llama.nextn_predict_layers is 5: more than the 4"),
    ({"expert_count": 1025}, "llama.expert_count is 1025: llama.cpp supports at most 1024 experts (0..1024)"),
    ({"expert_count": 8, "expert_used_count": 0}, "llama.expert_used_count is 0: a model with 8 experts"),
    ({"expert_count": 8}, "llama.expert_used_count is missing: a model with 8 experts"),
    ({"expert_count": 8, "expert_used_count": [2, 9]}, "llama.expert_used_count is 9: more than the 8"),
    ({"expert_used_count": 2}, "llama.expert_used_count is 2 but llama.expert_count is missing"),
    ({"expert_count": 8, "expert_used_count": 2, "expert_group_count": 8},
     "llama.expert_group_count is 8: there must be fewer groups than the 8 experts"),
    ({"expert_count": 8, "expert_used_count": 2, "expert_group_count": 3},
     "llama.expert_group_count is 3: it must divide the 8 experts"),
    ({"expert_count": 8, "expert_used_count": 2, "expert_group_count": 4, "expert_group_used_count": 4},
     "llama.expert_group_used_count is 4: it must be in 1..3"),
    ({"expert_group_count": 2}, "llama.expert_group_count is 2 but the model has no experts"),
    ({"embedding_length": 0}, "llama.embedding_length is 0"),
    ({"embedding_length": 64, "attention__head_count": 65}, "llama.attention.head_count is 65: more heads"),
])
def test_problems_name_the_key_and_the_value(values: dict[str, Any], message: str) -> None:
    found = _gguf_check.problems(_meta(**values))
    assert len(found) == 1 and found[0].startswith(message), found


def test_absence_is_only_judged_on_a_complete_read() -> None:
    assert _gguf_check.problems(_meta(complete=False, expert_count=8)) == []
    assert _gguf_check.problems(_meta(complete=False, expert_used_count=2)) == []
    assert _gguf_check.problems(_meta(complete=True, expert_count=8, expert_used_count=2)) == []
    assert _gguf_check.problems(_meta(block_count=4, expert_count=0)) == []


def test_kv_overrides_are_checked_as_llama_cpp_reads_them(tiny: Callable[[str], tuple[Path, Any]]) -> None:
    path, _ = tiny("llama")
    with pytest.raises(ModelLoadError, match=r"block_count is 0: .* \(kv_overrides: 'llama.block_count'\)"):
        Llama(str(path), kv_overrides={"llama.block_count": 0}, verbose=False)
    with pytest.raises(ModelLoadError, match=r"block_count is 1099511627776: llama.cpp supports at most"):
        Llama(str(path), kv_overrides={"llama.block_count": 2**40}, verbose=False)
    with pytest.raises(ModelLoadError, match=r"llama.expert_count is -1: llama.cpp reads it as a uint32"):
        Llama(str(path), kv_overrides={"llama.expert_count": -1}, verbose=False)
    with Llama(str(path), n_ctx=32, kv_overrides={"llama.block_count": 3}, verbose=False) as llm:
        assert llm.n_layer() == 3


def test_a_hyperparameter_after_the_vocabulary_is_still_found(tiny: Callable[[str], tuple[Path, Any]],
                                                               tmp_path: Path) -> None:
    """A quick read stops at a large vocabulary; llama.cpp then refuses the file, and the full read that
    follows names the key."""
    src, _ = tiny("moe")
    img = gguf_mutate.read_image(src)
    big = gguf_mutate.KV("tokenizer.extra", VT.ARRAY, [f"t{i}" for i in range(5000)], VT.STRING)
    img.kvs = [big, *(kv for kv in img.kvs if kv.key != "llama.expert_used_count")]
    path = tmp_path / "late.gguf"
    gguf_mutate.write_image(img, path)
    quick = _gguf_check.read_metadata(str(path))
    assert quick is not None and not quick.complete
    assert _gguf_check.check(str(path)) is None
    with pytest.raises(ModelLoadError, match=r"llama\.expert_used_count is missing: a model with 4 experts"):
        Llama(str(path), verbose=False)


@pytest.mark.real_model
@pytest.mark.parametrize("real_model_path", ["smollm2", "gemma3-270m"], indirect=True)
def test_the_check_costs_well_under_a_millisecond(real_model_path: Path) -> None:
    path = str(real_model_path)
    assert _gguf_check.check(path) is None
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        _gguf_check.check(path)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{real_model_path.name}: median {times[25] * 1e3:.3f} ms, max {times[-1] * 1e3:.3f} ms")
    assert times[25] < 0.002

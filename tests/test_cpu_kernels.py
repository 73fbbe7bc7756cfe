"""Which CPU kernels run, and that they agree: weight repacking (AMX, CPU_REPACK) against weights used as
stored, and the AMX tile configuration of patches/0003 (SIGILL on Sapphire Rapids-class CPUs without it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from checks import agree_up_to_a_tie, steps_of_rows

from llama_rewire import Llama, system_info
from llama_rewire.eval.windows import divergence

ROOT = Path(__file__).resolve().parents[1]
MMQ = ROOT / "vendor" / "llama.cpp" / "ggml" / "src" / "ggml-cpu" / "amx" / "mmq.cpp"
SYSTEM = system_info()
HAS_AMX = SYSTEM["cpu_features"].get("AMX_INT8") == "1" and "AMX" in SYSTEM["cpu_extra_buffer_types"]
PROMPT = "The capital of France is"
KW = {"n_ctx": 512, "n_threads": 2, "verbose": False, "logits_all": True}


def test_system_info_names_the_cpu_path() -> None:
    info = system_info()
    assert info["system_info"].startswith("CPU :")
    on = [name for name, value in info["cpu_features"].items() if value == "1"]
    assert on and all(f"{name} = 1" in info["system_info"] for name in on)
    assert info["cpu_path"].split(" ", 1)[0] == info["machine"]
    assert ("AMX_INT8" in info["cpu_path"]) == (info["cpu_features"].get("AMX_INT8") == "1")
    assert set(info["cpu_extra_buffer_types"]) <= {"AMX", "CPU_REPACK", "KLEIDIAI", "SPACEMIT"}
    # the RPC backend alone makes llama.cpp report GPU offload; the devices say what is really there
    assert info["gpu_offload"] is True
    assert [d["kind"] for d in info["devices"]].count("cpu") == 1
    assert all(d["kind"] in ("cpu", "gpu", "igpu", "accel", "other") and d["name"] for d in info["devices"])


def test_info_system_prints_the_features(capsys: pytest.CaptureFixture[str]) -> None:
    from llama_rewire.cli import main

    assert main(["info", "--system"]) == 0
    out = capsys.readouterr().out
    assert SYSTEM["cpu_path"] in out and SYSTEM["system_info"] in out


def greedy(llm: Llama, n: int) -> tuple[list[int], list[int], np.ndarray]:
    """The prompt's tokens, n greedy tokens after it, and the logits each of them was chosen from (the
    rows of the decode that generated them: a prompt batch, then one token at a time)."""
    tokens = llm.tokenize(PROMPT.encode())
    llm.reset()
    gen = llm.generate(tokens, temperature=0.0)
    out = [next(gen) for _ in range(n)]
    gen.close()
    rows = np.array(llm.scores[len(tokens) - 1 : len(tokens) - 1 + n])
    return tokens, out, rows


def scores_of(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: llm.n_tokens])


# Two logits closer than this are a tie between kernels: the repacked kernels quantize the activations
# to 8 bits and sum in another order, which moves Gemma-3's logits by up to ~0.15 (measured on an AMX CPU:
# at the first differing greedy token of four prompts the two paths' top-2 gaps were 0.02-0.2).
TIE = 0.3


@pytest.mark.real_model
@pytest.mark.parametrize("real_model_path", ["smollm2", "gemma3-270m"], indirect=True)
def test_repacked_weights_agree_with_weights_as_stored(real_model_path: Path) -> None:
    """use_extra_bufts=True (llama.cpp's default) repacks weights for the fastest kernels of this CPU: AMX
    tiles on Sapphire Rapids-class Xeons, CPU_REPACK's interleaved layouts elsewhere (Q4_0, Q4_K, IQ4_NL
    on AVX2 / AVX-512 / NEON). Both paths compute the same model: on the same token sequence a mean KL
    below 0.02 nats, and the same greedy tokens over 32 steps, or the same up to a step where the two
    best tokens are tied within kernel rounding (TIE), where each path picks the other's second. They
    are not bit-identical. Measured: on an AVX-512 CPU with CPU_REPACK, Gemma-3's mean KL was 0.0036 and
    SmolLM2's Q4_1 had nothing to repack; on an AMX CPU the KL was 0.0026 (SmolLM2, 32 equal tokens)
    and 0.0037 (Gemma-3, which parts at token 11 between two logits 0.1 apart)."""
    with Llama(str(real_model_path), use_extra_bufts=True, **KW) as llm:
        repacked_buffers = llm.weight_buffers()
        prompt, gen_r, rows_r = greedy(llm, 32)
        scores_r = scores_of(llm, prompt + gen_r)
    with Llama(str(real_model_path), use_extra_bufts=False, **KW) as llm:
        plain_buffers = llm.weight_buffers()
        _, gen_p, rows_p = greedy(llm, 32)
        scores_p = scores_of(llm, prompt + gen_r)  # the same sequence: positions compare like for like
    extra = set(SYSTEM["cpu_extra_buffer_types"])
    assert not extra & set(plain_buffers), plain_buffers
    assert sum(repacked_buffers.values()) >= sum(plain_buffers.values()) * 0.9
    agree_up_to_a_tie(steps_of_rows(gen_r, rows_r), steps_of_rows(gen_p, rows_p), TIE)
    targets = np.array([*prompt[1:], *gen_r], dtype=np.int64)[: len(scores_r)]
    _, kl, _ = divergence(scores_r, scores_p, targets)  # KL(repacked || plain) per position
    assert float(kl.mean()) < 0.02, float(kl.mean())
    if not extra & set(repacked_buffers):  # nothing of this model was repacked here: the very same kernels
        assert np.array_equal(scores_r, scores_p) and gen_r == gen_p


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_AMX, reason=f"this CPU has no AMX ({SYSTEM['cpu_model']}: {SYSTEM['cpu_path']}), "
                                        "so no weight goes to the AMX buffer type")
@pytest.mark.parametrize("real_model_path", ["smollm2", "gemma3-270m"], indirect=True)
def test_quantized_model_decodes_through_amx(real_model_path: Path) -> None:
    """On an AMX CPU both demo models (Q4_1, Q4_K_M) load weights into the AMX buffer and decode through
    its tile kernels: without patches/0003 this is where the process died with SIGILL."""
    with Llama(str(real_model_path), **KW) as llm:
        assert llm.weight_buffers().get("AMX", 0) > 0, llm.weight_buffers()
        text = llm.create_completion(PROMPT * 20, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert text


# -- the tile configuration of patches/0003, built as a Sapphire Rapids build compiles it ------------------

CXX = shutil.which("g++") or shutil.which("c++")
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "-fPIC", "-march=sapphirerapids", "-w",
         f"-I{ROOT / 'vendor/llama.cpp/ggml/include'}", f"-I{ROOT / 'vendor/llama.cpp/ggml/src'}",
         f"-I{ROOT / 'vendor/llama.cpp/ggml/src/ggml-cpu'}"]  # fmt: skip

# main() for the patched source: configure the tiles as ggml does, then read the configuration back. The
# XTILEDATA permission is asked for first, so that upstream's version (which leaves that to ggml's init)
# fails only by its configuration. The barrier after _tile_storeconfig is the same GCC trap the other way
# round: without it the reads of `back` are folded to the zeros it was initialised with.
HARNESS = """
#include "{source}"
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
int main() {{
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {{
        std::printf("the kernel refused the XTILEDATA permission\\n");
        return 3;
    }}
    ggml_tile_config_init();
    alignas(64) unsigned char back[64] = {{0}};
    _tile_storeconfig(back);
    __asm__ __volatile__("" : : "r"(back) : "memory");
    _tile_zero(4);
    std::printf("palette %d rows0 %d colsb0 %d rows4 %d colsb4 %d\\n", back[0], back[48],
                back[16] | (back[17] << 8), back[52], back[24] | (back[25] << 8));
    return 0;
}}
"""


def disassemble(obj: Path) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout


def tilecfg_operands(asm: str) -> list[str]:
    return re.findall(r"ldtilecfg\s+(\S+)", asm)


def compile_object(source: Path, obj: Path) -> None:
    assert CXX is not None
    subprocess.run([CXX, *FLAGS, "-c", str(source), "-o", str(obj)], check=True, capture_output=True,
                   timeout=600)


# the harness uses only ggml_tile_config_init: the rest of mmq.cpp stays unresolved, bound at load time
# (lazy PLT entries for those symbols are refused by the loader: "unexpected PLT reloc type")
LINK = ["-Wl,--unresolved-symbols=ignore-all", "-Wl,-z,now"]

@contextmanager
def upstream_mmq() -> Iterator[Path]:
    """Upstream's mmq.cpp (the `upstream` tag of vendor/llama.cpp), next to the patched one (its includes
    are relative) for the duration."""
    upstream = subprocess.run(["git", "show", "upstream:ggml/src/ggml-cpu/amx/mmq.cpp"], cwd=MMQ.parents[4],
                              capture_output=True, text=True, check=False)
    if upstream.returncode != 0:
        pytest.fail(f"vendor/llama.cpp has no `upstream` tag to compare with: {upstream.stderr.strip()}")
    original = MMQ.with_name("mmq-upstream-check.cpp")
    try:
        original.write_text(upstream.stdout)
        yield original
    finally:
        original.unlink(missing_ok=True)


needs_toolchain = pytest.mark.skipif(CXX is None or shutil.which("objdump") is None or not MMQ.exists(),
                                     reason="needs g++, objdump and the fetched vendor/llama.cpp tree")


@needs_toolchain
def test_tile_configuration_lives_in_static_storage(tmp_path: Path) -> None:
    """Compiled for Sapphire Rapids at -O3 (CMake's Release flags), the patched ggml_tile_config_init keeps
    its configuration in thread-local static storage and every ldtilecfg reads it from there, never from a
    stack slot; the upstream source, compiled the same way, loads a stack slot whose rows/colsb stores GCC
    dropped (the SIGILL). Checked on any x86 machine with the compiler: the build needs no AMX."""
    fixed = tmp_path / "fixed.o"
    compile_object(MMQ, fixed)
    symbols = subprocess.run(["readelf", "-sW", str(fixed)], capture_output=True, text=True,
                             check=True).stdout
    config = [line for line in symbols.splitlines() if "ggml_tile_config_init" in line and "2tc" in line]
    assert len(config) == 1 and " TLS " in config[0] and " 64 " in config[0], config
    operands = tilecfg_operands(disassemble(fixed))
    assert operands, "no ldtilecfg in the AMX kernels"
    assert not any("%rsp" in op or "%rbp" in op for op in operands), operands

    # the control: upstream's version, compiled alike, is caught by the same check
    with upstream_mmq() as original:
        compile_object(original, tmp_path / "upstream.o")
    assert any("%rsp" in op or "%rbp" in op for op in tilecfg_operands(disassemble(tmp_path / "upstream.o")))


@needs_toolchain
def test_tile_configuration_loads_what_ggml_asks_for(tmp_path: Path) -> None:
    """The patched function in a small program: it links everywhere; on an AMX CPU it runs, and the
    configuration read back from the tile unit is the one ggml wrote (palette 1, A tiles 16x32 bytes,
    C tiles 16x64 bytes), while upstream's source in the same program dies with SIGILL at its first tile
    instruction (or SIGSEGV at its ldtilecfg): the crash of quantized models on AMX CPUs, reproduced
    without loading a model."""
    assert CXX is not None
    harness = tmp_path / "harness.cpp"
    harness.write_text(HARNESS.format(source=MMQ.as_posix()))
    exe = tmp_path / "harness"
    subprocess.run([CXX, *FLAGS, str(harness), "-o", str(exe), *LINK],
                   check=True, capture_output=True, timeout=600)
    if not HAS_AMX:
        pytest.skip(f"built; running it needs AMX, which this CPU lacks ({SYSTEM['cpu_model']})")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, f"exit {run.returncode} (-4 is SIGILL): {run.stderr}"
    assert run.stdout.strip() == "palette 1 rows0 8 colsb0 64 rows4 16 colsb4 64"

    # the control: upstream's source in the same program dies at its first tile instruction (SIGILL)
    with upstream_mmq() as original:
        harness.write_text(HARNESS.format(source=original.as_posix()))
        subprocess.run([CXX, *FLAGS, str(harness), "-o", str(exe), *LINK],
                       check=True, capture_output=True, timeout=600)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=False)
    # SIGILL at the first tile instruction when the configuration loaded is empty; SIGSEGV (#GP) at the
    # ldtilecfg itself when what the stack slot held instead is invalid (stock llama-cpp-python 0.3.36,
    # built on an AMX CPU, dies this way at its first decode)
    assert run.returncode in (-4, -11), f"upstream's configuration ran: exit {run.returncode}, {run.stdout}"

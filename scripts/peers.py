"""The peers we compare against, built on this machine: llama-cpp-python 0.3.36 in its own virtual
environment, and llama.cpp's own tools (llama-bench, llama-perplexity, llama-server) from our patched tree.

llama-cpp-python is compiled from the same pinned sdist our build takes llama.cpp from, with
patches/0003 (the AMX tile configuration) applied to its vendored llama.cpp: without it, the stock
0.3.36 dies with SIGILL on CPUs with AMX. The other patches of the series (our hook) are not applied:
the peer stays llama.cpp as upstream ships it, less the crash.

    python scripts/peers.py lcpp [--venv DIR] [--server]  # the llama-cpp-python virtual environment
    python scripts/peers.py tool llama-perplexity         # a llama.cpp tool built from vendor/llama.cpp
    python scripts/peers.py tool llama-server             # its HTTP server (LLAMA_BUILD_SERVER, below)

``--server`` also installs the packages of llama-cpp-python's ``server`` extra into that environment, from
PyPI, so that ``python -m llama_cpp.server`` runs there.

Only the standard library is used (pybind11 and cmake come from the calling environment).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_vendor

ROOT = Path(__file__).resolve().parent.parent
AMX_PATCH = "0003-ggml-cpu-amx-tile-configuration-in-static-storage-XT.patch"
DEFAULT_TOOLS_BUILD = ROOT / "build" / "bench"
# llama-cpp-python 0.3.36's `server` extra (its pyproject.toml), with the modules that show it is installed
LCPP_SERVER_REQUIREMENTS = (
    "uvicorn>=0.22.0",
    "fastapi>=0.100.0",
    "pydantic-settings>=2.0.1",
    "sse-starlette>=1.6.1",
    "starlette-context>=0.3.6,<0.4",
    "PyYAML>=5.1",
)
LCPP_SERVER_MODULES = (
    "uvicorn", "fastapi", "pydantic_settings", "sse_starlette", "starlette_context", "yaml",
)
# llama.cpp configures llama-server (and llama-cli) only with LLAMA_BUILD_SERVER=ON (tools/CMakeLists.txt),
# which our CMakeLists.txt forces OFF for the package. For the tools' build it is switched on by a file
# that CMake includes at the end of llama.cpp's project() call, before its option() reads it: a normal
# variable there hides the forced cache entry (policy CMP0077), in llama.cpp's directories only.
SERVER_INCLUDE = "llama-rewire-server-tools.cmake"


def echo_run(cmd: Sequence[str | Path], **kwargs: Any) -> None:
    print("+", shlex.join(str(c) for c in cmd), file=sys.stderr, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def lcpp_python(venv: Path) -> Path | None:
    """The peer's interpreter if the environment exists and imports llama_cpp 0.3.36."""
    python = venv_python(venv)
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, check=False)
    return python if probe.stdout.strip() == llama_vendor.SDIST_VERSION else None


def build_lcpp(venv: Path) -> Path:
    """A virtual environment with llama-cpp-python 0.3.36 compiled from the pinned sdist, AMX fix applied
    (about 10 minutes on 2 cores; ccache, when installed, is used by its CMake build)."""
    found = lcpp_python(venv)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory() as tmp:
        sdist = llama_vendor.download_sdist(Path(tmp))
        with tarfile.open(sdist, "r:gz") as tar:
            llama_vendor.extract(tar, Path(tmp))  # the sdist's sha256 is checked
        src = Path(tmp) / f"llama_cpp_python-{llama_vendor.SDIST_VERSION}"
        # git apply works outside a repository; --directory: the patch's paths are relative to llama.cpp
        echo_run(["git", "apply", "--directory=vendor/llama.cpp", str(llama_vendor.PATCHES / AMX_PATCH)],
                 cwd=src)
        echo_run([sys.executable, "-m", "venv", venv])
        python = venv_python(venv)
        echo_run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        echo_run([python, "-m", "pip", "install", str(src)])
    return python


def lcpp_server_ready(python: Path) -> bool:
    """Whether the interpreter imports every module llama-cpp-python's server needs."""
    code = "import " + ", ".join(LCPP_SERVER_MODULES) + "; import llama_cpp.server.app"
    return subprocess.run([str(python), "-c", code], capture_output=True, check=False).returncode == 0


def build_lcpp_server(venv: Path) -> Path:
    """build_lcpp, plus the packages of llama-cpp-python's `server` extra installed from PyPI, so that
    `python -m llama_cpp.server` runs in the environment."""
    python = build_lcpp(venv)
    if not lcpp_server_ready(python):
        echo_run([python, "-m", "pip", "install", *LCPP_SERVER_REQUIREMENTS])
        if not lcpp_server_ready(python):
            raise SystemExit(f"{python}: llama_cpp.server still does not import after installing its extra")
    return python


def tool_path(build_dir: Path, target: str) -> Path | None:
    for candidate in (build_dir / "bin" / target, build_dir / "bin" / f"{target}.exe"):
        if candidate.exists():
            return candidate
    return None


def server_options(build_dir: Path) -> list[str]:
    """CMake options that configure llama.cpp's server (see SERVER_INCLUDE), its web UI left out: no npm
    build, no download of prebuilt assets (the server then embeds an empty UI)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    include = build_dir.resolve() / SERVER_INCLUDE
    include.write_text("# written by scripts/peers.py: llama.cpp's server for the benchmarks\n"
                       "set(LLAMA_BUILD_SERVER ON)\n")
    return [f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={include}", "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF"]


def build_tool(target: str, build_dir: Path = DEFAULT_TOOLS_BUILD, cmake_args: Sequence[str] = ()) -> Path:
    """Configure our CMake project with llama.cpp's tools (LLAMA_REWIRE_BUILD_LLAMA_BENCH=ON) and build
    one of them (llama-bench, llama-perplexity, llama-server, ...) from the same patched tree as the
    extension. The server's directories are configured for every target, so that building one tool after
    another in the same directory never reconfigures it; only what the target needs is built. cmake_args:
    more options for the configuration (a GPU backend: -DGGML_CUDA=on)."""
    pybind11_dir = subprocess.run(
        [sys.executable, "-m", "pybind11", "--cmakedir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    echo_run(["cmake", "-S", ROOT, "-B", build_dir, *generator, "-DCMAKE_BUILD_TYPE=Release",
              "-DLLAMA_REWIRE_BUILD_LLAMA_BENCH=ON", f"-Dpybind11_DIR={pybind11_dir}",
              *server_options(build_dir), *cmake_args])  # fmt: skip
    echo_run(["cmake", "--build", build_dir, "--target", target])
    path = tool_path(build_dir, target)
    if path is None:
        raise SystemExit(f"{target} was built but not found under {build_dir}/bin")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lcpp = sub.add_parser("lcpp", help="build the llama-cpp-python virtual environment")
    lcpp.add_argument("--venv", type=Path, default=ROOT / "benchmarks" / ".venv-lcpp")
    lcpp.add_argument("--server", action="store_true", help="also install its server's packages (PyPI)")
    tool = sub.add_parser("tool", help="build one of llama.cpp's tools from vendor/llama.cpp")
    tool.add_argument("target")
    tool.add_argument("--build-dir", type=Path, default=DEFAULT_TOOLS_BUILD)
    tool.add_argument("--cmake-arg", action="append", default=[], metavar="ARG",
                      help="an extra CMake argument (repeatable), e.g. --cmake-arg=-DGGML_CUDA=on")
    args = parser.parse_args(argv)
    if args.command == "lcpp":
        print(build_lcpp_server(args.venv) if args.server else build_lcpp(args.venv))
    else:
        print(build_tool(args.target, args.build_dir, args.cmake_arg))
    return 0


if __name__ == "__main__":
    sys.exit(main())

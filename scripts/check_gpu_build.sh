#!/usr/bin/env bash
# Compile the extension with llama.cpp's CUDA backend for one GPU architecture, on a machine that has
# nvcc but need not have a GPU: a check that the CUDA build of this tree (our hook, the patches, the
# bindings) compiles and links. Not part of CI (a CUDA build of ggml takes far longer than CI's budget).
#
#     scripts/check_gpu_build.sh [ARCH]        # ARCH: CMAKE_CUDA_ARCHITECTURES, default 90 (H100/H200)
#
# Environment: BUILD_DIR (default build/cuda-check), JOBS (default: all cores), CUDA_HOME or nvcc on
# PATH, TARGETS (default _core; e.g. "_core llama-bench" with EXTRA_CMAKE_ARGS, below), EXTRA_CMAKE_ARGS
# (more configure options, split on spaces: -DLLAMA_REWIRE_BUILD_LLAMA_BENCH=ON for llama.cpp's tools).
# ccache, when installed, caches the C, C++ and CUDA compilations (a second run takes minutes).
# ggml's CUDA backend links cuBLAS: a toolkit installed without it (nvcc and the runtime only) gets it
# from NVIDIA's wheel on PyPI (nvidia-cublas, the toolkit's major.minor), unpacked into the build
# directory; CUBLAS_ROOT (a folder with include/ and lib/) names one instead.
# Prints the time the build took and what the extension links against; exits non-zero on a failure.
# A user's own CUDA build is: CMAKE_ARGS="-DGGML_CUDA=on" pip install .
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH="${1:-90}"
BUILD_DIR="${BUILD_DIR:-build/cuda-check}"
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
read -r -a targets <<< "${TARGETS:-_core}"
read -r -a extra <<< "${EXTRA_CMAKE_ARGS:-}"

NVCC="$(command -v nvcc || true)"
if [ -z "$NVCC" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    NVCC="$CUDA_HOME/bin/nvcc"
fi
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
fi
if [ -z "$NVCC" ]; then
    echo "check_gpu_build: nvcc not found (put it on PATH or set CUDA_HOME)" >&2
    exit 2
fi
PYBIND11_DIR="$("$PYTHON" -m pybind11 --cmakedir 2>/dev/null)" || {
    echo "check_gpu_build: $PYTHON has no pybind11 (pip install pybind11)" >&2
    exit 2
}

# cuBLAS: the toolkit's own, CUBLAS_ROOT, or the wheel of the toolkit's release
# the toolkit's root (nvcc may be a wrapper script elsewhere on PATH: ask it where its libraries are)
CUDA_ROOT="${CUDA_HOME:-}"
if [ -z "$CUDA_ROOT" ]; then
    CUDA_ROOT="$("$NVCC" -dryrun -x cu /dev/null 2>&1 | sed -n 's/^#\$ _TARGET_DIR_=.*//; s/^#\$ TOP=\(.*\)$/\1/p' | head -n 1)"
fi
if [ -z "$CUDA_ROOT" ] || [ ! -d "$CUDA_ROOT" ]; then
    CUDA_ROOT="$(cd "$(dirname "$(readlink -f "$NVCC")")/.." && pwd -P)"
fi
TOOLKIT_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
cublas=()
if ! ls "$CUDA_ROOT"/lib64/libcublas.so* "$CUDA_ROOT"/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
    if [ -z "${CUBLAS_ROOT:-}" ]; then
        CUBLAS_ROOT="$BUILD_DIR/cublas"
        if [ ! -e "$CUBLAS_ROOT/include/cublas_v2.h" ]; then
            echo "the CUDA toolkit in $CUDA_ROOT has no cuBLAS: fetching nvidia-cublas~=$TOOLKIT_VERSION.0 from PyPI"
            mkdir -p "$BUILD_DIR/wheels" "$CUBLAS_ROOT"
            "$PYTHON" -m pip download -q --no-deps "nvidia-cublas~=$TOOLKIT_VERSION.0" -d "$BUILD_DIR/wheels"
            "$PYTHON" - "$BUILD_DIR/wheels" "$CUBLAS_ROOT" <<'PY'
import pathlib, shutil, sys, zipfile
wheel = sorted(pathlib.Path(sys.argv[1]).glob("nvidia_cublas-*.whl"))[-1]
out = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        parts = pathlib.PurePosixPath(name).parts
        if len(parts) >= 4 and parts[0] == "nvidia" and parts[2] in ("include", "lib"):
            target = out.joinpath(*parts[2:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
        fi
    fi
    CUBLAS_ROOT="$(cd "$CUBLAS_ROOT" && pwd -P)"
    lib="$(ls "$CUBLAS_ROOT"/lib/libcublas.so* | head -n 1)"
    lt="$(ls "$CUBLAS_ROOT"/lib/libcublasLt.so* | head -n 1)"
    echo "cuBLAS: $CUBLAS_ROOT"
    cublas=(-DCUDA_cublas_LIBRARY="$lib" -DCUDA_cublasLt_LIBRARY="$lt"
            -DCMAKE_CUDA_FLAGS="-I$CUBLAS_ROOT/include" -DCMAKE_CXX_FLAGS="-I$CUBLAS_ROOT/include")
fi

# the driver library (libcuda.so): a machine without a GPU driver has at most the toolkit's stub; with
# neither, the VMM memory pool (the only part that calls the driver API directly) is left out
vmm=()
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so' \
        && ! ls "$CUDA_ROOT"/lib64/stubs/libcuda.so "$CUDA_ROOT"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
    echo "no libcuda.so (driver or stub): building with GGML_CUDA_NO_VMM=ON"
    vmm=(-DGGML_CUDA_NO_VMM=ON)
fi

launcher=()
if command -v ccache >/dev/null 2>&1; then
    export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
              -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

echo "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "architecture: $ARCH; build directory: $BUILD_DIR; jobs: $JOBS"
start=$(date +%s)
cmake -S . -B "$BUILD_DIR" "${generator[@]}" "${launcher[@]}" "${cublas[@]}" "${vmm[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$PYBIND11_DIR" "${extra[@]}"
cmake --build "$BUILD_DIR" --target "${targets[@]}" -j "$JOBS"
end=$(date +%s)

core="$(find "$BUILD_DIR" -maxdepth 1 -name '_core*.so' | head -n 1)"
if [ -z "$core" ]; then
    echo "check_gpu_build: no _core extension in $BUILD_DIR" >&2
    exit 1
fi
echo "built $core in $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"
echo "links against:"
readelf -d "$core" | awk '/NEEDED/ {print "  " $NF}'
if ! readelf -d "$core" | grep -q 'libcudart\|libcublas\|libcuda\.so'; then
    echo "check_gpu_build: $core does not link the CUDA runtime: the CUDA backend is missing" >&2
    exit 1
fi
echo "ok: the CUDA build compiles and links (sm_$ARCH)"

#!/usr/bin/env bash
# Compile the extension with llama.cpp's CUDA backend for one GPU architecture, on a machine that has
# nvcc but need not have a GPU: a check that the CUDA build of this tree (our hook, the patches, the
# bindings) compiles and links. Not part of CI (a CUDA build of ggml takes far longer than CI's budget).
#
#     scripts/check_gpu_build.sh [ARCH]        # ARCH: CMAKE_CUDA_ARCHITECTURES, default 90 (H100/H200)
#
# Environment: BUILD_DIR (default build/cuda-check), JOBS (default: all cores), CUDA_HOME or nvcc on
# PATH. ccache, when installed, caches the C, C++ and CUDA compilations (a second run takes minutes).
# Prints the time the build took and what the extension links against; exits non-zero on a failure.
# A user's own CUDA build is: CMAKE_ARGS="-DGGML_CUDA=on" pip install .
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH="${1:-90}"
BUILD_DIR="${BUILD_DIR:-build/cuda-check}"
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"

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
cmake -S . -B "$BUILD_DIR" "${generator[@]}" "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$PYBIND11_DIR"
cmake --build "$BUILD_DIR" --target _core -j "$JOBS"
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

#!/usr/bin/env bash
# The GPU path on a machine with an NVIDIA GPU, in one script: build the CUDA extension and llama-bench
# in one build directory, run the GPU tests, and measure the original and rewired models on the GPU next
# to llama-bench on the same GPU (benchmarks/bench.py run --n-gpu-layers -1).
#
#     scripts/gpu_check.sh [STAGE...]     # stages: build test bench (default: all three, in order)
#
# build: scripts/check_gpu_build.sh for ARCH (default 90) with llama.cpp's tools, targets _core,
#        llama-bench and llama-quantize in BUILD_DIR (default build/gpu); the package is then assembled in
#        BUILD_DIR/site (src/llama_rewire and the extension), which the other stages put on PYTHONPATH.
# test:  tests/gpu and tests/test_graph_ops.py (the real-model test only where the demo models can be
#        fetched or are cached); the log goes to RESULTS_DIR/gpu-tests.log.
# bench: the models named in MODELS (names for llama_rewire.models, or GGUF paths). Without MODELS: the
#        demo models where they can be fetched, else two generated ones of the demo models' shapes
#        (SmolLM2-135M: llama, 30 layers, 576 wide; Gemma-3-270M: gemma3, 18 layers, 640 wide), random
#        weights quantized to their types (Q4_1, Q4_K_M) by llama-quantize, a 260-token vocabulary:
#        the speed of the layers, not of a real model's output matrix. REPS rounds (default 3) of RUNS
#        passes (default 2), THREADS CPU threads (default 4); RESULTS_DIR/RESULTS-gpu.md.
#
# Environment: ARCH, BUILD_DIR, RESULTS_DIR (default BUILD_DIR/results), MODELS, REPS, RUNS, THREADS,
# PYTHON (default python3: it needs numpy, gguf, pytest, pybind11 and cmake; scikit-build-core is not
# used). On a machine without PyPI: LLAMA_REWIRE_VENDOR_PACK=FILE.tar.gz, made elsewhere by
# `python scripts/llama_vendor.py pack FILE.tar.gz`, supplies llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH="${ARCH:-90}"
BUILD_DIR="${BUILD_DIR:-build/gpu}"
RESULTS_DIR="${RESULTS_DIR:-$BUILD_DIR/results}"
PYTHON="${PYTHON:-python3}"
REPS="${REPS:-3}"
RUNS="${RUNS:-2}"
THREADS="${THREADS:-4}"
SITE="$BUILD_DIR/site"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test bench)
mkdir -p "$RESULTS_DIR"

elapsed() { echo "$(( ($(date +%s) - $1) / 60 )) min $(( ($(date +%s) - $1) % 60 )) s"; }

build() {
    local start
    start=$(date +%s)
    BUILD_DIR="$BUILD_DIR" PYTHON="$PYTHON" TARGETS="_core llama-bench llama-quantize" \
        EXTRA_CMAKE_ARGS="-DLLAMA_REWIRE_BUILD_LLAMA_BENCH=ON" scripts/check_gpu_build.sh "$ARCH"
    rm -rf "$SITE"
    mkdir -p "$SITE"
    cp -r src/llama_rewire "$SITE/"
    cp "$BUILD_DIR"/_core*.so "$SITE/llama_rewire/"
    echo "build stage: $(elapsed "$start")"
}

need_site() {
    if ! ls "$SITE"/llama_rewire/_core*.so >/dev/null 2>&1; then
        echo "gpu_check: no build in $SITE: run the build stage first" >&2
        exit 1
    fi
    export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # (a stage runs as `stage || status=$?`, where set -e does not stop a function: exit by hand)
    "$PYTHON" - "$PWD/$SITE" <<'PY' || exit 1
import json
import sys
from pathlib import Path
import llama_rewire
info = llama_rewire.system_info()
print("llama_rewire", llama_rewire.__version__, "from", llama_rewire.__file__)
print("devices:", json.dumps(info["devices"]))
if Path(sys.argv[1]).resolve() not in Path(llama_rewire.__file__).resolve().parents:
    raise SystemExit("gpu_check: an installed llama_rewire shadows the one built in " + sys.argv[1] +
                     ": use a Python without it (PYTHON=...)")
if not any(d["kind"] in ("gpu", "igpu") for d in info["devices"]):
    raise SystemExit("gpu_check: this build sees no GPU device (driver? CUDA_VISIBLE_DEVICES?)")
PY
}

demo_models_reachable() {
    "$PYTHON" - <<'PY' >/dev/null 2>&1
from llama_rewire.models import fetch
for name in ("smollm2", "gemma3-270m"):
    fetch(name, progress=False)
PY
}

tests() {
    need_site
    local start marker=()
    start=$(date +%s)
    if ! demo_models_reachable; then
        echo "the demo models cannot be fetched here: the real-model test is left out"
        marker=(-m "not real_model")
    fi
    set +e
    "$PYTHON" -m pytest -q -p no:cacheprovider "${marker[@]}" tests/gpu tests/test_graph_ops.py 2>&1 \
        | tee "$RESULTS_DIR/gpu-tests.log"
    local rc=${PIPESTATUS[0]}
    set -e
    echo "test stage: $(elapsed "$start"), pytest exit $rc"
    return "$rc"
}

generated_models() {
    # SmolLM2- and Gemma-3-shaped models with random weights, quantized as the demo models are
    local dir="$BUILD_DIR/models"
    mkdir -p "$dir"
    "$PYTHON" - "$dir" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
import tiny_models
out = Path(sys.argv[1])
if not (out / "llama-576x30-f32.gguf").exists():
    tiny_models.write_llama(out / "llama-576x30-f32.gguf", n_layer=30, n_embd=576, n_head=9, n_head_kv=3,
                            n_ff=1536, n_ctx_train=8192)
if not (out / "gemma3-640x18-f32.gguf").exists():
    tiny_models.write_gemma3(out / "gemma3-640x18-f32.gguf", n_layer=18, n_embd=640, n_head=4, n_head_kv=1,
                             n_ff=2048, n_ctx_train=32768, n_swa=512, swa_pattern=6)
PY
    local quantize="$BUILD_DIR/bin/llama-quantize"
    local f32 quant type
    for pair in "llama-576x30 q4_1 Q4_1" "gemma3-640x18 q4_k_m Q4_K_M"; do
        read -r f32 quant type <<< "$pair"
        if [ ! -e "$dir/$f32-$quant.gguf" ]; then
            "$quantize" "$dir/$f32-f32.gguf" "$dir/$f32-$quant.gguf" "$type" >"$dir/$f32-$quant.log" 2>&1 || {
                echo "gpu_check: llama-quantize failed (see $dir/$f32-$quant.log)" >&2
                return 1
            }
        fi
    done
    echo "$dir/llama-576x30-q4_1.gguf $dir/gemma3-640x18-q4_k_m.gguf"
}

bench() {
    need_site
    local start models
    start=$(date +%s)
    if [ -n "${MODELS:-}" ]; then
        models="$MODELS"
    elif demo_models_reachable; then
        models="smollm2 gemma3-270m"
    else
        echo "the demo models cannot be fetched here: measuring generated models of their shapes"
        models="$(generated_models | tail -n 1)"
    fi
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/bench.py run --n-gpu-layers -1 -t "$THREADS" --reps "$REPS" \
        --runs "$RUNS" --llama-bench "$BUILD_DIR/bin/llama-bench" --out "$RESULTS_DIR/RESULTS-gpu.md" \
        --json "$RESULTS_DIR/RESULTS-gpu.json" --models $models
    echo "bench stage: $(elapsed "$start")"
}

status=0
for stage in "${stages[@]}"; do
    case "$stage" in
        build) build ;;
        test) tests || status=$? ;;
        bench) bench || exit 1 ;;
        *) echo "gpu_check: unknown stage $stage (build, test, bench)" >&2; exit 2 ;;
    esac
done
exit "$status"

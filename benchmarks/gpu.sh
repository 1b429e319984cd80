#!/usr/bin/env bash
# One command for a GPU machine, from a fresh checkout:  bash benchmarks/gpu.sh
#
# Stages (each skipped with a one-line reason when what it needs is missing; each under its own timeout so
# the whole run fits a 12-minute GPU booking):
#   1. environment   nvidia-smi, CUDA PyTorch                                 -> benchmarks/results/gpu-env.json
#   2. packages      .venv-gpu: vald-gpu[dev] (runtime/gpu_dist.py: onnxruntime-gpu, never beside onnxruntime)
#                    with the machine's CUDA PyTorch reused; CUDA 13 wheels: onnxruntime-gpu 1.31, cupy-cuda13x,
#                    cuda-python 13, tensorrt-cu13 (its libraries from NVIDIA's index); offline with WHEELS=DIR
#                    (a folder of wheels: pip install --no-index --find-links DIR); then checks that ONNX
#                    Runtime's CUDA provider starts with the CUDA libraries CUDA torch brought (preload_dlls)
#   3. engines       vald build engines/demo (FP16, static profiles)           (needs TensorRT)
#   4. tests         pytest -m "gpu or tensorrt"                               -> benchmarks/results/gpu-tests.txt
#   5. benchmark     vald bench: the GPU contenders at the demo model's size and at 512
#                                                                              -> benchmarks/results/gpu-*.json
# Written for this purpose but, at the time of writing, never run on a GPU: no GPU was lent to the sessions that
# wrote it.  What was checked without one: docs/gpu.md, "What has run".
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
VENV=${VENV:-.venv-gpu}
PY="$VENV/bin/python"
NVIDIA_INDEX=${NVIDIA_INDEX:-https://pypi.nvidia.com}
mkdir -p "$RESULTS"
say() { echo "gpu.sh: $*" >&2; }
skip() { say "skip $1: $2"; }

# 1. environment
if ! command -v nvidia-smi >/dev/null 2>&1; then
    skip "everything" "no nvidia-smi (no NVIDIA driver on this machine)"
    exit 0
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu-env.txt"
# the demo's graphs are tracked packed (export/vald_export/f16pack.py; python3 alone unpacks them)
for pack in engines/demo/fp32/*.onnx.f16pack; do
    [ -e "${pack%.f16pack}" ] || python3 export/vald_export/f16pack.py unpack "$pack" || exit 2
done

# 2. packages (the CPU torch pin of constraints.txt is left out here: this venv reuses the machine's CUDA build)
WHEELS=${WHEELS:-}
pip_install() {  # SECONDS ARGS...: from the index, or only from $WHEELS when set (a GPU box without an index)
    local limit=$1; shift
    if [ -n "$WHEELS" ]; then timeout "$limit" "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@"
    else timeout "$limit" "$PY" -m pip install -q "$@"; fi
}
if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages "$VENV"  # reuse a machine's CUDA PyTorch where it has one
    grep -v -e '^torch==' -e '^onnxruntime==' constraints.txt > "$VENV/constraints-gpu.txt"
    wheel=$(ls dist/vald_gpu-*.whl 2>/dev/null | tail -1)
    if [ -z "$wheel" ]; then
        # the wheel is built from this checkout; offline, setuptools must already be in the interpreter
        python3 runtime/gpu_dist.py --out dist ${WHEELS:+--no-build-isolation} >/dev/null \
            && wheel=$(ls dist/vald_gpu-*.whl | tail -1)
    fi
    pip_install 420 -c "$VENV/constraints-gpu.txt" "$wheel[dev]" \
        || skip "packages" "pip install vald-gpu[dev] failed; later stages may skip"
fi
"$PY" - <<'PY' > "$RESULTS/gpu-env.json" || skip "environment" "CUDA PyTorch is not importable"
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, indent=2))
PY
# ONNX Runtime's CUDA provider with the CUDA 13 libraries of the machine's CUDA torch (its nvidia-* wheels):
# a one-node graph on CUDAExecutionProvider, after vald's own preload (no LD_LIBRARY_PATH, no CUDA toolkit)
"$PY" - <<'PY' | tee "$RESULTS/gpu-ort-cuda.txt" || skip "onnxruntime cuda" "the CUDA provider did not start (see above)"
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
from vald.sessions.provider_log import preload_cuda_libraries
said = preload_cuda_libraries()
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
s = ort.InferenceSession(helper.make_model(g).SerializeToString(), providers=["CUDAExecutionProvider"])
print("onnxruntime", ort.__version__, "providers", s.get_providers(), "preload said:", said.strip() or "nothing")
assert s.get_providers()[0] == "CUDAExecutionProvider"
PY
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
    if [ -n "$WHEELS" ]; then pip_install 180 'tensorrt-cu13>=10.13' 'cuda-python>=13.0'
    else timeout 180 "$PY" -m pip install -q --extra-index-url "$NVIDIA_INDEX" 'tensorrt-cu13>=10.13' 'cuda-python>=13.0'
    fi || skip "tensorrt install" "TensorRT (tensorrt-cu13) could not be installed"
fi
if ! "$PY" -c "import cupy" 2>/dev/null; then
    pip_install 180 'cupy-cuda13x>=13.6' \
        || skip "cupy install" "cupy-cuda13x could not be installed (the cupy-loop rows will be skipped)"
fi

# 3. engines
if "$PY" -c "import tensorrt, cuda" 2>/dev/null; then
    timeout 240 "$VENV/bin/vald" build engines/demo --precision fp16 --profile static \
        || skip "engines" "vald build failed (see above)"
else
    skip "engines" "TensorRT or cuda-python is not importable"
fi

# 4. tests
timeout 180 "$PY" -m pytest -q -m "gpu or tensorrt" tests 2>&1 | tee "$RESULTS/gpu-tests.txt" | tail -5

# 5. benchmark: the GPU contenders that this machine can start (the others are skipped by vald bench with a reason)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
GPU_CONTENDERS="torch fp32,torch fp32 cuda,torch fp16 cuda,vald onnxruntime fp32 cuda,vald onnxruntime fp16 cuda"
GPU_CONTENDERS="$GPU_CONTENDERS,vald onnxruntime fp16 tensorrt-ep,vald tensorrt fp16"
# the sampler on device arrays, and the UNet as CUDA graphs: against the rows above, the host loop's share
GPU_CONTENDERS="$GPU_CONTENDERS,torch fp16 cuda torch-loop,vald onnxruntime fp16 cuda cupy-loop"
GPU_CONTENDERS="$GPU_CONTENDERS,vald onnxruntime fp16 cuda cupy-loop cuda-graph,vald tensorrt fp16 cupy-loop"
GPU_CONTENDERS="$GPU_CONTENDERS,vald tensorrt fp16 cupy-loop cuda-graph"
timeout 240 "$VENV/bin/vald" bench --engines engines/demo --contenders "$GPU_CONTENDERS" \
    --size 128 --size 512 --repeats 3 --out "$RESULTS/gpu-$stamp" \
    || skip "benchmark" "vald bench failed or ran out of time (see above)"
say "done; results in $RESULTS/gpu-*"

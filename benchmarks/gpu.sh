#!/usr/bin/env bash
# One command for a GPU machine, from a fresh checkout:  bash benchmarks/gpu.sh
#
# Stages (each skipped with a one-line reason when what it needs is missing; each under its own timeout so
# the whole run fits a 12-minute GPU booking):
#   1. environment   nvidia-smi, CUDA PyTorch                                 -> benchmarks/results/gpu-env.json
#   2. packages      .venv-gpu: vald[dev] with CUDA torch; TensorRT + cuda-python from NVIDIA's index
#                    (pypi.nvidia.com); onnxruntime-gpu replaces onnxruntime in that venv only
#   3. engines       vald build engines/demo (FP16, static profiles)           (needs TensorRT)
#   4. tests         pytest -m "gpu or tensorrt"                               -> benchmarks/results/gpu-tests.txt
#   5. benchmark     vald bench: the GPU contenders at the demo model's size and at 512
#                                                                              -> benchmarks/results/gpu-*.json
# Written for this purpose but, at the time of writing, never run: no GPU was lent to the session that wrote it.
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

# 2. packages (the CPU torch pin of constraints.txt is left out here: this venv needs a CUDA build)
if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages "$VENV"  # reuse a machine's CUDA PyTorch where it has one
    grep -v '^torch==' constraints.txt > "$VENV/constraints-gpu.txt"
    timeout 300 "$PY" -m pip install -q -c "$VENV/constraints-gpu.txt" -e '.[dev]' \
        || skip "packages" "pip install -e .[dev] failed; later stages may skip"
fi
"$PY" - <<'PY' > "$RESULTS/gpu-env.json" || skip "environment" "CUDA PyTorch is not importable"
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, indent=2))
PY
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
    timeout 180 "$PY" -m pip install -q --extra-index-url "$NVIDIA_INDEX" 'tensorrt>=10.12' 'cuda-python>=12.6' \
        || skip "tensorrt install" "TensorRT could not be installed from $NVIDIA_INDEX"
fi
if ! "$PY" -c "import cupy" 2>/dev/null; then
    timeout 180 "$PY" -m pip install -q 'cupy-cuda12x>=13' \
        || skip "cupy install" "cupy-cuda12x could not be installed (the cupy-loop rows will be skipped)"
fi
if ! "$PY" -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
    timeout 180 "$PY" -m pip install -q 'onnxruntime-gpu' \
        || skip "onnxruntime-gpu install" "onnxruntime-gpu could not be installed"
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

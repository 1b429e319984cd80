"""This CPU's matrix-multiply peak in OpenVINO at f32, bf16 and int8: the floors the UNet's times are held to.

One 4096×4096×4096 product (2·4096³ FLOP; int8 counted as the same operations), built as a one-node ONNX graph
and compiled by OpenVINO's CPU plugin like vald's graphs: float inputs at inference precision f32 or bf16, and
for int8 the QDQ form NNCF writes (activations quantised to u8, int8 weights), which OpenVINO runs on its int8
kernels (VNNI/AMX).  The best of ``--repeats`` timed calls after a warm-up, with ``--threads`` threads.

    python benchmarks/matmul_peak.py            # ~1 min on 2 cores; writes benchmarks/results/matmul_peak.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import vald.privacy  # noqa: F401  (OpenVINO's telemetry off before it is imported)


def graph(n: int, *, quantised: bool) -> onnx.ModelProto:
    """A @ W with W a constant; quantised: A and W pass through QuantizeLinear/DequantizeLinear (u8, i8)."""
    rng = np.random.default_rng(0)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])]
    if not quantised:
        w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        nodes = [helper.make_node("MatMul", ["a", "w"], ["y"])]
        return helper.make_model(
            helper.make_graph(nodes, "mm", inputs, outputs, [w]), opset_imports=[helper.make_opsetid("", 17)]
        )
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "wq"),
        numpy_helper.from_array(np.array(0.02, np.float32), "sa"),
        numpy_helper.from_array(np.array(128, np.uint8), "za"),
        numpy_helper.from_array(np.array(0.01, np.float32), "sw"),
        numpy_helper.from_array(np.array(0, np.int8), "zw"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
        helper.make_node("MatMul", ["ad", "wd"], ["y"]),
    ]
    return helper.make_model(
        helper.make_graph(nodes, "mm8", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )


def peak(core: Any, path: Path, hint: str, n: int, threads: int, repeats: int) -> dict[str, Any]:
    """Best GFLOP/s of the compiled product, and what the plugin ran it as."""
    compiled = core.compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    request.infer({"a": a})
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer({"a": a})
        best = min(best, time.perf_counter() - started)
    runs = sorted(
        {
            op.get_rt_info()["runtimePrecision"].astype(str)
            for op in compiled.get_runtime_model().get_ops()
            if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")
        }
    )
    return {"seconds": best, "gflops": 2 * n**3 / best / 1e9, "kernel_precision": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    import openvino as ov

    core = ov.Core()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, quantised, hint in (("f32", False, "f32"), ("bf16", False, "bf16"), ("int8", True, "bf16")):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(graph(args.n, quantised=quantised), str(path))
            rows[name] = peak(core, path, hint, args.n, args.threads, args.repeats)
            print(f"{name}: {rows[name]['gflops']:.0f} GFLOP/s ({rows[name]['kernel_precision']})", flush=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": f"OpenVINO CPU, {args.n}^3 matrix product, best of {args.repeats}, {args.threads} threads",
        "peaks": rows,
        "openvino": ov.get_version(),
        "machine": platform.machine(),
        "cpu_flags": sorted(f for f in _flags() if "avx512" in f or "amx" in f or "vnni" in f),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matmul_peak.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _flags() -> set[str]:
    from vald.cpu import cpu_flags

    return cpu_flags()


if __name__ == "__main__":
    main()

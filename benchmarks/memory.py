"""Peak memory of the SD1.5-size networks on the CPU: what ONNX Runtime's session options, OpenVINO's
memory release and the ``unet_batch`` setting change, each variant in a fresh process (peak RSS is per process).

    python benchmarks/memory.py ort-unet       # the FP32 UNet alone at 512², batch 2, 3, 2: arena / pre-packing
    python benchmarks/memory.py pipeline       # one counterfactual at 512², --preset fast, per backend and precision,
                                               # with every step's rows in one UNet call and in calls of 2 and 1

Needs build/sd15-engines (`make bench` makes it).  Writes benchmarks/results/memory-<what>.json.  Times are
reported beside the memory; on a machine shared with other work they are rough.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORT_VARIANTS = ("default", "noarena", "noprepack", "noarena-noprepack")
# backend-precision-unet_batch; 0 = a step's rows in one call (the default)
PIPELINE_VARIANTS = tuple(
    f"{bp}-{b}" for bp in ("onnxruntime-fp32", "openvino-bf16", "openvino-int8") for b in (0, 2, 1)
)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ort_unet(variant: str, engines: Path, size: int) -> dict[str, object]:
    """One process: the FP32 UNet on ONNX Runtime's CPU provider with a session-option variant."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 2, 1, 3
    options.enable_cpu_mem_arena = "noarena" not in variant
    if "noprepack" in variant:
        options.add_session_config_entry("session.disable_prepacking", "1")
    started = time.perf_counter()
    session = ort.InferenceSession(str(engines / "fp32" / "unet.onnx"), options, providers=["CPUExecutionProvider"])
    loaded = {"load_s": time.perf_counter() - started, "rss_after_load_mib": _peak_mib()}
    rng, side, calls = np.random.default_rng(0), size // 8, []
    for batch in (2, 3, 2):
        feeds = {
            "sample": rng.standard_normal((batch, 4, side, side), dtype=np.float32),
            "timestep": np.full((batch,), 500, np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, 768), dtype=np.float32),
        }
        started = time.perf_counter()
        session.run(None, feeds)
        calls.append(time.perf_counter() - started)
    return {"variant": variant, "size": size, **loaded, "call_s": calls, "peak_rss_mib": _peak_mib()}


def pipeline(variant: str, engines: Path, size: int) -> dict[str, object]:
    """One process: vald's sessions for ``backend-precision-unet_batch``, one counterfactual at the fast preset."""
    import numpy as np

    from vald.app import open_engines
    from vald.attribution import attribute
    from vald.config import RunConfig

    backend, precision, unet_batch = variant.split("-")
    cfg = RunConfig(backend=backend, precision=precision, threads=2, unet_batch=int(unet_batch))  # type: ignore[arg-type]
    cfg = cfg.with_preset("fast")
    started = time.perf_counter()
    loaded, _ = open_engines(engines, cfg)
    opened = {"open_s": time.perf_counter() - started, "rss_after_open_mib": _peak_mib()}
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    started = time.perf_counter()
    result = attribute(loaded, image, cfg)
    return {
        "variant": variant,
        "size": size,
        **opened,
        "run_s": time.perf_counter() - started,
        "unet_s": result.timings.stages["unet"],
        "peak_rss_mib": _peak_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ort-unet", "pipeline"])
    parser.add_argument("--engines", type=Path, default=ROOT / "build" / "sd15-engines")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.one:
        run = ort_unet if args.what == "ort-unet" else pipeline
        print(json.dumps(run(args.one, args.engines, args.size)), flush=True)
        return 0
    variants = ORT_VARIANTS if args.what == "ort-unet" else PIPELINE_VARIANTS
    rows = []
    for variant in variants:
        command = [sys.executable, __file__, args.what, "--one", variant, "--engines", str(args.engines)]
        done = subprocess.run([*command, "--size", str(args.size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "what": args.what, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-{args.what}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up of an engine folder with an empty cache, then again with the cache the first start left.

Each start is a fresh process that verifies the engine files and opens the four sessions (what
`vald run` does before its first step): the first hashes every file and optimises every graph, the
second trusts the stamps and loads the optimised graphs.  Writes benchmarks/results/startup-<name>.json.

    python benchmarks/startup.py --engines build/sd15-engines --name sd15-size
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from pathlib import Path
from vald.app import open_engines
from vald.config import RunConfig
t = time.perf_counter()
_, prov = open_engines(Path(sys.argv[1]), RunConfig(backend=sys.argv[2], precision=sys.argv[3]))
print(json.dumps({"open_engines_s": time.perf_counter() - t, **prov["startup"],
                  "cached": [s["cached"] for s in prov["sessions"].values()],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def start(engines: Path, backend: str, precision: str) -> dict[str, object]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(engines), backend, precision], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - began
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, default=ROOT / "engines" / "demo")
    p.add_argument("--name", default="demo")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    rows = []
    for backend, precision in (("onnxruntime", "fp32"), ("openvino", "bf16")):
        shutil.rmtree(args.engines / ".vald-cache", ignore_errors=True)
        for state in ("empty cache", "warm cache"):
            row = {
                "backend": backend,
                "precision": precision,
                "state": state,
                **start(args.engines, backend, precision),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    from vald.config import Precision
    from vald.manifest import Manifest

    fp32_files = Manifest.load(args.engines).engine_hashes(Precision.FP32)
    payload = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "engines": str(args.engines),
        "fp32_set_bytes": sum((args.engines / rel).stat().st_size for rel in fp32_files),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"startup-{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

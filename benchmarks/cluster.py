"""Throughput of `vald run` on a Ray cluster against the local executor, side by side in one run.

Not a timed test: on the same inputs and settings (the shipped demo engines, one thread per worker), it
records the local executor (this process, one input after another) and the Ray executor with 1, 2 and 4
workers on a one-node loopback cluster started here (`vald bound … -- ray start`, token auth, as in
tests/test_cluster.py; this process, the driver, restarts itself under libvald_bind as `--cluster-bind` does):
start-up (joining, placing the workers, opening their engines), inputs per minute after start-up, and the
cluster path's overhead per input (object transfer, scheduling) as a ratio to the local compute time.

    python benchmarks/cluster.py          # ~4 min on 2 cores; writes benchmarks/results/cluster.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicomnet import REPO, Netns
from raycluster import HEAD, Cluster

from vald.app import attribution_settings_sha256, describe_engines
from vald.bench.environment import environment
from vald.cluster.batch import run_on
from vald.cluster.bind import enter
from vald.cluster.executor import Executor, LocalExecutor
from vald.cluster.ray_executor import ClusterConfig
from vald.cluster.run import open_cluster
from vald.cluster.worker import WorkerSpec
from vald.config import DEFAULT_OUTPUTS, RunConfig
from vald.sources import load

SAMPLES = REPO / "engines" / "demo" / "samples"
ENGINES = REPO / "engines" / "demo"


class HostLoopback(Netns):
    """No namespace: the cluster listens on the host's loopback addresses for the benchmark's minutes."""

    def __init__(self) -> None:
        self.holder, self.prefix, self.private = None, [], False


def inputs(copies: int) -> list[Path]:
    """The demo's 5 DX phantoms and 5 PNGs, ``copies`` times (each copy its own output: --force per run)."""
    names = ("normal", "nodule", "consolidation", "effusion", "cardiomegaly")
    return [SAMPLES / f"{n}.{ext}" for n in names for ext in ("dcm", "png")] * copies


def timed(executor_factory, files: list[Path], out: Path, sha: str) -> dict[str, float]:
    started = time.perf_counter()
    executor: Executor = executor_factory()
    ready = time.perf_counter()
    try:
        summary = run_on(executor, files, out, sha, load, force=True)
    finally:
        executor.close()
    done = time.perf_counter()
    assert summary.counts() == {"done": len(files)}, summary.counts()
    work = done - ready
    computed = [json.loads((out / e.output / "result.json").read_text()) for e in summary.entries]
    compute = sum(r["timings_s"]["total"] for r in computed) / len(computed)  # inside compute_one, per input
    return {
        "compute_per_input_s": round(compute, 4),
        "wall_per_input_s": round(work / len(files), 4),
        "startup_s": round(ready - started, 3),
        "work_s": round(work, 3),
        "inputs": len(files),
        "inputs_per_minute": round(60 * len(files) / work, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    enter(HEAD, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]])  # the driver as `--cluster-bind`
    cfg = RunConfig(threads=1)
    sha = attribution_settings_sha256(cfg, describe_engines(ENGINES, cfg), DEFAULT_OUTPUTS)
    files = inputs(1)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vald-cluster-bench-") as tmp:
        root = Path(tmp)
        spec = WorkerSpec(ENGINES, cfg, DEFAULT_OUTPUTS, sha)
        rows["local"] = timed(lambda: LocalExecutor(spec), files, root / "l", sha)
        net = HostLoopback()  # the driver (this process) joins from the host's loopback
        cluster = Cluster(net, root / "cluster", cpus=(max(args.workers),))
        os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
        try:
            for n in args.workers:
                config = ClusterConfig(address=cluster.address, workers=n, threads=1, bind=HEAD)
                factory = lambda config=config: open_cluster(ENGINES, cfg, DEFAULT_OUTPUTS, config)[0]  # noqa: E731
                rows[f"ray x{n}"] = timed(factory, files, root / f"r{n}", sha)
        finally:
            cluster.stop()
            net.close()
        rows["local (again, last)"] = timed(lambda: LocalExecutor(spec), files, root / "l2", sha)
    local = (rows["local"]["inputs_per_minute"] + rows["local (again, last)"]["inputs_per_minute"]) / 2
    for name, row in rows.items():
        row["speedup_vs_local"] = round(row["inputs_per_minute"] / local, 3)
        if not name.startswith("ray x") or name == "ray x1":  # one worker: wall time beyond the compute itself
            row["overhead_per_input_ratio"] = round(row["wall_per_input_s"] / row["compute_per_input_s"] - 1, 3)
    body = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": "vald run on the demo engines, 10 inputs (5 DX + 5 PNG), 1 thread per worker, default settings",
        "cluster": "one Ray node on loopback under vald bound (the driver too), token auth, as many CPUs as the "
        "largest worker count",
        "rows": rows,
        "environment": {**environment(), "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(body, indent=1) + "\n")
    lines = [
        "| executor | start-up s | inputs/min | × local (mean of both) | compute per input s | wall beyond compute |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        overhead = f"{row['overhead_per_input_ratio']:+.1%}" if "overhead_per_input_ratio" in row else ""
        speed = f"{row['inputs_per_minute']:.1f} | {row['speedup_vs_local']:.2f} | {row['compute_per_input_s']:.3f}"
        lines.append(f"| {name} | {row['startup_s']:.1f} | {speed} | {overhead} |")
    (args.out / "cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

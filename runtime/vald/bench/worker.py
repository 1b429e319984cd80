"""Measure one contender in this process: ``python -m vald.bench.worker SPEC.json``.

Each contender runs in a fresh process so that its cold start is a real one (imports, verification,
session creation, first counterfactual) and its peak RSS is its own.  The worker prints one JSON line
(:func:`measure`'s result) and saves its counterfactual and map for the accuracy comparison.

Spec keys: ``kind`` ("vald" or "diffusers"), ``engines``, ``model_dir``, ``settings`` (RunConfig keys),
``image``, ``size`` (model resolution), ``repeats``, ``spawned`` (``time.time()`` when the parent
started this process), ``out`` (prefix of the saved arrays).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


class CountingSession:
    """Wraps a session; records (batch, seconds) of every call (the UNet's per-step cost)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, F32]:
        """Run and time the wrapped session."""
        start = time.perf_counter()
        out: dict[str, F32] = self.inner.run(feeds)
        self.calls.append((int(np.asarray(feeds["sample"]).shape[0]), time.perf_counter() - start))
        return out

    def run_device(self, feeds: Mapping[str, Any], ops: Any) -> dict[str, Any]:
        """Run and time the wrapped session on device arrays (waiting for the device, so the time is the call's)."""
        start = time.perf_counter()
        out: dict[str, Any] = self.inner.run_device(feeds, ops)
        ops.synchronize()
        self.calls.append((int(feeds["sample"].shape[0]), time.perf_counter() - start))
        return out


def model_input(image: Path, size: int) -> F32:
    """The benchmark image letterboxed to ``size``², in [0, 1]."""
    from vald.imageio import Letterbox, read_image

    native = read_image(image)
    return Letterbox.fit(native.shape, size).to_model(native)


def _vald(spec: Mapping[str, Any]) -> tuple[Callable[[], tuple[F32, F32, dict[str, float]]], dict[str, Any]]:
    from vald.app import open_engines
    from vald.attribution import attribute
    from vald.config import RunConfig
    from vald.spec import Component

    cfg = RunConfig.from_mapping(spec["settings"])
    model_dir = Path(spec["model_dir"]) if spec.get("model_dir") else None
    engines, provenance = open_engines(Path(spec["engines"]), cfg, model_dir=model_dir)
    unet = CountingSession(engines.sessions[Component.UNET])
    engines = replace(engines, sessions={**engines.sessions, Component.UNET: unet})
    engines = replace(engines, model=replace(engines.model, image_size=int(spec["size"])))
    x = model_input(Path(spec["image"]), int(spec["size"]))

    def once() -> tuple[F32, F32, dict[str, float]]:
        unet.calls.clear()
        result = attribute(engines, x, cfg)
        stages = dict(result.timings.stages)
        for batch in sorted({b for b, _ in unet.calls}):
            stages[f"unet_call_b{batch}"] = float(np.median([s for b, s in unet.calls if b == batch]))
        stages["unet_calls"] = float(len(unet.calls))
        return result.counterfactual, result.signed_map, stages

    keep = ("sessions", "startup", "engine_files_sha256", "loop")
    return once, {k: provenance[k] for k in keep}


def measure(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Cold start to the first counterfactual, then ``repeats`` warm runs; saves the last run's arrays."""
    if spec["kind"] == "diffusers":
        from vald.bench.diffusers_pipeline import prepare

        once, info = prepare(spec)
    else:
        once, info = _vald(spec)
    start = time.perf_counter()
    cf, signed, stages = once()  # the cold run: counted in cold_start_s, and its times kept apart
    runs = [{"total": time.perf_counter() - start, **stages}]
    cold = time.time() - float(spec["spawned"])
    np.save(f"{spec['out']}.counterfactual.npy", cf)
    np.save(f"{spec['out']}.map.npy", signed)
    for _ in range(int(spec["repeats"])):
        start = time.perf_counter()
        _, _, stages = once()
        runs.append({"total": time.perf_counter() - start, **stages})
    return {
        "cold_start_s": cold,
        "runs": runs,  # runs[0] is the cold run; the summary uses the warm ones
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **info,
    }


def main(argv: list[str]) -> int:
    """Entry point: read the spec, measure, print one JSON line (or one error line, exit 2)."""
    from vald.errors import ValdError

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        print(json.dumps(measure(spec)), flush=True)
    except ValdError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

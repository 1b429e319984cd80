"""The fast preset's sweep: UNet evaluations per counterfactual against attribution quality, per finding type.

On the demo model and a held-out phantom set of its own (offset 700: not the attribution table's or the other
sweeps' cases), every point of the grid below is scored with the same functions as `make bench-attribution`;
UNet work is counted by wrapping the UNet session (calls, and evaluations = calls weighted by batch: a guided
step is one call of batch 2).  The default mode (DDIM inversion, the only sampler its ODE allows) is swept over
the schedule's steps and the guidance interval; img2img also with DPM-Solver++ 2M.  ``vald.presets.choose_fast``
then picks the preset by its rule; the JSON keeps every point so the choice can be checked.

    python benchmarks/preset_sweep.py            # ~10 min on 2 cores; writes benchmarks/results/preset_sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vald.app import open_engines, versions
from vald.config import RunConfig
from vald.errors import ConfigError
from vald.pipeline import Engines
from vald.presets import choose_fast
from vald.spec import Component
from vald_train.evaluate import cases, runtime_method, score, summarise

# (settings over the defaults) for each point; the default itself is the first
# (few steps start below the default interval's t >= 600: those points guide from t >= 500, or are skipped)
GRID: list[dict[str, Any]] = [
    {},
    *({"steps": n} for n in (20, 25, 30, 35)),
    *({"steps": n, "guidance_min_t": 500} for n in (6, 8, 10, 15, 20, 25)),
    *({"mode": "img2img", "steps": n} for n in (20, 35, 50)),
    *({"mode": "img2img", "scheduler": "dpmpp-2m", "steps": n} for n in (10, 20)),
    {"mode": "img2img", "scheduler": "dpmpp-2m", "steps": 15, "guidance_min_t": 500},
]


class Counting:
    """A UNet session that counts its calls and its evaluations (batch rows)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.evaluations = inner, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.evaluations += int(np.shape(feeds["sample"])[0])
        return self.inner.run(feeds)


def point(engines: Engines, cfg: RunConfig, phantoms: list[Any]) -> dict[str, Any]:
    """Quality per type and UNet work per counterfactual of one setting."""
    unet = Counting(engines.sessions[Component.UNET])
    counted = dataclasses.replace(engines, sessions={**engines.sessions, Component.UNET: unet})
    started = time.perf_counter()
    table = summarise(score(runtime_method(counted, cfg), phantoms))
    n = len(phantoms)
    return {
        "unet_calls": unet.calls / n,
        "unet_evaluations": unet.evaluations / n,
        "seconds_per_counterfactual": (time.perf_counter() - started) / n,
        "per_type": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, default=Path("engines/demo"))
    parser.add_argument("--per-type", type=int, default=12, help="held-out phantoms per finding type (5 types)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    base = RunConfig(threads=0)
    engines, provenance = open_engines(args.engines, base)
    phantoms = cases(args.per_type, engines.model.image_size, offset=700)
    points = []
    for settings in GRID:
        cfg = base.replace(**settings)
        try:
            measured = {"settings": settings, **point(engines, cfg, phantoms)}
        except ConfigError as exc:  # e.g. a schedule that starts below the guidance interval
            points.append({"settings": settings, "skipped": str(exc)})
            print(f"{settings}: skipped ({exc})", flush=True)
            continue
        points.append(measured)
        overall = measured["per_type"]["overall"]
        print(
            f"{settings or 'default'}: {measured['unet_evaluations']:.1f} UNet evaluations "
            f"({measured['unet_calls']:.1f} calls), AUROC {overall['auroc']:.3f} NCC {overall['ncc']:.3f}",
            flush=True,
        )
    chosen = choose_fast(points)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "held_out_per_type": args.per_type,
        "phantom_offset": 700,
        "defaults": {k: str(v) for k, v in vars(base).items() if "prompt" not in k},
        "points": points,
        "fast": chosen,
        "model_sha256": provenance["model_sha256"],
        "environment": {**versions(), "machine": platform.machine(), "processor": platform.processor()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preset_sweep.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("fast preset:", chosen)


if __name__ == "__main__":
    main()

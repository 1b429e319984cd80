"""Named presets: settings chosen by measurement, and the rule that chose them.

``fast`` is the setting with the fewest UNet evaluations per counterfactual (a guided step counts twice)
whose attribution quality stays within ``TOLERANCE`` of the default's on every finding type: AUROC and NCC
may be lower by at most 0.01 and 0.02 (higher is always fine).  The sweep (`benchmarks/preset_sweep.py`,
``benchmarks/results/preset_sweep.json``) measures the points; :func:`choose_fast` applies the rule to them;
the chosen settings are :data:`vald.config.PRESETS` (a test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TOLERANCE = {"auroc": 0.01, "ncc": 0.02}  # how much lower than the default's a preset's metric may be


def within(candidate: dict[str, Any], default: dict[str, Any]) -> bool:
    """True when ``candidate``'s per-type AUROC and NCC are each no more than TOLERANCE below ``default``'s."""
    for kind, metrics in default["per_type"].items():
        for name, slack in TOLERANCE.items():
            if name in metrics and candidate["per_type"][kind][name] < metrics[name] - slack:
                return False
    return True


def choose_fast(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fast preset from sweep ``points`` (the first is the default): fewest evaluations within tolerance.

    Ties go to fewer calls, then to the earlier point.  Returns the point's settings, work and quality.
    """
    default = points[0]
    ok = [p for p in points if "skipped" not in p and within(p, default)]
    best = min(ok, key=lambda p: (p["unet_evaluations"], p["unet_calls"], points.index(p)))
    return {
        "settings": best["settings"],
        "unet_evaluations": best["unet_evaluations"],
        "unet_calls": best["unet_calls"],
        "default_unet_evaluations": default["unet_evaluations"],
        "rule": f"fewest UNet evaluations with every type's AUROC/NCC at most {TOLERANCE} below the default's",
    }

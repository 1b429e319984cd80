"""Presets: the fast preset is what the rule picks from the committed sweep, and it is applied as settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vald.cli import main
from vald.config import PRESETS, RunConfig
from vald.errors import ConfigError
from vald.presets import TOLERANCE, choose_fast, within

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "benchmarks" / "results" / "preset_sweep.json"


def _point(evaluations: float, auroc: float, ncc: float, **settings: object) -> dict:
    per_type = {k: {"auroc": auroc, "ncc": ncc} for k in ("nodule", "effusion", "overall")}
    per_type["normal"] = {"change_normal": 0.02}
    return {"settings": settings, "unet_evaluations": evaluations, "unet_calls": evaluations, "per_type": per_type}


def test_the_rule_takes_the_fewest_evaluations_within_the_tolerance_of_the_default() -> None:
    default = _point(110, 0.94, 0.80)
    close = _point(44, 0.94 - TOLERANCE["auroc"] + 1e-9, 0.80 - TOLERANCE["ncc"] + 1e-9, steps=20)
    cheaper_but_worse = _point(16, 0.86, 0.63, mode="img2img")
    better = _point(60, 0.99, 0.90, steps=25)
    skipped = {"settings": {"steps": 5}, "skipped": "starts below the guidance interval"}
    assert within(close, default) and not within(cheaper_but_worse, default)
    chosen = choose_fast([default, cheaper_but_worse, better, close, skipped])
    assert chosen["settings"] == {"steps": 20} and chosen["unet_evaluations"] == 44
    one_type_worse = _point(30, 0.95, 0.81, steps=12)
    one_type_worse["per_type"]["nodule"]["ncc"] = 0.80 - 0.021
    assert choose_fast([default, one_type_worse])["settings"] == {}  # the default itself when nothing qualifies


def test_the_shipped_fast_preset_is_what_the_rule_picks_from_the_committed_sweep() -> None:
    report = json.loads(SWEEP.read_text())
    assert choose_fast(report["points"])["settings"] == PRESETS["fast"] == report["fast"]["settings"]
    assert report["points"][0]["settings"] == {}  # the first point is the default


def test_a_preset_is_applied_first_and_recorded(engines: Path, tmp_path: Path) -> None:
    cfg = RunConfig().with_preset("fast")
    assert cfg.preset == "fast" and all(getattr(cfg, k) == v for k, v in PRESETS["fast"].items())
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "fast"\nsteps = 40\n')
    assert RunConfig.from_toml(toml).steps == 40 and RunConfig.from_toml(toml).preset == "fast"
    out = tmp_path / "out"
    image = REPO / "engines" / "demo" / "samples" / "nodule.png"
    assert main(["run", str(image), "--engines", str(engines), "--out", str(out), "--preset", "fast", "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert result["settings"]["preset"] == "fast"
    assert all(result["settings"][k] == v for k, v in PRESETS["fast"].items())
    with pytest.raises(ConfigError, match="preset='quick' is not one of: fast"):
        RunConfig(preset="quick")

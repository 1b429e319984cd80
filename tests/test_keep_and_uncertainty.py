"""`--keep-mask` holds a drawn device unchanged while the finding is still removed; `--average N` writes the
per-pixel uncertainty, and it is higher where the map is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.app import open_engines
from vald.attribution import attribute
from vald.config import Mode, RunConfig
from vald.errors import InputError
from vald.eval.metrics import pixel_auroc, removal
from vald_train.data import held_out_seeds
from vald_train.phantoms import Finding, make_phantom

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"


def _with_tube(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A consolidation phantom with a vertical tube drawn beside the mediastinum, the tube and a keep mask."""
    p = make_phantom(seed, 128, Finding.CONSOLIDATION)
    image, tube = p.abnormal.copy(), np.zeros((128, 128), bool)
    tube[20:110, 60:63] = True
    image[tube] = np.maximum(image[tube], 0.92)
    keep = np.zeros((128, 128), np.float32)
    keep[18:112, 58:65] = 1.0
    return image, p.twin, p.mask & (keep < 0.5), tube, keep


def test_keep_mask_holds_a_device_unchanged_and_the_finding_is_still_removed() -> None:
    cfg = RunConfig(mode=Mode.IMG2IMG)  # M = input - counterfactual: what the counterfactual changes
    engines, _ = open_engines(DEMO, cfg)
    for seed in held_out_seeds(2, Finding.CONSOLIDATION, offset=800):
        image, twin, lesion, tube, keep = _with_tube(seed)
        free = attribute(engines, image, cfg)
        kept = attribute(engines, image, cfg, keep=keep)
        assert np.abs(free.signed_map[tube]).mean() > 0.01  # left alone, the model changes the tube
        assert np.abs(kept.signed_map[keep > 0.5]).max() == 0.0  # held: not one pixel of it changes
        assert removal(image, kept.counterfactual, twin, lesion) >= 0.9 * removal(
            image, free.counterfactual, twin, lesion
        )
    with pytest.raises(InputError, match="keep mask is empty"):
        attribute(engines, image, cfg, keep=np.zeros_like(keep))


def test_vald_run_keep_mask_is_recorded_and_applies_to_one_input_only(tmp_path: Path) -> None:
    image, _, _, _, keep = _with_tube(held_out_seeds(1, Finding.CONSOLIDATION, offset=800)[0])
    Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(tmp_path / "tube.png")
    Image.fromarray((keep * 255).astype(np.uint8)).save(tmp_path / "keep.png")
    base = [
        sys.executable,
        "-m",
        "vald.cli",
        "run",
        "--steps",
        "10",
        "--quiet",
        "--keep-mask",
        str(tmp_path / "keep.png"),
    ]
    done = subprocess.run(
        [*base, str(tmp_path / "tube.png"), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in (tmp_path / "o").iterdir() if p.is_dir()]
    result = json.loads((folder / "result.json").read_text())
    assert len(result["input"]["keep_mask_sha256"]) == 64 and "held unchanged" in result["attribution"]
    two = subprocess.run(
        [*base, str(tmp_path / "tube.png"), str(DEMO / "samples" / "nodule.png"), "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
    )
    assert two.returncode == 2
    assert (
        two.stderr.strip() == "vald: error: --keep-mask applies to one input, not 2: run each image with its own mask"
    )


def test_average_writes_uncertainty_that_is_higher_where_the_map_is_wrong(tmp_path: Path) -> None:
    cfg = RunConfig(mode=Mode.IMG2IMG, average=4)
    engines, _ = open_engines(DEMO, cfg)
    scores = []
    for kind in (Finding.CONSOLIDATION, Finding.NODULE):
        for seed in held_out_seeds(2, kind, offset=820):
            p = make_phantom(seed, 128, kind)
            result = attribute(engines, p.abnormal, cfg)
            assert result.uncertainty is not None and result.uncertainty.shape == (128, 128)
            error = np.abs(result.signed_map - p.difference)
            wrong = error > np.quantile(error, 0.9)
            scores.append(pixel_auroc(result.uncertainty, wrong))
    assert np.mean(scores) > 0.6, scores  # the spread across seeds points at the pixels the map gets wrong
    assert attribute(engines, p.abnormal, RunConfig(mode=Mode.IMG2IMG)).uncertainty is None
    extra = ["--average", "2", "--steps", "10", "--quiet", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "vald.cli", "run", str(DEMO / "samples" / "nodule.png"), "--mode", "img2img", *extra],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    std = np.load(folder / "uncertainty.npy")
    assert std.shape == np.load(folder / "attribution.npy").shape and float(std.max()) > 0
    assert json.loads((folder / "result.json").read_text())["uncertainty"]["file"] == "uncertainty.npy"
    assert "uncertainty.png" in (tmp_path / "report.html").read_text()

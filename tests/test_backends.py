"""Backends and precisions behind the one session protocol: OpenVINO (fp32, bf16), torch bf16, threads.

Every session reports what actually runs it; a precision a backend does not run is a settings error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vald.app import open_engines
from vald.attribution import attribute
from vald.cli import main
from vald.config import RunConfig
from vald.errors import ConfigError
from vald.imageio import Letterbox, read_image

FAST = {"steps": 10, "strength": 0.5, "guidance_min_t": 0}  # guided at every step
DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"  # the shipped, trained model: bf16 error is meaningful


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"precision": "bf16"}, "precision=bf16 is not available on backend=onnxruntime; it runs: fp32, fp16"),
        ({"backend": "openvino", "precision": "fp16"}, "precision=fp16 is not available on backend=openvino"),
        ({"threads": -1}, "threads=-1 is out of range"),
        ({"threads": 1.5}, "threads=1.5 must be an integer"),
    ],
)
def test_backend_settings_are_validated(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        RunConfig(**settings)


def _maps(engines: Path, small_png: Path, cfg: RunConfig, model_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    eng, provenance = open_engines(engines, cfg, model_dir=model_dir)
    box = Letterbox.fit(read_image(small_png).shape, eng.model.image_size)
    result = attribute(eng, box.to_model(read_image(small_png)), cfg)
    return result.signed_map, provenance


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_openvino_fp32_matches_onnxruntime_and_bf16_reports_itself(engines: Path, small_png: Path) -> None:
    pytest.importorskip("openvino")
    reference, _ = _maps(engines, small_png, RunConfig(**FAST))
    fp32, prov = _maps(engines, small_png, RunConfig(backend="openvino", threads=1, **FAST))  # type: ignore[arg-type]
    assert {s["precision"] for s in prov["sessions"].values()} == {"fp32"}
    assert {s["threads"] for s in prov["sessions"].values()} == {1}
    assert np.abs(fp32 - reference).max() < 1e-3  # the image bound the torch reference is held to
    reference, _ = _maps(DEMO, small_png, RunConfig(**FAST))  # type: ignore[arg-type]
    try:
        bf16, prov = _maps(DEMO, small_png, RunConfig(backend="openvino", precision="bf16", **FAST))  # type: ignore[arg-type]
    except Exception as exc:  # a CPU without bf16 units must say so, never run f32 silently
        assert "not bf16" in str(exc)
        pytest.skip(f"this CPU has no bf16 inference in OpenVINO: {exc}")
    assert {s["precision"] for s in prov["sessions"].values()} == {"bf16"}
    # measured 0.976 at these fast settings (0.992 at the defaults); `vald bench` reports it per model
    assert 0 < np.abs(bf16 - reference).max() < 0.2 and _corr(bf16, reference) > 0.95


def test_torch_bf16_autocast_runs_and_is_recorded(small_png: Path) -> None:
    fp32, _ = _maps(DEMO, small_png, RunConfig(backend="torch", **FAST))  # type: ignore[arg-type]
    cfg = RunConfig(backend="torch", precision="bf16", threads=1, **FAST)  # type: ignore[arg-type]
    bf16, prov = _maps(DEMO, small_png, cfg)
    assert {s["precision"] for s in prov["sessions"].values()} == {"bf16"}
    assert {s["threads"] for s in prov["sessions"].values()} == {1}
    # autocast also returns the decoder's image in bf16 (steps of 2^-8 near 1): a coarser map than OpenVINO's
    assert 0 < np.abs(bf16 - fp32).max() < 0.2 and _corr(bf16, fp32) > 0.95


def test_threads_reach_result_json(engines: Path, small_png: Path, tmp_path: Path) -> None:
    args = [
        "run",
        str(small_png),
        "--engines",
        str(engines),
        "--steps",
        "4",
        "--guidance-min-t",
        "0",
        "--quiet",
        "--no-report",
    ]
    assert main([*args, "--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    result = json.loads(next((tmp_path / "a").glob("*/result.json")).read_text())
    assert result["settings"]["threads"] == 1
    assert {s["threads"] for s in result["sessions"].values()} == {1}
    assert {s["precision"] for s in result["sessions"].values()} == {"fp32"}
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    default = json.loads(next((tmp_path / "b").glob("*/result.json")).read_text())
    import os

    assert {s["threads"] for s in default["sessions"].values()} == {len(os.sched_getaffinity(0))}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--guidance", "nan", "guidance=nan must be a finite number"),
        ("--guidance", "inf", "guidance=inf must be a finite number"),
        ("--strength", "nan", "strength=nan must be a finite number"),
        ("--eta", "nan", "eta=nan must be a finite number"),
        ("--steps", "100000", "steps=100000 exceeds the model's 1000 training timesteps"),
    ],
)
def test_bad_settings_stop_the_run_once(
    engines: Path, small_png: Path, tmp_path: Path, capsys, option: str, value: str, message: str
) -> None:
    """A settings error is one line and exit 2 before any input runs, not a failure of every input (exit 1)."""
    args = ["run", str(small_png), "--engines", str(engines), "--out", str(tmp_path), "--quiet", option, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vald: error: {message}"]
    assert not (tmp_path / "summary.json").exists()

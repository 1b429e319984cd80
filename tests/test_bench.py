"""`vald bench`: every contender in its own process, the same inputs, accuracy against the torch reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vald.cli import main


def test_bench_compares_backends_side_by_side(
    engines: Path, tiny_model: Path, small_png: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("openvino")
    args = ["bench", "--engines", str(engines), "--model", str(tiny_model), "--image", str(small_png)]
    args += ["--contenders", "torch fp32,vald onnxruntime fp32,vald openvino fp32,diffusers img2img fp32"]
    args += [
        "--repeats",
        "2",
        "--steps",
        "6",
        "--guidance-min-t",
        "0",
        "--size",
        "64",
        "--size",
        "32",
        "--out",
        str(tmp_path),
        "--threads",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    path = tmp_path / "latency-tiny-inversion-1threads.json"
    data = json.loads(path.read_text())  # strict JSON: json.loads would accept NaN, so check the text too
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert data["settings"]["steps"] == 6 and data["threads"] == 1 and data["repeats"] == 2
    assert data["environment"]["cpu"]["cpus_available"] >= 1 and "onnxruntime" in data["environment"]["versions"]
    assert data["environment"]["install_mib"]["runtime"] > 0
    rows = {(r["size"], r["contender"]): r for r in data["rows"]}
    assert len(rows) == 8
    for size in (64, 32):
        ref = rows[(size, "torch fp32")]
        assert ref["accuracy"]["counterfactual_max_abs_error"] == 0.0 and ref["accuracy_vs"] == "torch fp32"
        for name in ("vald onnxruntime fp32", "vald openvino fp32"):
            row = rows[(size, name)]
            assert row["warm_runs"] == 2 and row["end_to_end_s"]["n"] == 2
            assert row["accuracy"]["counterfactual_max_abs_error"] < 1e-3
            assert row["accuracy"]["map_correlation"] > 0.999
            assert set(row["stages_s"]) >= {"text_encoder", "vae_encoder", "unet", "vae_decoder", "unet_call_b1"}
            assert row["stages_s"]["unet_call_b3"]["p50"] > 0  # the batched counterfactual + reconstruction
            assert row["cold_start_s"] >= row["cold_run_s"] > 0 and row["peak_rss_mib"] > 50
            assert row["speedup"]["vs torch fp32"] > 0
            assert {s["threads"] for s in row["sessions"].values()} == {1}
        assert "img2img" in rows[(size, "diffusers img2img fp32")]["skipped"]
    assert "| vald openvino fp32 |" in out and "map corr" in out


def test_bench_diffusers_pipeline_matches_vald_img2img(
    engines: Path, tiny_model: Path, small_png: Path, tmp_path: Path
) -> None:
    """The baseline a user would run gets vald's noise, so its counterfactual is comparable pixel for pixel."""
    args = [
        "bench",
        "--engines",
        str(engines),
        "--model",
        str(tiny_model),
        "--image",
        str(small_png),
        "--mode",
        "img2img",
        "--guidance-min-t",
        "0",
    ]
    args += [
        "--contenders",
        "torch fp32,diffusers img2img fp32",
        "--repeats",
        "0",
        "--steps",
        "8",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    data = json.loads((tmp_path / "latency-tiny-img2img.json").read_text())
    row = next(r for r in data["rows"] if r["contender"] == "diffusers img2img fp32")
    assert row["accuracy"]["counterfactual_max_abs_error"] < 1e-3, row
    ours = next(r for r in data["rows"] if r["contender"] == "torch fp32")
    assert row["unet_calls"] == ours["unet_calls"] == 5  # int(0.7 × 8) steps, each one guided batch-2 call
    assert row["stages_s"]["unet_call_b2"]["p50"] > 0
    assert row["warm_runs"] == 0 and row["end_to_end_s"]["n"] == 1


def test_unknown_contender_is_a_settings_error(engines: Path, tmp_path: Path, capsys) -> None:
    assert main(["bench", "--engines", str(engines), "--contenders", "tensorflow", "--out", str(tmp_path)]) == 2
    assert "unknown contender(s) tensorflow; known: vald onnxruntime fp32" in capsys.readouterr().err

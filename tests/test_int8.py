"""int8 on the CPU: `vald quantize` calibrates the shipped model's UNet on its own trajectories, and
`--backend openvino --precision int8` runs it, checks that it runs int8 and records so; never silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vald.cli import main
from vald.manifest import Manifest, sha256_file

pytest.importorskip("nncf")
pytest.importorskip("openvino")

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"  # a trained model: the int8 error means something
SAMPLE = DEMO / "samples" / "consolidation.png"


def _has_int8_units() -> bool:
    from vald.cpu import cpu_flags
    from vald.sessions.openvino import INT8_UNITS

    return bool(cpu_flags() & set(INT8_UNITS))


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo's engine folder with an int8 UNet calibrated on two samples at the fast preset."""
    root = tmp_path_factory.mktemp("int8") / "engines"
    root.mkdir()
    for name in ("fp32", "tokenizer"):
        shutil.copytree(DEMO / name, root / name)
    shutil.copy2(DEMO / "manifest.json", root / "manifest.json")
    images = [str(DEMO / "samples" / "consolidation.png"), str(DEMO / "samples" / "normal.png")]
    code = main(["quantize", str(root), *images, "--samples", "16", "--preset", "fast", "--threads", "2"])
    assert code == 0
    return root


def test_quantize_writes_the_int8_unet_with_its_recipe_and_hashes(quantised: Path, capsys) -> None:
    manifest = Manifest.load(quantised)
    entry = manifest.data["components"]["unet"]["precisions"]["int8"]
    assert set(entry["files"]) == {"int8/unet.xml", "int8/unet.bin"}
    for rel, digest in entry["files"].items():
        assert sha256_file(quantised / rel) == digest
    calibration = entry["quantization"]["calibration"]
    # the fast preset's trajectory: 23 UNet evaluations in 14 calls per image (guided calls are batch 2)
    assert calibration["images"] == 2 and calibration["unet_calls_recorded"] == 28
    assert calibration["samples"] == 16 and calibration["settings"]["preset"] == "fast"
    assert calibration["recorded_with"] == "onnxruntime cpu fp32"
    error = entry["error_vs_fp32"]
    assert error["calls"] == 7  # a quarter of the recorded calls, held out of calibration
    assert 0 < error["median_relative_rms_error"] < 0.5
    assert len(error["relative_rms_error_by_timestep"]) == 7
    assert "consolidation" not in json.dumps(entry)  # images are named by no path, only by a hash of hashes
    assert [p.value for p in manifest.quantised] == ["int8"]
    # `vald verify` re-hashes the int8 files with the rest
    assert main(["verify", str(quantised)]) == 0
    assert "graph sets: fp32, int8" in capsys.readouterr().out


def test_int8_run_is_recorded_checked_and_repeatable(quantised: Path, tmp_path: Path) -> None:
    if not _has_int8_units():
        pytest.skip("this CPU has no VNNI/AMX: the refusal is tested below")
    maps = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["run", str(SAMPLE), "--engines", str(quantised), "--out", str(out), "--quiet", "--no-report"]
        assert main([*args, "--backend", "openvino", "--precision", "int8", "--preset", "fast"]) == 0
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        result = json.loads((folder / "result.json").read_text())
        maps.append(np.load(folder / "attribution.npy"))
    sessions = result["sessions"]
    unet = sessions["unet"]
    assert unet["graph"] == "int8/unet.xml" and unet["precision"] in ("int8+bf16", "int8+fp32")
    assert {sessions[c]["graph"] for c in ("text_encoder", "vae_encoder", "vae_decoder")} == {
        "fp32/text_encoder.onnx",
        "fp32/vae_encoder.onnx",
        "fp32/vae_decoder.onnx",
    }
    assert np.array_equal(maps[0], maps[1])  # same input, seed, engine files and backend: the same pixels
    reference = tmp_path / "fp32"
    args = ["run", str(SAMPLE), "--engines", str(quantised), "--out", str(reference), "--quiet", "--no-report"]
    assert main([*args, "--preset", "fast"]) == 0
    (folder,) = [p for p in reference.iterdir() if p.is_dir()]
    fp32 = np.load(folder / "attribution.npy")
    assert np.corrcoef(fp32.ravel(), maps[0].ravel())[0, 1] > 0.9


def test_int8_without_vnni_or_amx_is_one_line_and_exit_2(quantised: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import vald.sessions.openvino as ov_sessions

    monkeypatch.setattr(ov_sessions, "cpu_flags", lambda: {"sse4_2", "avx2", "avx512f"})
    args = ["run", str(SAMPLE), "--engines", str(quantised), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*args, "--backend", "openvino", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VNNI or AMX" in err[0] and "--precision bf16" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_int8_on_a_folder_without_it_says_how_to_make_it(tmp_path: Path, capsys) -> None:
    if not _has_int8_units():
        pytest.skip("the CPU check comes first on a CPU without VNNI/AMX")
    args = ["run", str(SAMPLE), "--engines", str(DEMO), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*args, "--backend", "openvino", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no int8 unet" in err[0] and "vald quantize" in err[0]


def test_int8_is_only_an_openvino_precision() -> None:
    from vald.config import RunConfig
    from vald.errors import ConfigError

    with pytest.raises(ConfigError, match="precision=int8 is not available on backend=onnxruntime"):
        RunConfig(precision="int8")  # type: ignore[arg-type]


def test_quantize_refuses_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["quantize", str(DEMO), str(SAMPLE), "--samples", "0"]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err


def test_bench_runs_int8_beside_the_others_at_the_fast_preset(quantised: Path, tmp_path: Path) -> None:
    if not _has_int8_units():
        pytest.skip("no VNNI/AMX: the int8 contender is skipped with its reason")
    args = ["bench", "--engines", str(quantised), "--image", str(SAMPLE), "--preset", "fast", "--repeats", "0"]
    args += ["--contenders", "vald onnxruntime fp32,vald openvino int8", "--out", str(tmp_path), "--threads", "2"]
    assert main(args) == 0
    data = json.loads((tmp_path / "latency-engines-inversion-fast-2threads.json").read_text())
    assert data["settings"]["preset"] == "fast" and data["settings"]["steps"] == 10
    rows = {r["contender"]: r for r in data["rows"]}
    assert rows["vald openvino int8"]["sessions"]["unet"]["precision"].startswith("int8+")
    assert rows["vald openvino int8"]["accuracy_vs"] == "vald onnxruntime fp32"
    assert rows["vald openvino int8"]["accuracy"]["map_correlation"] > 0.9
    # a folder without an int8 UNet: the contender is skipped and says why
    args[2] = str(DEMO)
    assert main([*args[:-4], "--contenders", "vald openvino int8", "--out", str(tmp_path / "demo")]) == 0
    (path,) = (tmp_path / "demo").glob("latency-*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert "no int8 UNet" in row["skipped"] and "vald quantize" in row["skipped"]

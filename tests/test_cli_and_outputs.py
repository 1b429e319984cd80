"""The `vald run` command end to end: every written file read back, and every user error a clean message."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.cli import main

FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_run_writes_outputs_that_read_back(engines: Path, chest_png: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(chest_png), "--engines", str(engines), "--out", str(tmp_path), *FAST)
    assert code == 0
    out_dir = Path(out)
    native = np.asarray(Image.open(chest_png))
    cf = np.asarray(Image.open(out_dir / "counterfactual.png"))
    assert cf.shape == native.shape and cf.dtype == np.uint16
    attribution = np.load(out_dir / "attribution.npy")
    assert attribution.shape == native.shape and attribution.dtype == np.float32
    assert np.isfinite(attribution).all() and attribution.min() < 0 < attribution.max()
    with Image.open(out_dir / "triptych.png") as trip:
        assert trip.mode == "RGB" and trip.height >= 768 and trip.width > 3 * 768 * native.shape[1] // native.shape[0]
    result = json.loads((out_dir / "result.json").read_text())
    assert result["settings"]["backend"] == "onnxruntime" and result["settings"]["precision"] == "fp32"
    assert result["settings"]["seed"] == 0 and result["settings"]["scheduler"] == "ddim"
    assert result["settings"]["steps"] == 4
    assert len(result["settings"]["prompt_sha256"]) == 64 and "prompt" not in result["settings"]
    assert result["settings"]["mode"] == "inversion" and result["settings"]["reference"] == "reconstruction"
    assert result["model_sha256"] and all(len(h) == 64 for h in result["engine_files_sha256"].values())
    assert {"unet", "vae_encoder", "vae_decoder", "text_encoder", "total"} <= set(result["timings_s"])
    assert "not for diagnostic use" in result["caution"]
    assert result["versions"]["onnxruntime"]
    # output folder named by content hash, never by the file name
    assert out_dir.name == result["input"]["sha256"][:16] and chest_png.stem not in str(out_dir)


def test_config_file_settings_and_cli_override(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "vald.toml"
    cfg.write_text('mode = "img2img"\nstrength = 0.3\nsteps = 3\nscheduler = "dpmpp-2m"\nseed = 9\n')
    code, out, _ = _run(
        capsys,
        str(small_png),
        "--engines",
        str(engines),
        "--out",
        str(tmp_path),
        "--config",
        str(cfg),
        "--seed",
        "4",
        "--guidance-min-t",
        "200",
    )
    assert code == 0
    settings = json.loads((Path(out) / "result.json").read_text())["settings"]
    assert (settings["strength"], settings["steps"], settings["scheduler"], settings["seed"]) == (0.3, 3, "dpmpp-2m", 4)
    assert settings["guidance_min_t"] == 200


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strength", "0"], "strength=0.0 is out of range"),
        (["--strength", "1.5"], "strength=1.5 is out of range"),
        (["--steps", "0"], "steps=0 is out of range"),
        (["--guidance", "0.5"], "guidance=0.5 is out of range"),
        (["--guidance-min-t", "-1"], "guidance_min_t=-1 is out of range"),
        (["--guidance-min-t", "1000"], "guidance_min_t=1000 is not below"),
        (["--strength", "0.3", "--guidance-min-t", "600"], "below guidance_min_t=600: guidance would never apply"),
        (["--provider", "cuda"], "CUDAExecutionProvider"),
        (["--backend", "torch", "--precision", "fp16"], "needs provider=cuda"),
    ],
)
def test_bad_settings_are_clean_errors(engines: Path, small_png: Path, tmp_path: Path, capsys, extra, message) -> None:
    code, _, err = _run(capsys, str(small_png), "--engines", str(engines), "--out", str(tmp_path), *FAST, *extra)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_config_key_is_an_error(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("strenght = 0.5\n")
    code, _, err = _run(capsys, str(small_png), "--engines", str(engines), "--out", str(tmp_path), "--config", str(cfg))
    assert code == 2 and "unknown setting(s) strenght" in err


def test_unreadable_and_missing_images(engines: Path, tmp_path: Path, capsys) -> None:
    """A bad input is a failed input (exit 1, listed in the summary), named by index and hash only."""
    broken = tmp_path / "Doe^Jane.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = _run(capsys, str(broken), "--engines", str(engines), "--out", str(tmp_path / "o"))
    assert code == 1 and "input #1" in err and "cannot be read" in err and "Doe" not in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["entries"][0]["status"] == "failed" and "Doe" not in json.dumps(summary)
    code, _, err = _run(capsys, str(tmp_path / "absent.png"), "--engines", str(engines), "--out", str(tmp_path / "o"))
    assert code == 1 and "does not exist" in err
    gif = tmp_path / "x.gif"
    gif.write_bytes(b"GIF89a")
    code, _, err = _run(capsys, str(gif), "--engines", str(engines), "--out", str(tmp_path / "o"))
    assert code == 1 and "unsupported input type" in err


def test_engine_files_that_do_not_match_the_manifest(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    unet = copy / "fp32" / "unet.onnx"
    unet.write_bytes(unet.read_bytes()[:-1] + bytes([unet.read_bytes()[-1] ^ 1]))
    code, _, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"))
    assert code == 2 and "fp32/unet.onnx does not match manifest.json" in err
    (copy / "manifest.json").unlink()
    code, _, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"))
    assert code == 2 and "no manifest.json" in err


def test_runtime_does_not_import_torch(engines: Path, small_png: Path, tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys; from vald.cli import main; "
        f"rc = main(['run', {str(small_png)!r}, '--engines', {str(engines)!r}, '--out', {str(tmp_path)!r}, "
        "'--steps', '2', '--guidance-min-t', '0', '--quiet']); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(rc, bad); sys.exit(rc or bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_config_file_for_induce_starts_from_the_induce_defaults(tmp_path: Path) -> None:
    from vald.config import INDUCE_DEFAULTS, RunConfig

    path = tmp_path / "induce.toml"
    path.write_text("seed = 3\n")
    cfg = RunConfig.from_toml(path, INDUCE_DEFAULTS)
    assert (cfg.seed, cfg.strength, cfg.guidance, cfg.mode) == (3, 1.0, 9.0, INDUCE_DEFAULTS.mode)
    assert cfg.negative_prompt == INDUCE_DEFAULTS.negative_prompt != ""
    assert RunConfig.from_toml(path).strength == RunConfig().strength

"""Settings, manifests and command arguments are bounded by what the machine and the model can run.

Each case was a late failure (a traceback's type with exit 70, an exception per input, a MemoryError, a
run that never ends); each is now one line, exit 2, before any input is read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.cli import main
from vald.config import THREADS_PER_CPU, RunConfig, available_cpus
from vald.errors import ConfigError
from vald.schedules import NoiseSchedule, plan_ddim, plan_dpmpp_2m

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "engines" / "demo"
SAMPLE = DEMO / "samples" / "consolidation.png"
SD_LIKE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("vald: error: ")]
    assert len(errors) == 1 and "internal error" not in errors[0] and "Traceback" not in "".join(lines), lines
    return errors[0]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_every_step_count_up_to_the_training_timesteps_plans(spacing: str) -> None:
    schedule = NoiseSchedule.from_config({**SD_LIKE, "timestep_spacing": spacing})
    for steps in (*range(1, 1001, 37), 999, 1000):
        for plan in (plan_ddim(schedule, steps, 1.0), plan_dpmpp_2m(schedule, min(steps, 999), 1.0)):
            ts = plan.timesteps
            assert ts.min() >= 0 and ts.max() <= 999 and np.all(np.diff(ts) < 0), (steps, ts[:3])
    assert list(plan_ddim(schedule, 50, 1.0).timesteps[:2]) == (
        [981, 961] if spacing == "leading" else list(plan_ddim(schedule, 50, 1.0).timesteps[:2])
    )
    with pytest.raises(ConfigError, match="exceeds the model's 1000 training timesteps"):
        plan_ddim(schedule, 1001, 1.0)


def test_a_thousand_step_run_on_the_demo_model_plans_every_step() -> None:
    manifest = json.loads((DEMO / "manifest.json").read_text())
    schedule = NoiseSchedule.for_pipeline(manifest["scheduler"])
    plan = plan_ddim(schedule, 1000, 1.0)
    assert len(plan.timesteps) == 1000 and plan.timesteps[0] == 999 and plan.timesteps[-1] == 0


def test_threads_are_bounded_by_the_cpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limit = THREADS_PER_CPU * available_cpus()
    assert RunConfig(threads=limit).threads == limit
    with pytest.raises(ConfigError, match=f"threads={limit + 1} is more than {THREADS_PER_CPU} per CPU"):
        RunConfig(threads=limit + 1)
    config = tmp_path / "run.toml"
    config.write_text("threads = 1024\n")
    assert (
        main(["run", str(SAMPLE), "--engines", str(DEMO), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    )
    assert "threads=1024 is more than" in _one_error(capsys)


def _demo_copy(tmp_path: Path, edit) -> Path:
    """engines/demo's graphs and tokenizer with an edited manifest."""
    folder = tmp_path / "engines"
    folder.mkdir()
    for name in ("fp32", "tokenizer"):
        shutil.copytree(DEMO / name, folder / name)
    data = json.loads((DEMO / "manifest.json").read_text())
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data) if isinstance(data, dict) else data)
    return folder


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"].update(image_size="128"), "model.image_size='128' must be an integer in [8, 4096]"),
        (lambda d: d["model"].update(image_size=65536), "model.image_size=65536 must be an integer in [8, 4096]"),
        (lambda d: d["model"].update(image_size=0), "model.image_size=0 must be an integer"),
        (lambda d: d["model"].update(image_size=132), "must be a multiple of vae_scale_factor=8"),
        (lambda d: d["model"].update(max_length=-1), "model.max_length=-1 must be an integer in [1, 4096]"),
        (lambda d: d["model"].update(scaling_factor="NaN"), "model.scaling_factor='NaN' must be a finite number"),
        (lambda d: d["scheduler"].update(beta_end="NaN"), "scheduler beta_end="),
        (lambda d: d["scheduler"].update(beta_end=2.0), "scheduler beta_end=2.0 must be a number in (0, 1)"),
        (lambda d: d["scheduler"].update(num_train_timesteps=0), "num_train_timesteps=0 must be an integer"),
    ],
)
def test_manifest_values_fail_at_open_in_one_line(tmp_path: Path, capsys, edit, message: str) -> None:
    engines = _demo_copy(tmp_path, edit)
    code = main(
        [
            "run",
            str(SAMPLE),
            "--engines",
            str(engines),
            "--out",
            str(tmp_path / "o"),
            "--steps",
            "10",
            "--guidance-min-t",
            "0",
        ]
    )
    assert code == 2 and message in _one_error(capsys)
    assert not (tmp_path / "o" / "summary.json").exists()  # refused before any input was read


def test_deeply_nested_manifest_and_config_files_are_one_line(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "engines"
    folder.mkdir()
    (folder / "manifest.json").write_text(_nested(100_000))
    assert main(["verify", str(folder)]) == 2
    assert "nested too deeply" in _one_error(capsys)
    config = tmp_path / "run.toml"
    config.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert (
        main(["run", str(SAMPLE), "--engines", str(DEMO), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    )
    assert "nested too deeply" in _one_error(capsys)


def test_a_config_file_error_does_not_repeat_the_file_name(tmp_path: Path, capsys) -> None:
    config = tmp_path / "DOE_JOHN_1957.toml"
    config.write_text("steps = = 3\n")
    assert (
        main(["run", str(SAMPLE), "--engines", str(DEMO), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    )
    err = _one_error(capsys)
    assert "not valid TOML" in err and "DOE" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "missing.png"], "--image: no such file"),
        (["--repeats", "-1"], "--repeats -1 must be between 0 and 1000"),
        (["--repeats", "5000"], "--repeats 5000 must be between 0 and 1000"),
        (["--size", "0"], "--size 0 must be a multiple of the model's VAE factor 8"),
        (["--size", "100"], "--size 100 must be a multiple"),
        (["--timeout", "0"], "--timeout 0.0 must be a positive number of seconds"),
    ],
)
def test_bench_arguments_are_checked_before_anything_runs(tmp_path: Path, capsys, extra, message) -> None:
    argv = ["bench", "--engines", str(DEMO), "--out", str(tmp_path / "b"), "--contenders", "vald onnxruntime fp32"]
    assert main([*argv, *extra]) == 2
    assert message in _one_error(capsys)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (None, "--keep-mask: input file does not exist"),
        (np.zeros((64, 64), np.uint8), "--keep-mask: keep mask is 64x64, image is 256x256"),
        (np.zeros((256, 256), np.uint8), "--keep-mask: the keep mask is empty: nothing to keep"),
    ],
)
def test_keep_mask_problems_are_settings_errors_that_name_the_keep_mask(tmp_path: Path, capsys, mask, message) -> None:
    path = tmp_path / "keep.png"
    if mask is not None:
        Image.fromarray(mask).save(path)
    argv = ["run", str(SAMPLE), "--engines", str(DEMO), "--out", str(tmp_path / "o"), "--keep-mask", str(path)]
    assert main(argv) == 2
    assert message in _one_error(capsys)


def _eval_set(root: Path, mask: np.ndarray) -> Path:
    images, masks = root / "Lung_Opacity" / "images", root / "Lung_Opacity" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    shutil.copy(SAMPLE, images / "a.png")
    Image.fromarray(mask).save(masks / "a.png")
    (root / "Normal" / "images").mkdir(parents=True)
    shutil.copy(DEMO / "samples" / "normal.png", root / "Normal" / "images" / "n.png")
    return root


@pytest.mark.parametrize(
    ("shape", "box", "message"),
    [
        ((128, 64), (10, 20, 5, 15), "its mask is 64x128, its image 256x256: not the same aspect ratio"),
        ((1024, 1024), (100, 101, 100, 101), "has no usable region at the model's 128x128: lost when resampled"),
        ((128, 128), None, "has no usable region at the model's 128x128: empty"),
    ],
)
def test_eval_refuses_a_mask_it_cannot_score(tmp_path: Path, capsys, shape, box, message) -> None:
    pytest.importorskip("scipy")
    mask = np.zeros(shape, np.uint8)
    if box:
        mask[box[0] : box[1], box[2] : box[3]] = 255
    data = _eval_set(tmp_path / "set", mask)
    argv = ["eval", str(data), "--engines", str(DEMO), "--out", str(tmp_path / "e"), "--steps", "5"]
    assert main([*argv, "--strength", "1", "--guidance-min-t", "0"]) == 2
    err = _one_error(capsys)
    assert "case #1 (Lung_Opacity)" in err and message in err

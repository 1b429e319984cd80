"""The three attribution modes, DDIM inversion, and localized induction (tiny random model: behaviour, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.app import open_engines
from vald.attribution import attribute, check_against_model
from vald.cli import main
from vald.config import Mode, RunConfig
from vald.errors import ConfigError, InputError
from vald.induce import induce, latent_mask
from vald.pipeline import decode_latents, draw_noise, encode_image, text_states
from vald.sampling import add_noise, invert_ddim, sample_ddim
from vald.schedules import NoiseSchedule, plan_ddim
from vald.spec import Component

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def test_ddim_inversion_then_sampling_returns_the_start() -> None:
    plan = plan_ddim(NoiseSchedule.from_config({**SD_SCHEDULE, "clip_sample": False}), 50, 0.6)
    x0 = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)

    def denoiser(x: np.ndarray, t: int) -> np.ndarray:  # a smooth, time-dependent epsilon model
        return (0.3 * np.tanh(x) * (1 + t / 1000)).astype(np.float32)

    x_t = invert_ddim(denoiser, x0, plan)
    assert float(np.abs(x_t - x0).max()) > 0.1  # it really moved
    back = sample_ddim(denoiser, x_t, plan)
    assert float(np.abs(back - x0).max()) < 0.02


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "paired"}, "finding_prompt"),
        ({"mode": "inversion", "scheduler": "dpmpp-2m"}, "ddim"),
        ({"mode": "inversion", "eta": 0.5}, "eta=0"),
        ({"mode": "inversion", "average": 3}, "deterministic"),
        ({"mode": "paired", "finding_prompt": "nodule", "reference": "input"}, "reference"),
        ({"mode": "paired", "finding_prompt": "nodule", "reference": "autoencoder"}, "reference"),
        ({"mode": "bogus"}, "mode='bogus'"),
        ({"average": 0}, "average"),
    ],
)
def test_invalid_mode_settings_are_config_errors(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)  # type: ignore[arg-type]


def _input(engines_dir: Path) -> tuple[object, np.ndarray]:
    engines, _ = open_engines(engines_dir, RunConfig())
    size = engines.model.image_size
    y, x = np.mgrid[0:size, 0:size] / size
    return engines, (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)).astype(np.float32)


def test_inversion_is_deterministic_and_ignores_the_seed(engines: Path) -> None:
    eng, x = _input(engines)
    cfg = RunConfig(mode="inversion", steps=10, strength=0.5, guidance=3.0, guidance_min_t=0)
    a, b = attribute(eng, x, cfg), attribute(eng, x, cfg.replace(seed=99))  # type: ignore[arg-type]
    assert np.array_equal(a.counterfactual, b.counterfactual) and np.array_equal(a.reference, b.reference)
    by_input = attribute(eng, x, cfg.replace(reference="input"))  # type: ignore[arg-type]
    assert np.array_equal(by_input.signed_map, x - by_input.counterfactual)
    assert not np.array_equal(by_input.signed_map, a.signed_map)


def test_autoencoder_reference_is_the_vae_round_trip(engines: Path) -> None:
    from vald.pipeline import Timings, decode_latents, encode_image

    eng, x = _input(engines)
    cfg = RunConfig(mode="img2img", reference="autoencoder", steps=8, strength=0.5, guidance_min_t=0)
    result = attribute(eng, x, cfg)  # type: ignore[arg-type]
    timings = Timings()
    round_trip = decode_latents(eng, encode_image(eng, x, timings), timings)  # type: ignore[arg-type]
    assert np.array_equal(result.reference, round_trip)
    plain = attribute(eng, x, cfg.replace(reference="input"))  # type: ignore[arg-type]
    assert np.array_equal(plain.counterfactual, result.counterfactual)  # same start, same sampling


def test_paired_toward_the_same_prompt_gives_an_empty_map(engines: Path) -> None:
    eng, x = _input(engines)
    cfg = RunConfig(
        mode="paired", finding_prompt=RunConfig().prompt, steps=10, strength=0.5, average=2, guidance_min_t=0
    )
    assert not np.any(attribute(eng, x, cfg).signed_map)  # type: ignore[arg-type]
    other = attribute(eng, x, cfg.replace(finding_prompt="right lower zone consolidation"))  # type: ignore[arg-type]
    assert np.abs(other.signed_map).max() > 0


def test_averaging_seeds_is_the_mean_of_single_runs(engines: Path) -> None:
    eng, x = _input(engines)
    cfg = RunConfig(mode="img2img", steps=8, strength=0.5, seed=4, guidance_min_t=0)
    singles = [attribute(eng, x, cfg.replace(seed=s)).counterfactual for s in (4, 5)]  # type: ignore[arg-type]
    both = attribute(eng, x, cfg.replace(average=2)).counterfactual  # type: ignore[arg-type]
    assert np.allclose(both, np.mean(singles, axis=0), atol=1e-6)


def test_progress_counts_every_pass_once(engines: Path) -> None:
    eng, x = _input(engines)
    seen: list[tuple[int, int]] = []
    attribute(
        eng,
        x,
        RunConfig(mode="inversion", steps=10, strength=0.5, guidance_min_t=0),
        on_step=lambda i, n: seen.append((i, n)),
    )  # type: ignore[arg-type]
    # inversion, then the counterfactual and its reconstruction stepped together in one batched pass
    assert seen[-1] == (10, 10) and [i for i, _ in seen] == list(range(1, 11))


class _CountingUnet:
    """A session wrapper that records the batch size of every UNet call."""

    def __init__(self, inner: object) -> None:
        self.inner, self.batches = inner, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def run(self, feeds):  # type: ignore[no-untyped-def]
        self.batches.append(feeds["sample"].shape[0])
        return self.inner.run(feeds)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "inversion"},
        {"mode": "img2img", "reference": "reconstruction", "eta": 0.5, "finding_prompt": "right upper consolidation"},
    ],
)
def test_counterfactual_and_reconstruction_share_one_unet_call_per_step(engines: Path, settings: dict) -> None:
    """The batched pass gives what separate passes give, in one batch-3 (or 4) call per step."""
    from dataclasses import replace

    from vald.attribution import _sample
    from vald.pipeline import Timings, make_denoiser

    eng, x = _input(engines)
    counting = _CountingUnet(eng.sessions[Component.UNET])
    eng = replace(eng, sessions={**eng.sessions, Component.UNET: counting})
    cfg = RunConfig(steps=10, strength=0.5, seed=2, guidance_min_t=0, **settings)
    got = attribute(eng, x, cfg)
    guided_source = 1 + bool(cfg.finding_prompt and cfg.mode is Mode.IMG2IMG)
    assert counting.batches[-5:] == [2 + guided_source] * 5  # the joint pass: 5 steps of strength 0.5 of 10
    # the same two trajectories run one after the other, as before batching
    t = Timings()
    negative, target, source = np.split(text_states(eng, [cfg.negative_prompt, cfg.prompt, cfg.finding_prompt], t), 3)
    plan = plan_ddim(eng.schedule, cfg.steps, cfg.strength)
    unet = counting.inner
    if cfg.mode is Mode.INVERSION:
        start = invert_ddim(make_denoiser(unet, negative, None, 1.0, t), encode_image(eng, x, t), plan)
        to_source = make_denoiser(unet, negative, None, 1.0, t)
    else:
        z = encode_image(eng, x, t)
        start = add_noise(z, draw_noise(cfg.seed, z.shape, 1)[0], plan.start_alpha_bar)
        to_source = make_denoiser(unet, source, negative, cfg.guidance, t)
    progress = lambda i, n: None  # noqa: E731
    cf = _sample(make_denoiser(unet, target, negative, cfg.guidance, t), start, plan, cfg.eta, cfg.seed, progress, 1)
    rec = _sample(to_source, start, plan, cfg.eta, cfg.seed, progress, 1)
    assert np.abs(decode_latents(eng, cf, t) - got.counterfactual).max() < 1e-5
    assert np.abs(decode_latents(eng, rec, t) - got.reference).max() < 1e-5


@pytest.mark.parametrize("unet_batch", [1, 2])
def test_unet_batch_splits_each_step_into_smaller_calls_with_the_same_result(engines: Path, unet_batch: int) -> None:
    """``unet_batch`` caps the rows per UNet call; the split run follows the one-call run to rounding level."""
    from dataclasses import replace

    eng, x = _input(engines)
    counting = _CountingUnet(eng.sessions[Component.UNET])
    eng = replace(eng, sessions={**eng.sessions, Component.UNET: counting})
    cfg = RunConfig(steps=10, strength=0.5, guidance_min_t=0)  # inversion, then batch-3 steps
    whole = attribute(eng, x, cfg)
    assert max(counting.batches) == 3
    counting.batches.clear()
    split = attribute(eng, x, cfg.replace(unet_batch=unet_batch))
    # the inversion pass (batch 1) is unchanged; each joint step's 3 rows go in ceil(3 / unet_batch) calls
    joint = {1: [1, 1, 1], 2: [2, 1]}[unet_batch]
    assert counting.batches == [1] * 5 + joint * 5
    for name in ("counterfactual", "reference", "signed_map"):
        a, b = getattr(whole, name), getattr(split, name)
        assert np.abs(a - b).max() < 1e-4, name
    masked = induce(eng, x, np.ones_like(x), RunConfig(steps=6, strength=0.5, guidance_min_t=0, unet_batch=1))
    assert np.isfinite(masked.image).all() and counting.batches[-1] == 1


def test_unet_batch_must_be_a_small_whole_number() -> None:
    for bad, message in ((-1, "out of range"), (65, "out of range"), (1.5, "integer")):
        with pytest.raises(ConfigError, match=f"unet_batch=.* {message}"):
            RunConfig(unet_batch=bad)  # type: ignore[arg-type]


def test_induce_changes_only_inside_the_mask(engines: Path) -> None:
    eng, x = _input(engines)
    size = x.shape[0]
    mask = np.zeros_like(x)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 1.0
    out = induce(
        eng, x, mask, RunConfig(prompt="left lower zone consolidation", steps=10, strength=0.8, guidance_min_t=0)
    )  # type: ignore[arg-type]
    assert np.array_equal(out.image[out.mask == 0], x[out.mask == 0])  # the original, exactly, outside
    assert float(np.abs(out.image - x)[mask > 0].mean()) > 1e-3
    assert latent_mask(mask, 4).sum() == (size // 16) ** 2
    with pytest.raises(InputError, match="empty"):
        induce(eng, x, np.zeros_like(x), RunConfig())  # type: ignore[arg-type]


def test_cli_induce_and_mode_provenance(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    native = np.asarray(Image.open(small_png))
    mask = np.zeros_like(native)
    mask[30:60, 20:50] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    args = [
        "--engines",
        str(engines),
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "6",
        "--guidance-min-t",
        "0",
        "--quiet",
    ]
    assert main(["induce", str(small_png), "--mask", str(mask_path), "--prompt", "left lower zone nodule", *args]) == 0
    out_dir = Path(capsys.readouterr().out.strip())
    induced = np.asarray(Image.open(out_dir / "induced.png"))
    assert induced.shape == native.shape
    result = json.loads((out_dir / "result.json").read_text())
    assert result["settings"]["task"] == "induce" and "left lower" not in json.dumps(result)
    code = main(["run", str(small_png), *args, "--mode", "paired", "--finding-prompt", "right upper zone nodule"])
    assert code == 0
    settings = json.loads((Path(capsys.readouterr().out.strip()) / "result.json").read_text())["settings"]
    assert settings["mode"] == "paired" and settings["reference"] == "reconstruction" and settings["seeds"] == [0]
    assert "finding_prompt" not in settings and len(settings["finding_prompt_sha256"]) == 64
    assert main(["run", str(small_png), *args, "--mode", "paired"]) == 2
    assert "finding_prompt" in capsys.readouterr().err


def test_a_guidance_interval_guides_only_the_noisier_steps(engines: Path) -> None:
    """Below ``guidance_min_t`` the unconditional rows leave the batch and the prompt alone steers."""
    from dataclasses import replace

    from vald.attribution import _sample
    from vald.pipeline import Timings, make_denoiser

    eng, x = _input(engines)
    counting = _CountingUnet(eng.sessions[Component.UNET])
    eng = replace(eng, sessions={**eng.sessions, Component.UNET: counting})
    cfg = RunConfig(mode="img2img", steps=10, strength=0.5, seed=3, guidance=4.0, guidance_min_t=250)
    got = attribute(eng, x, cfg)
    plan = plan_ddim(eng.schedule, cfg.steps, cfg.strength)
    assert counting.batches == [2 if t >= 250 else 1 for t in plan.timesteps] and 1 in counting.batches
    t = Timings()
    negative, target = np.split(text_states(eng, [cfg.negative_prompt, cfg.prompt], t), 2)
    guided, plain = (
        make_denoiser(counting.inner, target, negative, 4.0, t),
        make_denoiser(counting.inner, target, None, 1.0, t),
    )
    z = encode_image(eng, x, t)
    start = add_noise(z, draw_noise(cfg.seed, z.shape, 1)[0], plan.start_alpha_bar)
    cf = _sample(
        lambda x_, t_: guided(x_, t_) if t_ >= 250 else plain(x_, t_), start, plan, 0.0, 3, lambda i, n: None, 1
    )
    assert np.abs(decode_latents(eng, cf, t) - got.counterfactual).max() < 1e-5
    everywhere = attribute(eng, x, cfg.replace(guidance_min_t=0))
    assert np.abs(everywhere.counterfactual - got.counterfactual).max() > 1e-4  # the setting does something
    with pytest.raises(ConfigError, match="guidance_min_t=1000"):
        check_against_model(eng, cfg.replace(guidance_min_t=1000))

"""Counterfactual generation: chain the four sessions around a pure sampler.

Abnormal image -> VAE encode -> noise to the strength's timestep -> guided
denoising toward the target prompt -> VAE decode.  The attribution map is
``M = input - counterfactual`` (signed; positive where the input is brighter
than its normal counterfactual).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vald.config import RunConfig, SchedulerKind
from vald.errors import ValdError
from vald.manifest import ModelInfo
from vald.sampling import Array, Denoiser, OnStep, add_noise, sample_ddim, sample_dpmpp_2m
from vald.schedules import NoiseSchedule, plan_ddim, plan_dpmpp_2m
from vald.sessions import Session
from vald.spec import Component
from vald.tokenizer import PromptTokenizer


class NumericalError(ValdError):
    """A network produced NaN or infinite values (typically FP16 overflow)."""


@dataclass(frozen=True)
class Engines:
    """Opened sessions plus what is needed to drive them."""

    sessions: Mapping[Component, Session]
    tokenizer: PromptTokenizer
    model: ModelInfo
    schedule: NoiseSchedule


@dataclass
class Timings:
    """Wall-clock seconds per stage."""

    stages: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, fn: Callable[[], Array]) -> Array:
        """Time ``fn`` under ``stage`` (accumulating) and check its output is finite."""
        start = time.perf_counter()
        out = fn()
        self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start
        if not np.all(np.isfinite(out)):
            raise NumericalError(f"{stage} produced NaN/inf values; try precision=fp32")
        return out


def make_denoiser(unet: Session, cond: Array, uncond: Array | None, guidance: float, timings: Timings) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): ``e_u + g (e_c - e_u)`` in one batch-2 UNet call.

    ``cond``/``uncond`` are ``[B, S, hidden]`` text states; with ``uncond`` None or
    ``guidance == 1`` the UNet runs on the conditional batch only.
    """
    guided = uncond is not None and guidance > 1.0
    states = np.concatenate([uncond, cond]) if guided and uncond is not None else cond

    def denoiser(x: Array, t: int) -> Array:
        batch = np.concatenate([x, x]) if guided else x
        feeds = {
            "sample": batch,
            "timestep": np.full((batch.shape[0],), t, dtype=np.float32),
            "encoder_hidden_states": states,
        }
        out = timings.run("unet", lambda: unet.run(feeds)["out_sample"])
        if not guided:
            return out
        e_u, e_c = np.split(out, 2)
        return (e_u + guidance * (e_c - e_u)).astype(np.float32)

    return denoiser


def draw_noise(seed: int, shape: tuple[int, ...], count: int) -> list[Array]:
    """``count`` standard-normal float32 arrays from one seeded host generator (PCG64)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


def to_model_pixels(image01: NDArray[np.float32], channels: int) -> Array:
    """``[H, W]`` in [0, 1] -> ``[1, C, H, W]`` in [-1, 1]."""
    x = image01[None, None].astype(np.float32) * 2.0 - 1.0
    return np.repeat(x, channels, axis=1)


def from_model_pixels(images: Array) -> NDArray[np.float32]:
    """``[1, C, H, W]`` in about [-1, 1] -> ``[H, W]`` in [0, 1] (channel mean)."""
    out: NDArray[np.float32] = np.clip(images[0].mean(axis=0) / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)
    return out


def encode_prompts(engines: Engines, cfg: RunConfig, timings: Timings) -> tuple[Array, Array | None]:
    """Text states of the target prompt and (when guiding) the negative prompt."""
    guided = cfg.guidance > 1.0
    ids = engines.tokenizer([cfg.negative_prompt, cfg.prompt] if guided else [cfg.prompt])
    encoder = engines.sessions[Component.TEXT_ENCODER]
    states = timings.run("text_encoder", lambda: encoder.run({"input_ids": ids})["last_hidden_state"])
    return (states[1:], states[:1]) if guided else (states, None)


def counterfactual(
    engines: Engines, image01: NDArray[np.float32], cfg: RunConfig, *, on_step: OnStep | None = None
) -> tuple[NDArray[np.float32], Timings]:
    """The normal counterfactual of a model-resolution image.

    ``image01``: ``[S, S]`` float32 in [0, 1] with ``S = engines.model.image_size``.
    Returns the counterfactual (same shape, [0, 1]) and per-stage timings.
    """
    m, timings = engines.model, Timings()
    cond, uncond = encode_prompts(engines, cfg, timings)
    pixels = to_model_pixels(image01, m.image_channels)
    vae_enc, vae_dec = engines.sessions[Component.VAE_ENCODER], engines.sessions[Component.VAE_DECODER]
    mean = timings.run("vae_encoder", lambda: vae_enc.run({"images": pixels})["latent_mean"])
    latents = ((mean - m.shift_factor) * m.scaling_factor).astype(np.float32)
    denoiser = make_denoiser(engines.sessions[Component.UNET], cond, uncond, cfg.guidance, timings)
    start = time.perf_counter()
    if cfg.scheduler is SchedulerKind.DDIM:
        ddim = plan_ddim(engines.schedule, cfg.steps, cfg.strength)
        noises = draw_noise(cfg.seed, latents.shape, 1 + (len(ddim.timesteps) if cfg.eta > 0 else 0))
        x_t = add_noise(latents, noises[0], ddim.start_alpha_bar)
        x0 = sample_ddim(denoiser, x_t, ddim, eta=cfg.eta, noises=noises[1:], on_step=on_step)
    else:
        dpm = plan_dpmpp_2m(engines.schedule, cfg.steps, cfg.strength)
        x_t = add_noise(latents, draw_noise(cfg.seed, latents.shape, 1)[0], dpm.start_alpha_bar)
        x0 = sample_dpmpp_2m(denoiser, x_t, dpm, on_step=on_step)
    timings.stages["sampling"] = time.perf_counter() - start
    z = (x0 / m.scaling_factor + m.shift_factor).astype(np.float32)
    decoded = timings.run("vae_decoder", lambda: vae_dec.run({"latent": z})["images"])
    return from_model_pixels(decoded), timings

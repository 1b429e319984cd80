"""Localized disease induction: masked img2img that adds a named finding inside a region.

The input latent is noised to the strength's timestep and denoised toward the
finding prompt with guidance; after every DDIM step the latents outside the
(latent-resolution) mask are replaced by the input's latents noised to that
step's level, so only the masked region is re-synthesised.  The decoded image
is then blended into the input with a feathered pixel mask, so pixels outside
the region are the input's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import RunConfig, SchedulerKind
from vald.errors import ConfigError, InputError
from vald.pipeline import Engines, Timings, decode_latents, draw_noise, encode_image, make_denoiser, text_states
from vald.sampling import OnStep, add_noise, sample_ddim
from vald.schedules import plan_ddim
from vald.spec import Component

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Induction:
    """The image with the finding added, the pixel mask used, and timings."""

    image: F32
    mask: F32
    timings: Timings


def latent_mask(mask01: F32, factor: int) -> F32:
    """``[S, S]`` pixel mask -> ``[1, 1, S/f, S/f]``: a latent cell is inside if any of its pixels is."""
    s = mask01.shape[0] // factor
    cells = mask01[: s * factor, : s * factor].reshape(s, factor, s, factor).max(axis=(1, 3))
    out: F32 = (cells > 0.5).astype(np.float32)[None, None]
    return out


def check_region(mask01: F32, image01: F32, name: str, purpose: str) -> None:
    """InputError unless ``mask01`` has the image's shape and a non-empty region (values > 0.5)."""
    if mask01.shape != image01.shape:
        raise InputError(f"{name} shape {mask01.shape} does not match the image {image01.shape}")
    if not np.any(mask01 > 0.5):
        raise InputError(f"the {name} is empty: nothing to {purpose}")


def feather(mask01: F32, sigma: float) -> F32:
    """Gaussian-blurred mask (separable, edge-padded), values in [0, 1]."""
    if sigma <= 0:
        return mask01.astype(np.float32)
    radius = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.pad(mask01.astype(np.float64), radius, mode="edge")
    out = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 0, out)
    out = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def induce(engines: Engines, image01: F32, mask01: F32, cfg: RunConfig, *, on_step: OnStep | None = None) -> Induction:
    """Add ``cfg.prompt``'s finding to ``image01`` inside ``mask01`` (both ``[S, S]`` at model size, in [0, 1])."""
    if cfg.scheduler is not SchedulerKind.DDIM:
        raise ConfigError("induce supports scheduler=ddim only")
    check_region(mask01, image01, "mask", "induce")
    timings = Timings()
    negative, finding = np.split(text_states(engines, [cfg.negative_prompt, cfg.prompt], timings), 2)
    z = encode_image(engines, image01, timings)
    plan = plan_ddim(engines.schedule, cfg.steps, cfg.strength)
    cfg.check_guidance_interval(list(plan.timesteps), engines.schedule.num_train_timesteps)
    noise = draw_noise(cfg.seed, z.shape, 1)[0]
    ops = engines.ops
    inside = ops.state(latent_mask(mask01, engines.model.vae_scale_factor))
    z_state, noise_state = ops.state(z), ops.state(noise)

    def keep_outside(x_prev: Any, i: int) -> Any:
        a = float(plan.alpha_bar_prev[i])
        known = math.sqrt(a) * z_state + math.sqrt(1 - a) * noise_state
        return inside * x_prev + (1.0 - inside) * known

    unet = engines.sessions[Component.UNET]
    denoiser = make_denoiser(
        unet, finding, negative, cfg.guidance, timings, ops, min_t=cfg.guidance_min_t, max_batch=cfg.unet_batch
    )
    x_t = add_noise(z, noise, plan.start_alpha_bar)
    x0 = sample_ddim(denoiser, x_t, plan, on_step=on_step, constrain=keep_outside, ops=ops)
    decoded = decode_latents(engines, x0, timings)
    soft = feather((mask01 > 0.5).astype(np.float32), sigma=max(1.0, mask01.shape[0] / 128))
    return Induction((soft * decoded + (1 - soft) * image01).astype(np.float32), soft, timings)

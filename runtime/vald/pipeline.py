"""Building blocks that chain the sessions: prompt states, VAE encode/decode, the guided denoiser, noise.

:mod:`vald.attribution` assembles them into the three attribution modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vald.errors import ValdError
from vald.manifest import ModelInfo
from vald.sampling import Array, Denoiser
from vald.schedules import NoiseSchedule
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


def text_states(engines: Engines, texts: list[str], timings: Timings) -> Array:
    """Text-encoder states ``[len(texts), L, hidden]`` of ``texts``."""
    encoder = engines.sessions[Component.TEXT_ENCODER]
    ids = engines.tokenizer(texts)
    return timings.run("text_encoder", lambda: encoder.run({"input_ids": ids})["last_hidden_state"])


def encode_image(engines: Engines, image01: NDArray[np.float32], timings: Timings) -> Array:
    """``[S, S]`` in [0, 1] -> scaled latents ``[1, C, h, w]`` (the posterior mean, as img2img pipelines)."""
    m = engines.model
    pixels = to_model_pixels(image01, m.image_channels)
    vae_enc = engines.sessions[Component.VAE_ENCODER]
    mean = timings.run("vae_encoder", lambda: vae_enc.run({"images": pixels})["latent_mean"])
    return ((mean - m.shift_factor) * m.scaling_factor).astype(np.float32)


def decode_latents(engines: Engines, latents: Array, timings: Timings) -> NDArray[np.float32]:
    """Scaled latents ``[1, C, h, w]`` -> image ``[S, S]`` in [0, 1]."""
    m = engines.model
    z = (latents / m.scaling_factor + m.shift_factor).astype(np.float32)
    vae_dec = engines.sessions[Component.VAE_DECODER]
    return from_model_pixels(timings.run("vae_decoder", lambda: vae_dec.run({"latent": z})["images"]))

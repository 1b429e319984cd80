"""Building blocks that chain the sessions: prompt states, VAE encode/decode, the guided denoiser, noise.

:mod:`vald.attribution` assembles them into the three attribution modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.errors import ValdError
from vald.manifest import ModelInfo
from vald.sampling import HOST, Array, ArrayOps, Denoiser
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
    ops: ArrayOps = HOST  # where the sampling loop's arithmetic runs (``--loop``)


@dataclass
class Timings:
    """Wall-clock seconds per stage."""

    stages: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, fn: Callable[[], Any], ops: ArrayOps = HOST) -> Any:
        """Time ``fn`` under ``stage`` (accumulating) and check its output is finite (arrays of ``ops``' kind)."""
        start = time.perf_counter()
        out = fn()
        finite = ops.finite(out)  # on a device this waits for the work: the time is the stage's
        self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start
        if not finite:
            raise NumericalError(f"{stage} produced NaN/inf values; try precision=fp32")
        return out


@dataclass(frozen=True)
class Branch:
    """One conditioning of a batched denoiser: ``cond`` states, optional ``uncond`` and the guidance scale.

    Guidance applies at timesteps ``t >= min_t``; below, the branch is ``e_c`` alone.
    """

    cond: Array
    uncond: Array | None = None
    guidance: float = 1.0
    min_t: int = 0

    def guided_at(self, t: int) -> bool:
        """Whether this branch needs the unconditional prediction too (CFG) at timestep ``t``."""
        return self.uncond is not None and self.guidance > 1.0 and t >= self.min_t

    def states(self, guided: bool) -> list[Array]:
        """Text states this branch adds to the UNet batch, in batch order."""
        return [self.uncond, self.cond] if guided and self.uncond is not None else [self.cond]


def make_batched_denoiser(
    unet: Session, branches: Sequence[Branch], timings: Timings, ops: ArrayOps = HOST, max_batch: int = 0
) -> Denoiser:
    """Several conditionings of several latents in one UNet call per step.

    The state ``x`` stacks one equal slice per branch (``x = [x_1; ...; x_n]``); branch ``k`` sees
    ``x_k`` and returns classifier-free guidance (Ho & Salimans 2022) ``e_u + g (e_c - e_u)`` when
    guided, else ``e_c``.  The UNet batch is ``[x_1 (uncond), x_1 (cond), x_2 (cond), ...]``: a
    counterfactual (guided) and a reconstruction (unguided) stepping from the same timestep cost one
    batch-3 call instead of a batch-2 and a batch-1 call.  The samplers are elementwise over the batch,
    so each slice follows exactly the trajectory it would alone.  Below a branch's ``min_t`` its
    unconditional rows leave the batch.

    ``ops`` says what kind of arrays ``x`` is (numpy on the host, or device arrays: then the text states,
    the timesteps and the UNet's output live on the device too, and nothing is copied per step).
    ``max_batch`` > 0 runs that batch as consecutive UNet calls of at most ``max_batch`` rows (the run
    setting ``unet_batch``): the same rows, less activation memory per call.
    """
    states: dict[tuple[int, tuple[bool, ...]], Any] = {}  # (rows per branch, guided) -> states as ``ops`` arrays
    timesteps: dict[tuple[int, int], Any] = {}

    def denoiser(x: Any, t: int) -> Any:
        guided = tuple(b.guided_at(t) for b in branches)
        slices = ops.split(x, len(branches))
        batch = ops.cat([x_k for g, x_k in zip(guided, slices, strict=True) for _ in range(1 + g)])
        rows = x.shape[0] // len(branches)
        if (rows, guided) not in states:
            host = np.concatenate([s for b, g in zip(branches, guided, strict=True) for s in b.states(g)])
            states[(rows, guided)] = ops.net(np.repeat(host.astype(np.float32), rows, axis=0))
        size = rows * (len(branches) + sum(guided))
        if (t, size) not in timesteps:
            timesteps[(t, size)] = ops.net(np.full((size,), t, dtype=np.float32))
        feeds = {"sample": batch, "timestep": timesteps[(t, size)], "encoder_hidden_states": states[(rows, guided)]}
        out = timings.run("unet", lambda: _run_in_parts(unet, feeds, size, max_batch, ops), ops)
        results, at = [], 0
        for b, g in zip(branches, guided, strict=True):
            if g:
                e_u, e_c = out[at : at + rows], out[at + rows : at + 2 * rows]
                results.append(e_u + b.guidance * (e_c - e_u))
                at += 2 * rows
            else:
                results.append(out[at : at + rows])
                at += rows
        return ops.net(ops.cat(results))

    return denoiser


def part_sizes(size: int, max_batch: int) -> list[int]:
    """Rows of each UNet call when a step's ``size`` rows go in calls of at most ``max_batch`` (0: one call)."""
    step = max_batch or size
    return [min(step, size - at) for at in range(0, size, step)]


def _run_in_parts(unet: Session, feeds: dict[str, Any], size: int, max_batch: int, ops: ArrayOps) -> Any:
    """The UNet's ``out_sample`` for ``feeds`` (``size`` rows), in calls of :func:`part_sizes` rows."""
    parts = part_sizes(size, max_batch)
    if len(parts) == 1:
        return ops.run(unet, feeds)["out_sample"]
    outs, at = [], 0
    for rows in parts:
        outs.append(ops.run(unet, {name: value[at : at + rows] for name, value in feeds.items()})["out_sample"])
        at += rows
    return ops.cat(outs)


def make_denoiser(
    unet: Session,
    cond: Array,
    uncond: Array | None,
    guidance: float,
    timings: Timings,
    ops: ArrayOps = HOST,
    min_t: int = 0,
    max_batch: int = 0,
) -> Denoiser:
    """Classifier-free guidance in one batch-2 UNet call (one branch of :func:`make_batched_denoiser`).

    ``cond``/``uncond`` are ``[1, S, hidden]`` text states; with ``uncond`` None, ``guidance == 1``
    or a timestep below ``min_t`` the UNet runs on the conditional batch only.
    """
    return make_batched_denoiser(unet, [Branch(cond, uncond, guidance, min_t)], timings, ops, max_batch)


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
    ids, mask = engines.tokenizer.encode(texts)
    feeds = {"input_ids": ids, "attention_mask": mask} if engines.model.attention_mask else {"input_ids": ids}
    out: Array = timings.run("text_encoder", lambda: encoder.run(feeds)["last_hidden_state"])
    return out


def encode_image(engines: Engines, image01: NDArray[np.float32], timings: Timings) -> Array:
    """``[S, S]`` in [0, 1] -> scaled latents ``[1, C, h, w]`` (the posterior mean, as img2img pipelines)."""
    m = engines.model
    pixels = to_model_pixels(image01, m.image_channels)
    vae_enc = engines.sessions[Component.VAE_ENCODER]
    mean: Array = timings.run("vae_encoder", lambda: vae_enc.run({"images": pixels})["latent_mean"])
    return ((mean - m.shift_factor) * m.scaling_factor).astype(np.float32)


def decode_latents(engines: Engines, latents: Array, timings: Timings) -> NDArray[np.float32]:
    """Scaled latents ``[1, C, h, w]`` -> image ``[S, S]`` in [0, 1]."""
    m = engines.model
    z = (latents / m.scaling_factor + m.shift_factor).astype(np.float32)
    vae_dec = engines.sessions[Component.VAE_DECODER]
    return from_model_pixels(timings.run("vae_decoder", lambda: vae_dec.run({"latent": z})["images"]))

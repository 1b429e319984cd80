"""The three ways to make a normal counterfactual and its attribution map.

All work on model-resolution images ``[S, S]`` float32 in [0, 1].  With ``z`` the
VAE latent of the input and ``T`` the strength's timestep:

- ``img2img`` (the paper's): ``x_T = sqrt(a_T) z + sqrt(1 - a_T) noise``; denoise
  toward the target (normal) prompt with guidance; ``M = input - counterfactual``.
- ``inversion`` (Wolleb et al. 2022): ``x_T`` from deterministic DDIM inversion of
  ``z`` (unconditional, or conditioned on ``finding_prompt``); denoise toward the
  target prompt; by default ``M = reconstruction - counterfactual`` where the
  reconstruction denoises the same ``x_T`` with the inversion's own conditioning,
  which cancels the VAE and inversion error that ``input - counterfactual`` keeps.
  ``reference=autoencoder`` (any mode) subtracts from the input's VAE round trip instead.
- ``paired``: the same noised ``x_T`` denoised once toward ``finding_prompt`` and
  once toward the target prompt; ``M`` = their decoded difference.

``keep`` (a pixel mask: tubes, lines, devices) holds a region unchanged (as RadEdit): after every
DDIM step the counterfactual's latents inside it are replaced by the reconstruction branch's (the
same start denoised with the source conditioning, run for this even when it is not the reference),
and the decoded counterfactual takes the reference's pixels there through a feathered mask, so
``M`` is exactly 0 inside the region.

``average`` > 1 repeats a stochastic mode with seeds ``seed, seed+1, ...`` and
averages the decoded images; the per-pixel standard deviation of the per-seed maps is the
map's uncertainty (how much the answer depends on the noise drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import Mode, Reference, RunConfig, SchedulerKind
from vald.errors import ConfigError
from vald.induce import check_region, feather, latent_mask
from vald.pipeline import (
    Branch,
    Engines,
    Timings,
    decode_latents,
    draw_noise,
    encode_image,
    make_batched_denoiser,
    text_states,
)
from vald.sampling import (
    HOST,
    Array,
    ArrayOps,
    Constrain,
    Denoiser,
    OnStep,
    add_noise,
    invert_ddim,
    sample_ddim,
    sample_dpmpp_2m,
)
from vald.schedules import DdimPlan, DpmPlan, plan_ddim, plan_dpmpp_2m
from vald.spec import Component

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Attribution:
    """A counterfactual, what it is compared with, and the per-stage timings."""

    counterfactual: F32
    reference: F32
    timings: Timings
    uncertainty: F32 | None = None  # per-pixel std of the per-seed maps (average > 1), else None

    @property
    def signed_map(self) -> F32:
        """``M = reference - counterfactual`` (positive where the finding adds brightness)."""
        out: F32 = (self.reference - self.counterfactual).astype(np.float32)
        return out


class _Progress:
    """Counts sampler steps over several passes and reports them as one sequence."""

    def __init__(self, total: int, on_step: OnStep | None) -> None:
        self.total, self.done, self.on_step = total, 0, on_step

    def __call__(self, _step: int, _of: int) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _plan(engines: Engines, cfg: RunConfig) -> DdimPlan | DpmPlan:
    """The configured sampler's plan from the strength's timestep down (computed once per call)."""
    if cfg.scheduler is SchedulerKind.DPMPP_2M:
        return plan_dpmpp_2m(engines.schedule, cfg.steps, cfg.strength)
    return plan_ddim(engines.schedule, cfg.steps, cfg.strength)


def check_against_model(engines: Engines, cfg: RunConfig) -> None:
    """ConfigError if ``cfg`` cannot run on this model (e.g. more steps than its training timesteps)."""
    cfg.check_guidance_interval(list(_plan(engines, cfg).timesteps), engines.schedule.num_train_timesteps)


def _sample(
    denoiser: Denoiser,
    x_t: Array,
    plan: DdimPlan | DpmPlan,
    eta: float,
    seed: int,
    progress: _Progress,
    copies: int,
    constrain: Constrain | None = None,
    ops: ArrayOps = HOST,
) -> Array:
    """Denoise ``x_t`` (``copies`` stacked passes from one start) from the plan's first timestep to x_0.

    With eta > 0 every copy gets the same per-step noise, as if each were sampled alone with ``seed``.
    """
    out: Array
    if isinstance(plan, DpmPlan):
        out = sample_dpmpp_2m(denoiser, x_t, plan, on_step=progress, ops=ops)
    elif eta == 0:
        out = sample_ddim(denoiser, x_t, plan, on_step=progress, constrain=constrain, ops=ops)
    else:
        single = (x_t.shape[0] // copies, *x_t.shape[1:])
        noises = [np.concatenate([n] * copies) for n in draw_noise(seed + 7_919, single, len(plan.timesteps))]
        out = sample_ddim(denoiser, x_t, plan, eta=eta, noises=noises, on_step=progress, constrain=constrain, ops=ops)
    return out


def _hold(keep01: F32, factor: int, ops: ArrayOps) -> Constrain:
    """After each step, the first copy (the counterfactual) takes the second's latents inside the region."""
    inside = ops.state(latent_mask(keep01, factor))

    def constrain(x_prev: Any, _i: int) -> Any:
        return ops.cat([inside * x_prev[1:2] + (1.0 - inside) * x_prev[:1], x_prev[1:]])

    return constrain


def _check_keep(keep01: F32, image01: F32, plan: DdimPlan | DpmPlan) -> None:
    check_region(keep01, image01, "keep mask", "keep")
    if isinstance(plan, DpmPlan):
        raise ConfigError("--keep-mask needs scheduler=ddim")


def _passes(cfg: RunConfig) -> int:
    """Sampler passes the mode runs (for the progress total); a counterfactual and its reconstruction are one."""
    return 2 if cfg.mode is Mode.INVERSION else cfg.average


def attribute(
    engines: Engines, image01: F32, cfg: RunConfig, *, on_step: OnStep | None = None, keep: F32 | None = None
) -> Attribution:
    """Counterfactual and reference of ``image01`` (``[S, S]`` in [0, 1], ``S = engines.model.image_size``).

    ``keep``: an optional ``[S, S]`` mask (white = hold unchanged), see the module docstring.
    """
    timings, ops = Timings(), engines.ops
    plan = _plan(engines, cfg)
    cfg.check_guidance_interval(list(plan.timesteps), engines.schedule.num_train_timesteps)
    if keep is not None:
        _check_keep(keep, image01, plan)
    progress = _Progress(_passes(cfg) * len(plan.timesteps), on_step)
    negative, target, source = np.split(
        text_states(engines, [cfg.negative_prompt, cfg.prompt, cfg.finding_prompt], timings), 3
    )
    z = encode_image(engines, image01, timings)
    unet = engines.sessions[Component.UNET]
    to_target = Branch(target, negative, cfg.guidance, cfg.guidance_min_t)
    starts: list[tuple[Array, int]]
    if cfg.mode is Mode.INVERSION:
        if not isinstance(plan, DdimPlan):
            raise ConfigError("mode=inversion needs scheduler=ddim")
        to_source = Branch(source if cfg.finding_prompt else negative)
        invert = make_batched_denoiser(unet, [to_source], timings, ops, cfg.unet_batch)
        inverted = invert_ddim(invert, z, plan, on_step=progress, ops=ops)
        starts = [(inverted, cfg.seed)]
    else:
        guided_source = bool(cfg.finding_prompt)
        to_source = Branch(
            source if guided_source else negative, negative, cfg.guidance if guided_source else 1.0, cfg.guidance_min_t
        )
        alpha_bar = plan.start_alpha_bar
        seeds = [cfg.seed + k for k in range(cfg.average)]
        starts = [(add_noise(z, draw_noise(s, z.shape, 1)[0], alpha_bar), s) for s in seeds]
    # the counterfactual and the reconstruction step from the same start at the same timesteps: one UNet call
    recon = cfg.resolved_reference is Reference.RECONSTRUCTION
    branches = [to_target, to_source] if recon or keep is not None else [to_target]
    hold = None if keep is None else _hold(keep, engines.model.vae_scale_factor, ops)
    denoiser = make_batched_denoiser(unet, branches, timings, ops, cfg.unet_batch)
    cfs, refs = [], []
    for x_t, seed in starts:
        stacked = np.concatenate([x_t] * len(branches))
        x0 = _sample(denoiser, stacked, plan, cfg.eta, seed, progress, len(branches), hold, ops)
        cfs.append(decode_latents(engines, x0[:1], timings))
        if recon:
            refs.append(decode_latents(engines, x0[1:], timings))
    counterfactual = np.mean(cfs, axis=0).astype(np.float32)
    if recon:
        reference = np.mean(refs, axis=0).astype(np.float32)
    elif cfg.resolved_reference is Reference.AUTOENCODER:
        reference = decode_latents(engines, z, timings)
    else:
        reference = image01.astype(np.float32)
    outside = np.ones_like(counterfactual)
    if keep is not None:  # the reference's own pixels inside the kept region: M is 0 there
        region = (keep > 0.5).astype(np.float32)
        outside = (1.0 - np.maximum(region, feather(region, sigma=max(1.0, keep.shape[0] / 128)))).astype(np.float32)
        counterfactual = (outside * counterfactual + (1.0 - outside) * reference).astype(np.float32)
    uncertainty = None
    if len(cfs) > 1:
        maps = np.stack(refs) - np.stack(cfs) if recon else reference[None] - np.stack(cfs)
        uncertainty = (maps.std(axis=0) * outside).astype(np.float32)
    return Attribution(counterfactual, reference, timings, uncertainty)

"""Noise schedules and timestep plans, read from a diffusers ``scheduler_config.json``.

Notation (DDPM/DDIM papers): ``alpha_bar_t`` is the cumulative product of
``1 - beta`` up to training timestep ``t``; for DPM-Solver, ``sigma_t =
sqrt((1 - alpha_bar_t) / alpha_bar_t)`` and ``lambda_t = log(alpha_t / sigma_t)``.

A *plan* holds everything one sampling run needs (the timesteps still to run
after the img2img start, and the coefficients at each of them); plans are
plain frozen data, so samplers stay pure functions.  Timestep spacing,
``steps_offset`` and the img2img start step follow diffusers' DDIMScheduler,
DPMSolverMultistepScheduler and StableDiffusionImg2ImgPipeline so that the
same model gives the same trajectory here and there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import as_enum
from vald.errors import ConfigError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


class PredictionType(StrEnum):
    """What the UNet predicts (diffusers' ``prediction_type`` values)."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class Spacing(StrEnum):
    """How inference timesteps are spread (Table 2 of arXiv:2305.08891)."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


# Keys whose non-default values change the maths in ways we do not implement.
_UNSUPPORTED: dict[str, Any] = {
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
}


@dataclass(frozen=True, kw_only=True)
class NoiseSchedule:
    """The training noise schedule of a model (float64 copies of diffusers' float32 tables)."""

    alphas_cumprod: F64
    num_train_timesteps: int
    spacing: Spacing | None  # None: each sampler's diffusers default (DDIM leading, DPM linspace)
    steps_offset: int
    prediction_type: PredictionType
    set_alpha_to_one: bool
    clip_sample_range: float | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config; unsupported options raise ConfigError."""
        for key, default in _UNSUPPORTED.items():
            if config.get(key, default) != default:
                raise ConfigError(f"scheduler option {key}={config[key]!r} is not supported (expected {default!r})")
        if str(config.get("variance_type")).startswith("learned"):
            raise ConfigError(
                f"scheduler variance_type={config['variance_type']!r} (learned variance) is not supported"
            )
        defaulted = set(config.get("_use_default_values", ()))
        config = {k: v for k, v in config.items() if k not in defaulted}
        n = int(config.get("num_train_timesteps", 1000))
        betas = _betas(config, n)
        # accumulate in float64, round once to float32: bit-identical to torch.cumprod on float32
        alphas = (1.0 - betas).astype(np.float64)
        alphas_cumprod = np.cumprod(alphas).astype(np.float32).astype(np.float64)
        clip = bool(config.get("clip_sample", True))  # DDIMScheduler default
        return cls(
            alphas_cumprod=alphas_cumprod,
            num_train_timesteps=n,
            spacing=as_enum(Spacing, config["timestep_spacing"], "scheduler timestep_spacing")
            if "timestep_spacing" in config
            else None,
            steps_offset=int(config.get("steps_offset", 0)),
            prediction_type=as_enum(
                PredictionType, config.get("prediction_type", "epsilon"), "scheduler prediction_type"
            ),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)) if clip else None,
        )


def _betas(config: Mapping[str, Any], n: int) -> NDArray[np.float32]:
    trained = config.get("trained_betas")
    if trained is not None:
        return np.asarray(trained, dtype=np.float32)
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float32)
    if kind == "scaled_linear":
        return (np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2).astype(np.float32)
    if kind == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=np.float32)
    raise ConfigError(f"scheduler beta_schedule={kind!r} is not one of: linear, scaled_linear, squaredcos_cap_v2")


def check_steps(schedule: NoiseSchedule, steps: int, strength: float) -> None:
    """Validate the sampling length; raises ConfigError naming the field."""
    if steps < 1:
        raise ConfigError(f"steps={steps} must be at least 1")
    if steps > schedule.num_train_timesteps:
        raise ConfigError(f"steps={steps} exceeds the model's {schedule.num_train_timesteps} training timesteps")
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength={strength} must be in (0, 1]")


def start_index(steps: int, strength: float) -> int:
    """First index into the full timestep list that img2img runs (diffusers' ``get_timesteps``)."""
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)


def ddim_timesteps(schedule: NoiseSchedule, steps: int) -> I64:
    """The DDIM inference timesteps, descending (diffusers ``DDIMScheduler.set_timesteps``)."""
    n = schedule.num_train_timesteps
    spacing = schedule.spacing or Spacing.LEADING
    if spacing is Spacing.LINSPACE:
        return np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    if spacing is Spacing.LEADING:
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + schedule.steps_offset
    return np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1


def dpm_timesteps(schedule: NoiseSchedule, steps: int) -> I64:
    """The DPM-Solver inference timesteps, descending (``DPMSolverMultistepScheduler.set_timesteps``)."""
    last = schedule.num_train_timesteps
    spacing = schedule.spacing or Spacing.LINSPACE
    if spacing is Spacing.LINSPACE:
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing is Spacing.LEADING:
        ratio = last // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + schedule.steps_offset
    return np.arange(last, 0, -schedule.num_train_timesteps / steps).round().astype(np.int64) - 1


@dataclass(frozen=True, kw_only=True)
class DdimPlan:
    """Timesteps to run and ``alpha_bar`` at each and at its DDIM predecessor."""

    timesteps: I64
    alpha_bar: F64
    alpha_bar_prev: F64
    prediction_type: PredictionType
    clip_sample_range: float | None

    @property
    def start_alpha_bar(self) -> float:
        """``alpha_bar`` the img2img input is noised to."""
        return float(self.alpha_bar[0])


def plan_ddim(schedule: NoiseSchedule, steps: int, strength: float = 1.0) -> DdimPlan:
    """Plan a DDIM run of ``steps`` steps of which the last ``strength`` fraction is run."""
    check_steps(schedule, steps, strength)
    full = ddim_timesteps(schedule, steps)
    ts = full[start_index(steps, strength) :]
    acp = schedule.alphas_cumprod
    final = 1.0 if schedule.set_alpha_to_one else float(acp[0])
    prev = ts - schedule.num_train_timesteps // steps
    return DdimPlan(
        timesteps=ts,
        alpha_bar=acp[ts],
        alpha_bar_prev=np.array([acp[p] if p >= 0 else final for p in prev], dtype=np.float64),
        prediction_type=schedule.prediction_type,
        clip_sample_range=schedule.clip_sample_range,
    )


@dataclass(frozen=True, kw_only=True)
class DpmPlan:
    """Timesteps to run, ``sigmas`` (one more than timesteps, last 0) and the order of each step."""

    timesteps: I64
    sigmas: F64
    orders: tuple[int, ...]
    prediction_type: PredictionType

    @property
    def start_alpha_bar(self) -> float:
        """``alpha_bar`` the img2img input is noised to (from ``sigma`` as diffusers does)."""
        return float(1.0 / (self.sigmas[0] ** 2 + 1.0))


def plan_dpmpp_2m(schedule: NoiseSchedule, steps: int, strength: float = 1.0) -> DpmPlan:
    """Plan a DPM-Solver++(2M) run (midpoint, lower-order final, final sigma 0)."""
    check_steps(schedule, steps, strength)
    full = dpm_timesteps(schedule, steps)
    acp = schedule.alphas_cumprod.astype(np.float32)
    all_sigmas = ((1 - acp) / acp) ** 0.5
    sigmas = np.concatenate([all_sigmas[full], [0.0]]).astype(np.float32).astype(np.float64)
    begin = start_index(steps, strength)
    n_run = len(full) - begin
    orders = tuple(1 if i in (0, n_run - 1) else 2 for i in range(n_run))
    return DpmPlan(
        timesteps=full[begin:], sigmas=sigmas[begin:], orders=orders, prediction_type=schedule.prediction_type
    )

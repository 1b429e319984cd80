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

import hashlib
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


# Keys whose non-default values change the maths of any sampler in ways we do not implement: refused.
_UNSUPPORTED: dict[str, Any] = {
    "thresholding": False,
    "use_flow_sigmas": False,
}
# DPM-Solver options (diffusers' DPMSolverMultistepScheduler) and the only values vald's DPM-Solver++(2M)
# implements; a folder asking for others is refused when dpmpp-2m is chosen (its DDIM runs are not affected).
DPM_OPTIONS: dict[str, Any] = {
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
    "lambda_min_clipped": -math.inf,
}
# What diffusers' Stable Diffusion pipelines (text-to-image and img2img) force on the scheduler they load,
# whatever the folder says (``StableDiffusionImg2ImgPipeline.__init__``): vald runs a folder as they do.
PIPELINE_OVERRIDES: dict[str, Any] = {"steps_offset": 1, "clip_sample": False}
# Folder scheduler classes vald runs natively, and those it runs as DDIM (or as the sampler the user chooses)
# on the same training schedule: the standard substitution for img2img, printed at export and recorded.
NATIVE = {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmpp-2m"}
SUBSTITUTED = frozenset(
    {
        "PNDMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DDPMScheduler",
        "UniPCMultistepScheduler",
        "DPMSolverSinglestepScheduler",
    }
)
SAMPLER_CLASSES = {"ddim": "DDIMScheduler", "dpmpp-2m": "DPMSolverMultistepScheduler"}


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
    source_class: str = "DDIMScheduler"  # the folder's scheduler class (``_class_name``)
    beta_schedule: str = "linear"
    rescale_betas_zero_snr: bool = False
    dpm_refusal: str = ""  # why dpmpp-2m cannot run this folder's DPM-Solver settings ("" when it can)

    @classmethod
    def for_pipeline(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule diffusers' Stable Diffusion pipelines would run: :data:`PIPELINE_OVERRIDES` applied."""
        return cls.from_config({**config, **PIPELINE_OVERRIDES})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config, as ``DDIMScheduler.from_config`` reads it.

        Unsupported options and scheduler classes raise ConfigError naming the key and value.
        """
        for key, default in _UNSUPPORTED.items():
            if config.get(key, default) != default:
                raise ConfigError(f"scheduler option {key}={config[key]!r} is not supported (expected {default!r})")
        if str(config.get("variance_type")).startswith("learned"):
            raise ConfigError(
                f"scheduler variance_type={config['variance_type']!r} (learned variance) is not supported"
            )
        source_class = str(config.get("_class_name", "DDIMScheduler"))
        if source_class not in NATIVE and source_class not in SUBSTITUTED:
            raise ConfigError(
                f"scheduler class {source_class} is not supported (vald runs DDIM and DPM-Solver++ on discrete "
                f"beta schedules; it substitutes DDIM for {', '.join(sorted(SUBSTITUTED))})"
            )
        defaulted = set(config.get("_use_default_values", ()))
        config = {k: v for k, v in config.items() if k not in defaulted}
        n = config.get("num_train_timesteps", 1000)
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 100_000:
            raise ConfigError(f"scheduler num_train_timesteps={n!r} must be an integer in [2, 100000]")
        zero_snr = bool(config.get("rescale_betas_zero_snr", False))
        betas = _betas(config, n)
        if zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        # accumulate in float64, round once to float32: bit-identical to torch.cumprod on float32
        alphas = (1.0 - betas).astype(np.float64)
        alphas_cumprod = np.cumprod(alphas).astype(np.float32).astype(np.float64)
        clip = bool(config.get("clip_sample", True))  # DDIMScheduler default
        trained = config.get("trained_betas") is not None
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
            source_class=source_class,
            beta_schedule="trained" if trained else str(config.get("beta_schedule", "linear")),
            rescale_betas_zero_snr=zero_snr,
            dpm_refusal=_dpm_refusal(config) if source_class == "DPMSolverMultistepScheduler" else "",
        )

    def sampler_class(self, sampler: str) -> str:
        """The diffusers class whose arithmetic ``sampler`` ("ddim", "dpmpp-2m") reproduces."""
        return SAMPLER_CLASSES[sampler]

    def substitution(self, sampler: str) -> str:
        """One line saying which scheduler runs instead of the folder's own ("" when it is the same class)."""
        used = self.sampler_class(sampler)
        if used == self.source_class:
            return ""
        return (
            f"the folder's {self.source_class} is run as {used} on the same training schedule "
            f"({self.num_train_timesteps} timesteps, {self.beta_schedule} betas, {self.prediction_type.value})"
        )

    def describe(self, sampler: str) -> dict[str, Any]:
        """Everything about the schedule and sampler that decides the pixels (manifest, result.json)."""
        default = Spacing.LINSPACE if sampler == "dpmpp-2m" else Spacing.LEADING
        return {
            "folder_class": self.source_class,
            "used_class": self.sampler_class(sampler),
            "substituted": self.sampler_class(sampler) != self.source_class,
            "prediction_type": self.prediction_type.value,
            "timestep_spacing": (self.spacing or default).value,
            "steps_offset": self.steps_offset,
            "clip_sample": self.clip_sample_range is not None,
            "clip_sample_range": self.clip_sample_range,
            "set_alpha_to_one": self.set_alpha_to_one,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
            "alphas_cumprod_sha256": hashlib.sha256(self.alphas_cumprod.tobytes()).hexdigest(),
            "pipeline_overrides": dict(PIPELINE_OVERRIDES),
        }


def _dpm_refusal(config: Mapping[str, Any]) -> str:
    """For a DPM-Solver folder: the first option vald's DPM-Solver++(2M) does not implement, as a message."""
    for key, wanted in DPM_OPTIONS.items():
        value = config.get(key, wanted)
        if value != wanted and not (key == "lambda_min_clipped" and value in ("-Infinity", None)):
            return (
                f"the folder's DPM-Solver option {key}={value!r} is not implemented by scheduler=dpmpp-2m "
                f"(it runs {key}={wanted!r}); use scheduler=ddim (the default)"
            )
    return ""


def rescale_zero_terminal_snr(betas: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rescale betas to a zero terminal SNR (Lin et al. 2024, arXiv:2305.08891, Algorithm 1), in float32."""
    alphas_bar_sqrt = np.sqrt(np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def _beta(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"scheduler {key}={value!r} must be a number in (0, 1)")
    return float(value)


def _betas(config: Mapping[str, Any], n: int) -> NDArray[np.float32]:
    trained = config.get("trained_betas")
    if trained is not None:
        try:
            betas = np.asarray(trained, dtype=np.float32)
        except (TypeError, ValueError):
            raise ConfigError("scheduler trained_betas must be a list of numbers") from None
        if betas.shape != (n,) or not np.all((betas > 0) & (betas < 1)):
            raise ConfigError(f"scheduler trained_betas must be {n} numbers in (0, 1)")
        return betas
    start, end = (_beta(config, key, default) for key, default in (("beta_start", 0.0001), ("beta_end", 0.02)))
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
        return _below(n, (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + schedule.steps_offset)
    return _trailing(n, steps)


def _trailing(n: int, steps: int) -> I64:
    """``round(arange(n, 0, -n/steps)) - 1`` as diffusers writes it, but exactly ``steps`` long.

    A float ``arange`` step can yield one element too many (e.g. 224 for 223 steps), whose value rounds to
    timestep -1; ``n - k * n/steps`` for k < steps gives the same values without that extra one.
    """
    return np.round(n - np.arange(steps) * (n / steps)).astype(np.int64) - 1


def _below(n: int, timesteps: I64) -> I64:
    """Shift a leading-spacing list down so it stays below ``n``.

    With ``steps_offset`` 1 and as many steps as training timesteps, diffusers' list would start at ``n``,
    one past the last timestep (and its own scheduler fails there).  The list moves down by the excess;
    every step count that a model's schedule allows runs, and the lists that fit are unchanged.
    """
    excess = int(timesteps[0]) - (n - 1) if len(timesteps) else 0
    return timesteps - excess if excess > 0 else timesteps


def dpm_timesteps(schedule: NoiseSchedule, steps: int) -> I64:
    """The DPM-Solver inference timesteps, descending (``DPMSolverMultistepScheduler.set_timesteps``)."""
    last = schedule.num_train_timesteps
    spacing = schedule.spacing or Spacing.LINSPACE
    if spacing is Spacing.LINSPACE:
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing is Spacing.LEADING:
        ratio = last // (steps + 1)
        full = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + schedule.steps_offset
        return _below(last, full)
    return _trailing(last, steps)


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
    if schedule.dpm_refusal:
        raise ConfigError(schedule.dpm_refusal)
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

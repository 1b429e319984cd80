"""Run settings: frozen, keyword-only, validated once on creation, loadable from TOML."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from vald.errors import ConfigError

DEFAULT_PROMPT = "normal chest radiograph, no acute cardiopulmonary abnormality"


class SchedulerKind(StrEnum):
    """Samplers vald implements."""

    DDIM = "ddim"
    DPMPP_2M = "dpmpp-2m"


class Mode(StrEnum):
    """How the starting latent and the map are made (see :mod:`vald.attribution`)."""

    IMG2IMG = "img2img"
    INVERSION = "inversion"
    PAIRED = "paired"


class Reference(StrEnum):
    """What the counterfactual is subtracted from: the input, or the model's own reconstruction."""

    AUTO = "auto"
    INPUT = "input"
    RECONSTRUCTION = "reconstruction"  # the start latent denoised with the source conditioning
    AUTOENCODER = "autoencoder"  # the input through the VAE alone (cancels what the VAE loses)


class Backend(StrEnum):
    """Inference backends behind the session protocol."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"  # reads the exported ONNX graphs; bf16 on CPUs with AVX512-BF16 or AMX
    TORCH = "torch"
    TENSORRT = "tensorrt"  # native engines built by `vald build` (provider cuda)


class Provider(StrEnum):
    """Where a backend runs: ONNX Runtime execution providers, or the torch device."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class Loop(StrEnum):
    """Where the sampling loop's arithmetic runs: numpy on the host, or device arrays (CuPy, torch)."""

    HOST = "host"
    CUPY = "cupy"
    TORCH = "torch"


class Precision(StrEnum):
    """Compute precision of the networks (what the backend is told to use, and checks it uses)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


EXPORT_PRECISIONS = (Precision.FP32, Precision.FP16)  # graph sets `vald export` writes

# Precisions each backend runs.  ONNX Runtime: the FP32 or FP16 graph set; OpenVINO: the FP32 graphs
# with inference precision f32 or bf16, or int8: the UNet `vald quantize` wrote, its float remainder and the
# other networks at the CPU's best float precision (bf16 where it has it); torch: float32 modules, bf16
# under CPU autocast, fp16 on CUDA.
BACKEND_PRECISIONS = {
    Backend.ONNXRUNTIME: (Precision.FP32, Precision.FP16),
    Backend.OPENVINO: (Precision.FP32, Precision.BF16, Precision.INT8),
    Backend.TORCH: (Precision.FP32, Precision.BF16, Precision.FP16),
    Backend.TENSORRT: (Precision.FP16, Precision.FP32),
}


E = TypeVar("E", bound=StrEnum)


def as_enum(kind: type[E], value: object, field: str) -> E:
    """``kind(value)``, or ConfigError naming ``field`` and the allowed values."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"{field}={value!r} is not one of: {allowed}") from None


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that decides one counterfactual (with the engines and the input).

    ``strength`` in (0, 1] is the fraction of the schedule that is re-noised and
    denoised (img2img); ``guidance`` >= 1 is the classifier-free guidance scale
    (1 = conditional only); ``guidance_min_t`` limits guidance to the UNet timesteps ``t >= guidance_min_t``
    (below it the conditional prediction alone steers, as in Kynkäänniemi et al. 2024's guidance interval;
    0 = every step, as diffusers does); ``eta`` in [0, 1] is DDIM's stochasticity.
    ``mode`` picks img2img, DDIM inversion or paired-noise; ``finding_prompt`` is
    the finding's text (required by paired, optional inversion prompt);
    ``average`` is the number of seeds averaged (img2img and paired);
    ``reference`` AUTO means input for img2img and reconstruction otherwise.
    """

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = ""
    mode: Mode = Mode.INVERSION
    reference: Reference = Reference.AUTO
    finding_prompt: str = ""
    average: int = 1
    strength: float = 0.7  # best of the sweep in benchmarks/results (removal vs collateral change)
    steps: int = 50
    # guidance 9 at t >= 600 only: the interval sweep's choice on the shipped model (interval_sweep.json)
    guidance: float = 9.0
    guidance_min_t: int = 600
    eta: float = 0.0
    seed: int = 0
    scheduler: SchedulerKind = SchedulerKind.DDIM
    backend: Backend = Backend.ONNXRUNTIME
    provider: Provider = Provider.CPU
    precision: Precision = Precision.FP32
    threads: int = 0  # intra-op threads of the backend; 0 = one per CPU this process may use
    cuda_graph: bool = False  # capture the UNet in CUDA graphs (provider cuda; onnxruntime or tensorrt)
    loop: Loop = Loop.HOST  # the sampling loop on the host (float64 numpy) or on device arrays (float32)
    # most latents per UNet call: a step's rows (guided and unguided, counterfactual and reconstruction) are
    # split into calls of at most this many; 0 = all in one call.  1 bounds the UNet's activation memory (a
    # CPU at SD1.5 size: as fast within noise there); outputs differ from one call only at rounding level.
    unet_batch: int = 0
    preset: str = ""  # the named preset (PRESETS) whose settings were applied first; "" = none

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mode", as_enum(Mode, self.mode, "mode"))
        set_(self, "reference", as_enum(Reference, self.reference, "reference"))
        set_(self, "scheduler", as_enum(SchedulerKind, self.scheduler, "scheduler"))
        set_(self, "backend", as_enum(Backend, self.backend, "backend"))
        set_(self, "provider", as_enum(Provider, self.provider, "provider"))
        set_(self, "precision", as_enum(Precision, self.precision, "precision"))
        set_(self, "loop", as_enum(Loop, self.loop, "loop"))
        for name in ("prompt", "negative_prompt", "finding_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be text")
        _check_number(self, "strength", float, low=0.0, low_open=True, high=1.0)
        _check_number(self, "steps", int, low=1)
        _check_number(self, "guidance", float, low=1.0)
        _check_number(self, "guidance_min_t", int, low=0, high=100_000)
        _check_number(self, "eta", float, low=0.0, high=1.0)
        _check_number(self, "seed", int, low=0, high=2**63 - 1)
        _check_number(self, "average", int, low=1, high=64)
        _check_number(self, "threads", int, low=0)
        _check_number(self, "unet_batch", int, low=0, high=64)
        cpus = available_cpus()
        if self.threads > THREADS_PER_CPU * cpus:
            raise ConfigError(
                f"threads={self.threads} is more than {THREADS_PER_CPU} per CPU this process may use "
                f"({cpus} CPU(s): at most {THREADS_PER_CPU * cpus}; 0 = one per CPU)"
            )
        if self.precision not in BACKEND_PRECISIONS[self.backend]:
            allowed = ", ".join(p.value for p in BACKEND_PRECISIONS[self.backend])
            raise ConfigError(
                f"precision={self.precision.value} is not available on backend={self.backend.value}; it runs: {allowed}"
            )
        if not isinstance(self.cuda_graph, bool):
            raise ConfigError("cuda_graph must be true or false")
        if self.cuda_graph and (
            self.provider is not Provider.CUDA or self.backend not in (Backend.ONNXRUNTIME, Backend.TENSORRT)
        ):
            raise ConfigError("cuda_graph needs provider=cuda and backend onnxruntime or tensorrt")
        if self.loop is not Loop.HOST and self.backend is Backend.OPENVINO:
            raise ConfigError(f"loop={self.loop.value} needs a backend that runs on device arrays, not openvino")
        if self.loop is Loop.CUPY and self.provider is not Provider.CUDA:
            raise ConfigError("loop=cupy holds the latents on the GPU: it needs provider=cuda")
        if self.backend is Backend.TENSORRT and self.provider is not Provider.CUDA:
            raise ConfigError(f"backend=tensorrt runs on provider=cuda, not {self.provider.value}: add --provider cuda")
        if self.preset not in ("", *PRESETS):
            raise ConfigError(f"preset={self.preset!r} is not one of: {', '.join(PRESETS)}")
        self._check_mode()

    def with_preset(self, name: str) -> RunConfig:
        """A copy with preset ``name``'s settings applied (settings given later override them)."""
        if name not in PRESETS:
            raise ConfigError(f"preset={name!r} is not one of: {', '.join(PRESETS)}")
        return self.replace(preset=name, **PRESETS[name])

    def check_guidance_interval(self, timesteps: Sequence[int], train_timesteps: int) -> None:
        """ConfigError if guidance is asked for (> 1) but no step of the run (``timesteps``) lies in its interval."""
        if self.guidance_min_t >= train_timesteps:
            raise ConfigError(
                f"guidance_min_t={self.guidance_min_t} is not below the model's {train_timesteps} training "
                "timesteps: guidance would never apply"
            )
        first_timestep = int(max(timesteps, default=self.guidance_min_t))  # a run of no steps guides nothing
        if self.guidance > 1.0 and first_timestep < self.guidance_min_t:
            raise ConfigError(
                f"strength={self.strength} of steps={self.steps} starts at timestep {first_timestep}, below "
                f"guidance_min_t={self.guidance_min_t}: guidance would never apply; lower --guidance-min-t "
                "(0 guides every step)"
            )

    def _check_mode(self) -> None:
        if self.mode is Mode.PAIRED and not self.finding_prompt.strip():
            raise ConfigError("mode=paired needs finding_prompt (the finding's text, e.g. from the report)")
        if self.mode is Mode.INVERSION:
            if self.scheduler is not SchedulerKind.DDIM or self.eta != 0.0:
                raise ConfigError("mode=inversion needs scheduler=ddim and eta=0 (the deterministic DDIM ODE)")
            if self.average != 1:
                raise ConfigError("average > 1 needs a stochastic mode (img2img or paired); inversion is deterministic")
        if self.mode is Mode.PAIRED and self.reference in (Reference.INPUT, Reference.AUTOENCODER):
            raise ConfigError(f"mode=paired compares two decodes; reference={self.reference.value} does not apply")

    @property
    def resolved_threads(self) -> int:
        """Intra-op threads actually requested from the backend (``threads``, or the CPUs available)."""
        return self.threads or available_cpus()

    @property
    def resolved_reference(self) -> Reference:
        """The reference actually used (AUTO resolved by mode)."""
        if self.reference is not Reference.AUTO:
            return self.reference
        return Reference.INPUT if self.mode is Mode.IMG2IMG else Reference.RECONSTRUCTION

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (``None`` values ignored), validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build from a flat mapping over ``base``'s values (the defaults if None); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        rest = {k: v for k, v in data.items() if k != "preset"}
        start = base if base is not None else cls()
        if data.get("preset"):  # the preset first, the file's other settings over it
            start = start.with_preset(str(data["preset"]))
        return start.replace(**rest)

    @classmethod
    def from_toml(cls, path: Path, base: RunConfig | None = None) -> RunConfig:
        """Load a TOML file of top-level keys (the same names as the CLI options) over ``base``."""
        return cls.from_mapping(read_toml(path), base)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's content; ConfigError naming the cause (unreadable, not UTF-8, not valid TOML)."""
    # The file's name is not repeated: a name can carry patient text (input names never appear either).
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("the config file is not UTF-8 text (a TOML file is expected)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("the config file is nested too deeply to be a vald config") from None


THREADS_PER_CPU = 4  # ``threads`` may be at most this many per CPU this process may use (more only thrashes)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_number(
    cfg: RunConfig,
    name: str,
    kind: type,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} must be {'an integer' if kind is int else 'a number'}")
    if kind is float:
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} must be a finite number")
        object.__setattr__(cfg, name, float(value))
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        raise ConfigError(f"{name}={value!r} is out of range; expected {lo}{low}, {high if high is not None else '∞'}]")


SEG_TYPES = ("binary", "fractional")  # of the derived Segmentation (see vald.dicom.writer)


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write besides the PNG/NPY/JSON set."""

    dicom: bool = True  # derived DICOM objects when the input is DICOM (overlay and counterfactual SCs)
    segmentation: bool = True  # also the Segmentation of the map's region
    seg_type: str = "binary"  # "binary" (|M| >= half the colour limit; OHIF shows it) or "fractional"
    report: bool = True  # with the Segmentation, a TID 1500 Structured Report that refers to it
    parametric_map: bool = True  # also the Parametric Map of the signed map M

    def __post_init__(self) -> None:
        check_seg_type(self.seg_type)


def check_seg_type(value: object) -> str:
    """``value`` if it names a Segmentation type (:data:`SEG_TYPES`), else ConfigError."""
    if value not in SEG_TYPES:
        raise ConfigError(f"seg_type={value!r} must be 'binary' or 'fractional'")
    return str(value)


DEFAULT_OUTPUTS = OutputOptions()

# Presets: settings over the defaults, chosen by measurement (vald.presets: the rule; the sweep:
# benchmarks/preset_sweep.py, benchmarks/results/preset_sweep.json).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"steps": 10, "guidance_min_t": 500},  # 23 UNet evaluations per counterfactual instead of 110
}

# Induction: the masked region re-synthesised from full noise toward the finding and away from a normal
# description.  Chosen on 24 held-out phantoms separate from the benchmark's (the finding induced on its own
# normal twin): at strength 1.0, guidance 9 came closest to the true contrasts of consolidation, nodule and
# effusion together (guidance 7 adds too little to consolidations, 12 too much); strength 0.9 or less leaves
# the region's old texture and adds little.
INDUCE_DEFAULTS = RunConfig(
    mode=Mode.IMG2IMG, strength=1.0, guidance=9.0, guidance_min_t=0, negative_prompt=DEFAULT_PROMPT
)

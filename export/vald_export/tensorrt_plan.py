"""What a TensorRT build must cover, decided without TensorRT: input shapes per component, and FP16 or not.

**Shapes.**  The UNet's batch depends on the mode (guidance doubles a branch; inversion batches the
counterfactual with the reconstruction; ``average`` adds seeds), and the VAE's and text encoder's on the
same.  Rather than restate those rules, :func:`record_shapes` runs the real loop once with shape-only
sessions that return zeros and records every input shape each network is fed.  A **static** profile is one
TensorRT optimisation profile per recorded shape (min = opt = max: the fastest kernels, and the UNet can be
captured in a CUDA graph); a **dynamic** profile is one range per component from the smallest to the
largest recorded shape, opt at the largest.

**FP16.**  :func:`fp16_decision` compares a component's FP16 output with its FP32 output on the same fixed
inputs: NaN/Inf, or a relative error above the component's tolerance, keeps that component in FP32 (the VAE
encoder and attention softmax are the known offenders).  The decision and its reason go in the manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vald.attribution import attribute
from vald.config import RunConfig
from vald.manifest import ModelInfo
from vald.pipeline import Engines
from vald.schedules import NoiseSchedule
from vald.sessions import BoundSession, SessionInfo
from vald.spec import Component, ComponentSpec, specs
from vald.tokenizer import PromptTokenizer

Shape = tuple[int, ...]

# Largest FP16-vs-FP32 error accepted per component, relative to the FP32 output's scale (max |x|).
FP16_TOLERANCE: Mapping[Component, float] = {
    Component.TEXT_ENCODER: 2e-2,
    Component.VAE_ENCODER: 2e-2,
    Component.UNET: 2e-2,
    Component.VAE_DECODER: 2e-2,
}


class ProfileKind(StrEnum):
    """How the engines' optimisation profiles are laid out."""

    STATIC = "static"
    DYNAMIC = "dynamic"


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile: (min, opt, max) shape per input binding."""

    shapes: Mapping[str, tuple[Shape, Shape, Shape]]

    def to_json(self) -> dict[str, list[list[int]]]:
        """Manifest form."""
        return {name: [list(s) for s in triple] for name, triple in self.shapes.items()}


@dataclass
class _ShapeOnly(BoundSession):
    """A session that records its input shapes and returns zeros of the output shapes its spec implies."""

    spec: ComponentSpec
    model: ModelInfo
    seen: list[dict[str, Shape]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._spec = self.spec
        self._info = SessionInfo("shape-only", "none", "none", 0)

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        shapes = {name: tuple(int(d) for d in array.shape) for name, array in feeds.items()}
        self.seen.append(shapes)
        dims: dict[str, int] = {}
        for tensor in self.spec.inputs:
            for symbol, size in zip(tensor.shape, shapes[tensor.name], strict=True):
                if isinstance(symbol, str):
                    dims[symbol] = size
        if "H" in dims:
            dims.setdefault("h", dims["H"] // self.model.vae_scale_factor)
            dims.setdefault("w", dims["W"] // self.model.vae_scale_factor)
        if "h" in dims:
            dims.setdefault("H", dims["h"] * self.model.vae_scale_factor)
            dims.setdefault("W", dims["w"] * self.model.vae_scale_factor)
        return {
            t.name: np.zeros(tuple(dims[d] if isinstance(d, str) else d for d in t.shape), dtype=np.float32)
            for t in self.spec.outputs
        }


def record_shapes(
    model: ModelInfo, tokenizer: PromptTokenizer, schedule: NoiseSchedule, cfg: RunConfig, size: int
) -> dict[Component, list[dict[str, Shape]]]:
    """Every distinct input-shape set each network is fed by one run of ``cfg`` at ``size`` pixels."""
    at_size = dataclasses.replace(model, image_size=size)
    component_specs = specs(
        image_channels=model.image_channels,
        latent_channels=model.latent_channels,
        hidden_size=model.hidden_size,
        attention_mask=model.attention_mask,
    )
    sessions = {c: _ShapeOnly(spec, at_size) for c, spec in component_specs.items()}
    engines = Engines(sessions=sessions, tokenizer=tokenizer, model=at_size, schedule=schedule)
    image = np.full((size, size), 0.5, dtype=np.float32)
    attribute(engines, image, cfg)
    found: dict[Component, list[dict[str, Shape]]] = {}
    for component, session in sessions.items():
        distinct: list[dict[str, Shape]] = []
        for shapes in session.seen:
            if shapes not in distinct:
                distinct.append(shapes)
        found[component] = sorted(distinct, key=lambda s: sorted(s.items()))
    return found


def profiles(recorded: list[dict[str, Shape]], kind: ProfileKind) -> list[Profile]:
    """The optimisation profiles that cover ``recorded`` (one component's input-shape sets)."""
    if kind is ProfileKind.STATIC:
        return [Profile({name: (shape, shape, shape) for name, shape in shapes.items()}) for shapes in recorded]
    names = recorded[0].keys()
    low = {n: tuple(min(s[n][i] for s in recorded) for i in range(len(recorded[0][n]))) for n in names}
    high = {n: tuple(max(s[n][i] for s in recorded) for i in range(len(recorded[0][n]))) for n in names}
    return [Profile({n: (low[n], high[n], high[n]) for n in names})]


@dataclass(frozen=True)
class Fp16Decision:
    """Whether a component is built in FP16, with the measured error and the reason."""

    component: Component
    precision: str  # "fp16" or "fp32"
    error: float  # max |fp16 - fp32| / max |fp32|, NaN when FP16 produced non-finite values
    reason: str


def fp16_decision(
    component: Component, fp16: NDArray[np.floating], fp32: NDArray[np.floating], tolerance: float | None = None
) -> Fp16Decision:
    """FP16 unless its output on the fixed inputs has NaN/Inf or is further than the tolerance from FP32."""
    limit = FP16_TOLERANCE[component] if tolerance is None else tolerance
    if not np.all(np.isfinite(fp16)):
        bad = int(np.size(fp16) - np.count_nonzero(np.isfinite(fp16)))
        return Fp16Decision(component, "fp32", float("nan"), f"FP16 output has {bad} NaN/Inf value(s); built in FP32")
    scale = max(float(np.max(np.abs(fp32))), 1e-6)
    error = float(np.max(np.abs(fp16.astype(np.float64) - fp32.astype(np.float64)))) / scale
    if error > limit:
        return Fp16Decision(
            component, "fp32", error, f"FP16 error {error:.2e} of the output's scale exceeds {limit:.0e}; built in FP32"
        )
    return Fp16Decision(component, "fp16", error, f"FP16 error {error:.2e} of the output's scale, within {limit:.0e}")

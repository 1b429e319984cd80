"""Synthetic frontal chest radiographs with exact ground truth.

:func:`make_phantom` renders one chest twice from the same seed: with a finding
and without it (the *twin*), with identical anatomy, exposure and noise, so
``abnormal - twin`` is the true attribution map and ``mask`` the lesion.
Everything is a deterministic function of ``(seed, size)``.

Images are float32 in [0, 1], bright = dense (MONOCHROME2 convention), PA view:
the patient's right is on the image left.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vald_train.anatomy import (
    LEFT,
    RIGHT,
    Anatomy,
    Grid,
    Lung,
    body,
    clavicles,
    draw_anatomy,
    mediastinum,
    ribs,
    smooth_noise,
    spine,
    vessels,
)
from vald_train.reports import report_for

F32 = NDArray[np.float32]


class Finding(StrEnum):
    """Finding types the phantoms carry."""

    NORMAL = "normal"
    CONSOLIDATION = "consolidation"
    NODULE = "nodule"
    EFFUSION = "effusion"
    CARDIOMEGALY = "cardiomegaly"


ABNORMAL = (Finding.CONSOLIDATION, Finding.NODULE, Finding.EFFUSION, Finding.CARDIOMEGALY)
SIDE_NAMES = {RIGHT: "right", LEFT: "left"}


@dataclass(frozen=True)
class FindingSpec:
    """Which finding, where, how large (``side``/``zone`` are None where they do not apply)."""

    kind: Finding
    side: str | None = None
    zone: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Phantom:
    """One rendered case: the abnormal image, its normal twin, the lesion mask and the report."""

    seed: int
    finding: FindingSpec
    abnormal: F32
    twin: F32
    mask: NDArray[np.bool_]
    report: str

    @property
    def difference(self) -> F32:
        """The true signed attribution map ``abnormal - twin``."""
        out: F32 = (self.abnormal - self.twin).astype(np.float32)
        return out


@dataclass(frozen=True)
class Exposure:
    """Acquisition variation shared by the abnormal image and its twin."""

    gain: float
    gamma: float
    noise_sigma: float


def _lung_point(rng: np.random.Generator, g: Grid, lung: Lung, zone: str, margin: float) -> tuple[float, float]:
    """A point well inside ``lung`` within ``zone``."""
    mask = lung.mask(g)
    top, bottom = lung.zone_y(zone)
    for _ in range(200):
        x = lung.side * rng.uniform(lung.medial_x + margin, lung.lateral_x - margin)
        y = rng.uniform(top + 0.3 * margin, bottom - 0.3 * margin)
        i = int(np.clip((y + 1) / 2 * mask.shape[0], 0, mask.shape[0] - 1))
        j = int(np.clip((x + 1) / 2 * mask.shape[1], 0, mask.shape[1] - 1))
        if mask[i, j] > 0.95:
            return x, y
    return lung.side * 0.45, 0.5 * (top + bottom)


def _consolidation(rng: np.random.Generator, g: Grid, lung: Lung, zone: str, large: bool, size: int) -> F32:
    """Ill-defined airspace opacity: a lumpy blob confined to the lung."""
    sigma = rng.uniform(0.12, 0.17) if large else rng.uniform(0.07, 0.1)
    cx, cy = _lung_point(rng, g, lung, zone, 0.6 * sigma)
    d2 = ((g.x - cx) / rng.uniform(0.8, 1.25)) ** 2 + (g.y - cy) ** 2
    blob = np.exp(-d2 / (2 * sigma**2)) * (1.0 + 0.35 * smooth_noise(rng, size, size / 25.0))
    opacity = np.clip((blob - 0.25) / 0.45, 0.0, 1.0)
    return (rng.uniform(0.3, 0.45) * opacity * lung.mask(g)).astype(np.float32)


def _nodule(rng: np.random.Generator, g: Grid, lung: Lung, zone: str, large: bool) -> F32:
    """Well-defined round nodule (projected sphere)."""
    radius = rng.uniform(0.07, 0.095) if large else rng.uniform(0.045, 0.06)
    cx, cy = _lung_point(rng, g, lung, zone, radius + 0.04)
    r = np.sqrt((g.x - cx) ** 2 + (g.y - cy) ** 2) / radius
    sphere = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)) * g.step(((1.0 - r) * radius).astype(np.float32))
    return (rng.uniform(0.4, 0.55) * sphere).astype(np.float32)


def _effusion(rng: np.random.Generator, g: Grid, lung: Lung, large: bool) -> F32:
    """Basal fluid with a meniscus rising laterally, blunting the costophrenic angle."""
    depth = rng.uniform(0.3, 0.45) if large else rng.uniform(0.14, 0.22)
    level = lung.sulcus_y - depth
    lateral = np.clip((g.x * lung.side - lung.medial_x) / (lung.lateral_x - lung.medial_x), 0.0, 1.0)
    top = level - 0.2 * lateral**2
    opacity = np.clip((g.y - top) / 0.07, 0.0, 1.0)
    return (rng.uniform(0.55, 0.7) * opacity * lung.mask(g)).astype(np.float32)


def _tone(density: F32, exposure: Exposure, noise: F32) -> F32:
    """Density -> displayed brightness in [0, 1] (film-like curve, gain, gamma, additive noise)."""
    bright = (1.0 - np.exp(-exposure.gain * np.clip(density, 0.0, None))) / (1.0 - np.exp(-exposure.gain * 1.25))
    bright = np.clip(bright, 0.0, 1.0) ** exposure.gamma
    return np.clip(bright + exposure.noise_sigma * noise, 0.0, 1.0).astype(np.float32)


def _density(g: Grid, a: Anatomy, size: int, heart_mask: F32, extra: F32) -> F32:
    """Projected density of the chest plus the finding's ``extra`` (already confined to where it lies)."""
    lungs = a.lungs[0].mask(g) + a.lungs[1].mask(g)
    air = 0.5 * lungs * (1.0 - 0.85 * heart_mask)
    dense = (
        0.72 * body(g, a)
        + 0.16 * heart_mask
        + 0.12 * mediastinum(g, a)
        + 0.25 * spine(g, a)
        + 0.13 * ribs(g, a)
        + 0.25 * clavicles(g, a)
        + 0.05 * vessels(g, a, size) * lungs
    )
    return (dense - air + np.minimum(extra, air + 0.3)).astype(np.float32)


def draw_finding(rng: np.random.Generator, kind: Finding | None = None) -> FindingSpec:
    """A finding type (uniform over normal and the four findings unless given), side, zone and size."""
    if kind is None:
        kind = Finding(rng.choice([f.value for f in Finding]))
    side = SIDE_NAMES[int(rng.choice([RIGHT, LEFT]))]
    zone = str(rng.choice(["upper", "middle", "lower"]))
    size = str(rng.choice(["small", "large"]))
    match kind:
        case Finding.NORMAL:
            return FindingSpec(kind)
        case Finding.CARDIOMEGALY:
            return FindingSpec(kind, size=size)
        case Finding.EFFUSION:
            return FindingSpec(kind, side=side, size=size)
        case _:
            return FindingSpec(kind, side=side, zone=zone, size=size)


def _finding_density(
    spec: FindingSpec, rng: np.random.Generator, g: Grid, anatomy: Anatomy, size: int
) -> tuple[F32, F32]:
    """The finding's extra density and the (possibly enlarged) heart mask."""
    heart = anatomy.heart.mask(g)
    lung = anatomy.lungs[0 if spec.side == "right" else 1]
    large = spec.size == "large"
    match spec.kind:
        case Finding.CONSOLIDATION:
            return _consolidation(rng, g, lung, str(spec.zone), large, size), heart
        case Finding.NODULE:
            return _nodule(rng, g, lung, str(spec.zone), large), heart
        case Finding.EFFUSION:
            return _effusion(rng, g, lung, large), heart
        case Finding.CARDIOMEGALY:
            factor = rng.uniform(1.35, 1.5) if large else rng.uniform(1.2, 1.3)
            return np.zeros_like(g.x), anatomy.heart.enlarged(factor).mask(g)
    return np.zeros_like(g.x), heart


def make_phantom(seed: int, size: int = 128, kind: Finding | None = None) -> Phantom:
    """Render case ``seed`` at ``size``² (finding drawn from the seed unless ``kind`` is given).

    An abnormal case always has a lesion: a draw that leaves the mask empty (a faint blob) is redrawn.
    """
    rng = np.random.default_rng([seed, 20251125])
    anatomy = draw_anatomy(rng)
    spec = draw_finding(rng, kind)
    g0 = Grid.square(size)
    g = Grid(x=g0.x - anatomy.shift, y=g0.y, edge=g0.edge)
    exposure = Exposure(gain=rng.uniform(1.6, 2.4), gamma=rng.uniform(0.85, 1.2), noise_sigma=rng.uniform(0.006, 0.016))
    noise = rng.standard_normal((size, size)).astype(np.float32)
    heart = anatomy.heart.mask(g)
    for attempt in range(20):
        stream = [seed, 1] if attempt == 0 else [seed, 1, attempt]
        extra, abnormal_heart = _finding_density(spec, np.random.default_rng(stream), g, anatomy, size)
        # Cardiomegaly: wherever the silhouette changed (its soft edge included); otherwise the lesion itself.
        mask = np.abs(abnormal_heart - heart) > 0.1 if spec.kind is Finding.CARDIOMEGALY else extra > 0.05
        if spec.kind is Finding.NORMAL or mask.sum() >= 4:
            break
    twin = _tone(_density(g, anatomy, size, heart, np.zeros_like(g.x)), exposure, noise)
    abnormal = _tone(_density(g, anatomy, size, abnormal_heart, extra), exposure, noise)
    report = report_for(spec, np.random.default_rng([seed, 2]))
    return Phantom(seed=seed, finding=spec, abnormal=abnormal, twin=twin, mask=mask, report=report)

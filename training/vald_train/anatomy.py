"""Normal chest anatomy for the phantoms: parameters drawn from a seed, rendered as projected density.

Coordinates: ``x`` runs from -1 (image left = patient's right, PA view) to +1,
``y`` from -1 (top) to +1 (bottom).  Densities are unitless line integrals;
:mod:`vald_train.phantoms` turns them into a radiograph.  Every shape has a soft
edge about one pixel wide so the images are band-limited at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
FLOAT = NDArray[np.floating[Any]]
RIGHT, LEFT = -1, +1  # patient's side -> sign of x in the image


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of an ``size × size`` image and the soft-edge width."""

    x: F32
    y: F32
    edge: float

    @classmethod
    def square(cls, size: int) -> Grid:
        """Grid for a square image of ``size`` pixels."""
        c = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
        y, x = np.meshgrid(c, c, indexing="ij")
        return cls(x=x.astype(np.float32), y=y.astype(np.float32), edge=2.0 / size)

    def step(self, signed: FLOAT) -> F32:
        """Soft indicator of ``signed > 0`` (signed distance in grid units)."""
        out: F32 = (0.5 + 0.5 * np.tanh(signed / self.edge)).astype(np.float32)
        return out


@dataclass(frozen=True)
class Lung:
    """One lung field: apex, lateral wall, medial border, hemidiaphragm dome."""

    side: int
    apex_y: float
    lateral_x: float  # |x| of the lateral wall at its widest
    medial_x: float  # |x| of the mediastinal border
    dome_y: float  # top of the hemidiaphragm
    sulcus_y: float  # depth of the costophrenic angle

    def mask(self, g: Grid) -> F32:
        """Soft mask of the lung field."""
        ax = g.x * self.side  # mirrored so "lateral" is +ax on both sides
        mid = 0.5 * (self.lateral_x + self.medial_x)
        half = 0.5 * (self.lateral_x - self.medial_x)
        top = self.apex_y + 1.6 * ((ax - mid) / half) ** 2 * 0.18
        t = np.clip((g.y - self.apex_y) / (self.sulcus_y - self.apex_y), 0.0, 1.0)
        lateral = self.lateral_x * (0.62 + 0.38 * np.sqrt(t))
        u = np.clip((ax - self.medial_x) / (self.lateral_x - self.medial_x), 0.0, 1.0)
        bottom = self.dome_y + (self.sulcus_y - self.dome_y) * u**2.2
        inside = g.step(g.y - top) * g.step(lateral - ax) * g.step(ax - self.medial_x) * g.step(bottom - g.y)
        return inside.astype(np.float32)

    def zone_y(self, zone: str) -> tuple[float, float]:
        """Vertical extent of the upper/middle/lower zone (thirds from apex to sulcus)."""
        third = (self.sulcus_y - self.apex_y) / 3.0
        index = {"upper": 0, "middle": 1, "lower": 2}[zone]
        return self.apex_y + index * third, self.apex_y + (index + 1) * third


@dataclass(frozen=True)
class Heart:
    """Heart silhouette: an ellipse left of the midline (image right), tilted."""

    cx: float
    cy: float
    rx: float
    ry: float
    tilt: float

    def mask(self, g: Grid) -> F32:
        """Soft mask of the silhouette."""
        c, s = np.cos(self.tilt), np.sin(self.tilt)
        dx, dy = g.x - self.cx, g.y - self.cy
        u, v = (c * dx + s * dy) / self.rx, (-s * dx + c * dy) / self.ry
        r = np.sqrt(u * u + v * v)
        return g.step((1.0 - r) * min(self.rx, self.ry))

    def enlarged(self, factor: float) -> Heart:
        """Cardiomegaly: wider (mostly to the patient's left) and a little taller."""
        grow = self.rx * (factor - 1.0)
        return Heart(
            self.cx + 0.55 * grow, self.cy + 0.2 * grow, self.rx * factor, self.ry * (1 + 0.4 * (factor - 1)), self.tilt
        )


@dataclass(frozen=True)
class Anatomy:
    """All shape parameters of one normal chest, drawn from a seed by :func:`draw_anatomy`."""

    body_half_width: float
    lungs: tuple[Lung, Lung]
    heart: Heart
    rib_start: float
    rib_gap: float
    rib_curve: float
    rib_width: float
    spine_width: float
    clavicle_y: float
    shift: float  # patient position: horizontal offset of everything
    texture_seed: int


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible normal chest with natural variation in size, shape and position."""
    u = rng.uniform
    lungs = tuple(
        Lung(
            side=side,
            apex_y=u(-0.82, -0.7),
            lateral_x=u(0.72, 0.84),
            medial_x=u(0.1, 0.15),
            dome_y=u(0.3, 0.45) + (0.05 if side == LEFT else 0.0),
            sulcus_y=u(0.55, 0.66),
        )
        for side in (RIGHT, LEFT)
    )
    heart = Heart(cx=u(0.05, 0.12), cy=u(0.28, 0.36), rx=u(0.26, 0.31), ry=u(0.2, 0.24), tilt=u(-0.35, -0.15))
    return Anatomy(
        body_half_width=u(0.88, 0.98),
        lungs=(lungs[0], lungs[1]),
        heart=heart,
        rib_start=u(-0.78, -0.7),
        rib_gap=u(0.125, 0.145),
        rib_curve=u(0.55, 0.75),
        rib_width=u(0.028, 0.038),
        spine_width=u(0.07, 0.09),
        clavicle_y=u(-0.8, -0.7),
        shift=u(-0.04, 0.04),
        texture_seed=int(rng.integers(0, 2**31)),
    )


def _band(g: Grid, centre: F32, half_width: float) -> F32:
    """Soft band of ``half_width`` around the curve ``y = centre(x)``."""
    return g.step(half_width - np.abs(g.y - centre))


def ribs(g: Grid, a: Anatomy) -> F32:
    """Posterior ribs (bright cortex, curving down laterally) and faint anterior ribs."""
    out = np.zeros_like(g.x)
    for side in (RIGHT, LEFT):
        ax = g.x * side
        lateral = g.step(ax - 0.06) * g.step(0.95 - ax)
        for i in range(9):
            y0 = a.rib_start + i * a.rib_gap
            centre = y0 + a.rib_curve * (ax - 0.15) ** 2 + 0.04 * ax
            width = a.rib_width * (1 + 0.04 * i)
            bone = _band(g, centre, width)
            cortex = _band(g, centre, width) - _band(g, centre, 0.55 * width)
            out += lateral * (0.55 * bone + 0.5 * cortex)
            front = y0 + 0.32 - 0.35 * (ax - 0.7) ** 2
            out += g.step(ax - 0.15) * g.step(0.8 - ax) * 0.18 * _band(g, front.astype(np.float32), 0.7 * width)
    return out.astype(np.float32)


def clavicles(g: Grid, a: Anatomy) -> F32:
    """Two clavicles running from the sternal notch up and out to the shoulders."""
    out = np.zeros_like(g.x)
    for side in (RIGHT, LEFT):
        ax = g.x * side
        centre = a.clavicle_y + 0.06 - 0.16 * ax + 0.18 * (ax - 0.4) ** 2
        out += g.step(ax - 0.08) * g.step(0.75 - ax) * _band(g, centre.astype(np.float32), 0.035)
    return out.astype(np.float32)


def spine(g: Grid, a: Anatomy) -> F32:
    """Vertebral column with vertebral bodies and pedicles, through the mediastinum."""
    column = g.step(a.spine_width - np.abs(g.x))
    bodies = 0.75 + 0.25 * np.cos(np.pi * (g.y + 1.0) / 0.09) ** 2
    pedicles = g.step(0.018 - np.sqrt((np.abs(g.x) - 0.7 * a.spine_width) ** 2 + ((g.y % 0.18) - 0.09) ** 2))
    return (column * bodies + 0.4 * pedicles).astype(np.float32)


def body(g: Grid, a: Anatomy) -> F32:
    """Soft-tissue thickness: a cylinder narrowing to the neck, with the abdomen below the lungs."""
    neck = np.clip((-g.y - 0.75) / 0.25, 0.0, 1.0)
    half = a.body_half_width * (1.0 - 0.55 * neck**1.5)
    thick = np.sqrt(np.clip(1.0 - (g.x / half) ** 2, 0.0, 1.0))
    return (thick * g.step(half - np.abs(g.x))).astype(np.float32)


def mediastinum(g: Grid, a: Anatomy) -> F32:
    """Upper mediastinum and aortic knob above the heart."""
    upper = g.step(0.13 - np.abs(g.x - 0.01)) * g.step(0.3 - g.y)
    knob = g.step(0.09 - np.sqrt((g.x - 0.13) ** 2 + (g.y + 0.28) ** 2))
    return (upper + 0.8 * knob * (1 - upper)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, scale_px: float) -> F32:
    """Zero-mean, unit-variance Gaussian-filtered white noise with correlation length ``scale_px``."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    freq = np.fft.fftfreq(size).astype(np.float32)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    kernel = np.exp(-2.0 * (np.pi * scale_px) ** 2 * (fx * fx + fy * fy))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel)).astype(np.float32)
    return (field / (field.std() + 1e-8)).astype(np.float32)


def vessels(g: Grid, a: Anatomy, size: int) -> F32:
    """Lung markings: branching-looking structure radiating from the hila, fading to the periphery."""
    rng = np.random.default_rng(a.texture_seed)
    streaks = np.abs(smooth_noise(rng, size, size / 90.0))
    lines = np.exp(-4.0 * streaks)  # thin bright ridges where the field crosses zero
    out = np.zeros_like(g.x)
    for side in (RIGHT, LEFT):
        hilum_x, hilum_y = 0.22 * side, -0.05
        r = np.sqrt((g.x - hilum_x) ** 2 + (g.y - hilum_y) ** 2)
        out += np.exp(-r / 0.3) * lines + 0.8 * np.exp(-(r**2) / 0.012)
    return out.astype(np.float32)

"""Score attribution methods on held-out phantoms, per finding type and overall.

A *method* maps a model-resolution image to ``(counterfactual, signed_map)``.
The runtime's modes are wrapped by :func:`runtime_method`; the baselines (VAE
reconstruction alone, input minus its blurred self) show what the diffusion
model adds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from vald.attribution import attribute
from vald.config import RunConfig
from vald.eval.metrics import attribution_scores, normal_scores
from vald.pipeline import Engines, Timings, decode_latents, encode_image
from vald_train.data import held_out_seeds
from vald_train.phantoms import ABNORMAL, Finding, Phantom, make_phantom

F32 = NDArray[np.float32]
Method = Callable[[F32], tuple[F32, F32]]


def runtime_method(engines: Engines, cfg: RunConfig) -> Method:
    """One of the runtime's modes as a method."""

    def method(image: F32) -> tuple[F32, F32]:
        result = attribute(engines, image, cfg)
        return result.counterfactual, result.signed_map

    return method


def vae_baseline(engines: Engines) -> Method:
    """Baseline: the VAE's reconstruction as the 'counterfactual' (img2img at strength 0)."""

    def method(image: F32) -> tuple[F32, F32]:
        timings = Timings()
        recon = decode_latents(engines, encode_image(engines, image, timings), timings)
        return recon, (image - recon).astype(np.float32)

    return method


def blur_baseline(sigma_px: float = 3.0) -> Method:
    """Baseline: input minus its Gaussian-blurred self (a high-pass filter)."""

    def method(image: F32) -> tuple[F32, F32]:
        blurred = gaussian_filter(image.astype(np.float64), sigma_px).astype(np.float32)
        return blurred, (image - blurred).astype(np.float32)

    return method


def cases(per_type: int, size: int, offset: int = 0) -> list[Phantom]:
    """``per_type`` held-out phantoms of each finding type (normal included)."""
    return [make_phantom(seed, size, kind) for kind in Finding for seed in held_out_seeds(per_type, kind, offset)]


def score(method: Method, phantoms: Iterable[Phantom]) -> list[dict[str, Any]]:
    """Per-image metrics (abnormal cases: attribution; normal cases: change made)."""
    rows = []
    for p in phantoms:
        cf, signed = method(p.abnormal)
        row: dict[str, Any] = {"seed": p.seed, "finding": p.finding.kind.value}
        if p.finding.kind is Finding.NORMAL:
            row.update(normal_scores(p.abnormal, cf))
        else:
            row.update(attribution_scores(p.abnormal, p.twin, p.mask, cf, signed))
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of every metric per finding type, plus ``overall`` over the abnormal types."""
    table: dict[str, dict[str, float]] = {}
    groups = {kind.value: [r for r in rows if r["finding"] == kind.value] for kind in Finding}
    groups["overall"] = [r for r in rows if r["finding"] in {k.value for k in ABNORMAL}]
    for name, group in groups.items():
        if not group:
            continue
        keys = [k for k in group[0] if k not in ("seed", "finding")]
        table[name] = {k: float(np.nanmean([r[k] for r in group])) for k in keys}
        table[name]["n"] = float(len(group))
    return table

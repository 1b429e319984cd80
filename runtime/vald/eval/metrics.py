"""Attribution quality against phantom ground truth, and image similarity.

One implementation for ``vald eval``, the attribution benchmark and the training recipe's evaluation
(needs scipy: ``pip install 'vald[eval]'``).  All images are ``[H, W]`` float arrays in [0, 1]; maps are
signed float arrays; masks are boolean.  Protocols: pixel AUROC and Dice after an Otsu threshold of
``|M|`` against the lesion mask (Wolleb et al. 2022); normalised
cross-correlation of the signed map with the true map (Baumgartner et al. 2018).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import correlate1d
from scipy.stats import rankdata

F = NDArray[np.floating]
B = NDArray[np.bool_]


def pixel_auroc(scores: F, mask: B) -> float:
    """Area under the ROC curve of per-pixel ``scores`` for ``mask`` (Mann-Whitney U, ties averaged)."""
    labels = mask.ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both lesion and background pixels")
    ranks = rankdata(scores.ravel())
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def otsu_threshold(values: F, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of ``values``."""
    hist, edges = np.histogram(values.ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def dice(pred: B, mask: B) -> float:
    """Dice coefficient of two boolean masks (1 when both are empty)."""
    total = int(pred.sum() + mask.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & mask).sum()) / total


def ncc(a: F, b: F) -> float:
    """Normalised cross-correlation (Pearson) of two maps; 0 where either is constant."""
    a0, b0 = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((a0 * a0).sum() * (b0 * b0).sum()))
    return 0.0 if denom == 0.0 else float((a0 * b0).sum() / denom)


def removal(abnormal: F, counterfactual: F, twin: F, mask: B) -> float:
    """``Σ_mask(abnormal - counterfactual) / Σ_mask(abnormal - twin)``: 1 = the finding fully removed."""
    truth = float((abnormal - twin)[mask].sum())
    return float((abnormal - counterfactual)[mask].sum()) / truth if truth != 0.0 else float("nan")


WINDOW = 11  # Gaussian window taps (sigma 1.5): skimage's gaussian_weights=True, pytorch-msssim's default
SIGMA = 1.5


def _gaussian_window() -> NDArray[np.float64]:
    offsets = np.arange(WINDOW, dtype=np.float64) - WINDOW // 2
    g = np.exp(-(offsets**2) / (2 * SIGMA**2))
    out: NDArray[np.float64] = g / g.sum()
    return out


def _filter(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Gaussian-weighted local mean (borders reflected)."""
    g = _gaussian_window()
    out: NDArray[np.float64] = correlate1d(correlate1d(a, g, axis=0, mode="reflect"), g, axis=1, mode="reflect")
    return out


def _valid(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """The region where the whole window lies inside the image."""
    r = WINDOW // 2
    return a[r:-r, r:-r]


def _ssim_terms(x: F, y: F, data_range: float = 1.0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-pixel (SSIM, contrast-structure) maps, full size (Wang et al. 2004)."""
    if min(x.shape) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    xs, ys = x.astype(np.float64), y.astype(np.float64)
    mx, my = _filter(xs), _filter(ys)
    vx = _filter(xs * xs) - mx * mx
    vy = _filter(ys * ys) - my * my
    cxy = _filter(xs * ys) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs, cs


def ssim_map(x: F, y: F) -> NDArray[np.float64]:
    """Per-pixel SSIM, the images' size (borders reflected; for SSIM inside or outside a mask)."""
    return _ssim_terms(x, y)[0]


def ssim(x: F, y: F) -> float:
    """Mean SSIM, data range 1: 11-tap Gaussian window (sigma 1.5), population statistics, valid region.

    Equals ``skimage.metrics.structural_similarity(x, y, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` (checked in tests/test_metrics.py).
    """
    return float(_valid(ssim_map(x, y)).mean())


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x: F, y: F, scales: int = 3) -> float:
    """Multi-scale SSIM (Wang et al. 2003) over ``scales`` dyadic scales, weights renormalised.

    Three scales by default: at 128² the five scales of the original paper leave 8×8 images, smaller than
    the window.  Per scale the contrast-structure mean (the SSIM mean at the coarsest), clipped at 0, raised
    to its weight; 2×2 averaging between scales.  Equals ``pytorch_msssim.ms_ssim`` with the same
    (renormalised) weights on even-sized images (checked in tests/test_metrics.py).
    """
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    value = 1.0
    for level in range(scales):
        s_map, cs_map = _ssim_terms(x, y)
        term = float(_valid(s_map if level == scales - 1 else cs_map).mean())
        value *= max(term, 0.0) ** weights[level]
        h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return value


def localisation_scores(signed_map: F, mask: B) -> dict[str, float]:
    """How well ``|M|`` points at the lesion mask: pixel AUROC and Dice after an Otsu threshold."""
    magnitude = np.abs(signed_map)
    return {"auroc": pixel_auroc(magnitude, mask), "dice_otsu": dice(magnitude > otsu_threshold(magnitude), mask)}


def attribution_scores(abnormal: F, twin: F, mask: B, counterfactual: F, signed_map: F) -> dict[str, float]:
    """Every per-image metric of one abnormal case (the map may differ from ``abnormal - counterfactual``)."""
    return {
        **localisation_scores(signed_map, mask),
        "ncc": ncc(signed_map, abnormal - twin),
        "removal": removal(abnormal, counterfactual, twin, mask),
        "change_outside": float(np.abs(abnormal - counterfactual)[~mask].mean()),
        "ssim_cf_twin": ssim(counterfactual, twin),
        "ms_ssim_cf_twin": ms_ssim(counterfactual, twin),
        "ssim_input_twin": ssim(abnormal, twin),
    }


def normal_scores(image: F, counterfactual: F) -> dict[str, float]:
    """Change a method makes to a normal image (ideally none)."""
    return {"change_normal": float(np.abs(image - counterfactual).mean()), "ssim_cf_input": ssim(counterfactual, image)}

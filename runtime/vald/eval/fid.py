"""Fréchet Inception Distance (Heusel et al. 2017) between two sets of feature vectors.

``FID = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` with the sample means and covariances (``N - 1``) of the
features.  The features come from :mod:`vald.eval.inception`; the formula is checked in the tests against
an independent computation (the eigenvalues of ``S1 S2``) and a closed form.  FID of small sets is biased
upwards (Chong & Forsyth 2020): compare values only at equal set sizes; the size is recorded beside it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import linalg

F64 = NDArray[np.float64]


def feature_statistics(features: F64) -> tuple[F64, F64]:
    """Mean and sample covariance of ``[N, D]`` features (N >= 2)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError("FID needs at least two feature vectors per set")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu1: F64, sigma1: F64, mu2: F64, sigma2: F64, eps: float = 1e-6) -> float:
    """The Fréchet distance of two Gaussians; a near-singular product is regularised by ``eps`` on the diagonal."""
    diff = mu1 - mu2
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        root = root.real  # rounding leaves tiny imaginary parts: the product of two PSD matrices has real roots
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def fid(features_a: F64, features_b: F64) -> float:
    """FID between two ``[N, D]`` feature sets, without forming a ``D x D`` square root.

    With ``A``, ``B`` the centred features, ``S1 S2 = Aᵀ A Bᵀ B / c`` (``c = (N1 - 1)(N2 - 1)``) has the same
    non-zero eigenvalues as ``(A Bᵀ)(A Bᵀ)ᵀ / c``, so ``tr((S1 S2)^½)`` is the sum of the singular values of
    ``A Bᵀ`` over ``√c``: exact, and an ``N1 x N2`` problem instead of a 2048 x 2048 one.
    """
    mu1, sigma1 = feature_statistics(features_a)
    mu2, sigma2 = feature_statistics(features_b)
    a, b = features_a - mu1, features_b - mu2
    scale = np.sqrt((len(a) - 1) * (len(b) - 1))
    cross = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / scale
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)

"""Attribution metrics on cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from vald.eval.metrics import dice, ms_ssim, ncc, otsu_threshold, pixel_auroc, removal, ssim


def test_auroc_perfect_inverted_and_chance() -> None:
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    assert pixel_auroc(mask.astype(float), mask) == 1.0
    assert pixel_auroc(-mask.astype(float), mask) == 0.0
    assert pixel_auroc(np.zeros((32, 32)), mask) == 0.5  # all tied
    rng = np.random.default_rng(0)
    assert abs(pixel_auroc(rng.random((32, 32)), mask) - 0.5) < 0.1
    with pytest.raises(ValueError):
        pixel_auroc(np.ones((4, 4)), np.zeros((4, 4), bool))


def test_otsu_splits_a_bimodal_histogram_and_dice() -> None:
    rng = np.random.default_rng(1)
    low, high = rng.normal(0.1, 0.02, 1000), rng.normal(0.8, 0.02, 300)
    assert low.max() <= otsu_threshold(np.concatenate([low, high])) < high.min()
    a = np.zeros((10, 10), bool)
    a[:5] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_ncc_and_removal() -> None:
    rng = np.random.default_rng(2)
    m = rng.normal(size=(16, 16))
    assert ncc(m, 3 * m + 1) == pytest.approx(1.0) and ncc(m, -m) == pytest.approx(-1.0)
    assert ncc(m, np.zeros_like(m)) == 0.0
    twin = rng.random((16, 16))
    abnormal = twin.copy()
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    abnormal[mask] += 0.3
    assert removal(abnormal, twin, twin, mask) == pytest.approx(1.0)
    assert removal(abnormal, abnormal, twin, mask) == pytest.approx(0.0)
    assert removal(abnormal, (abnormal + twin) / 2, twin, mask) == pytest.approx(0.5)


def test_ssim_and_ms_ssim() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((64, 64))
    assert ssim(x, x) == pytest.approx(1.0) and ms_ssim(x, x) == pytest.approx(1.0)
    noisy = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    assert ssim(x, noisy) < 0.9 and ms_ssim(x, noisy) < 0.95


def _pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    x = np.clip(gaussian_filter(rng.random((size, size)), 2.0) * 2 - 0.3, 0, 1)
    return x, np.clip(x + gaussian_filter(rng.normal(0, 0.15, x.shape), 1.0), 0, 1)


def test_ssim_equals_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    for seed in range(3):
        x, y = _pair(96, seed)
        expected = structural_similarity(
            x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ssim(x, y) == pytest.approx(expected, abs=1e-9)


def test_ms_ssim_equals_pytorch_msssim() -> None:
    import torch
    from pytorch_msssim import ms_ssim as reference

    from vald.eval.metrics import MS_SSIM_WEIGHTS

    for seed, scales in ((0, 3), (1, 3), (2, 5)):
        x, y = _pair(192, seed)
        weights = [w / sum(MS_SSIM_WEIGHTS[:scales]) for w in MS_SSIM_WEIGHTS[:scales]]
        tx, ty = (torch.from_numpy(a)[None, None].double() for a in (x, y))
        expected = float(reference(tx, ty, data_range=1.0, weights=weights))
        # pytorch-msssim builds its window in float32: agreement to ~1e-6, not to float64 rounding
        assert ms_ssim(x, y, scales=scales) == pytest.approx(expected, abs=1e-5)

"""Shared fixtures: a tiny model built from config, its export, and a real chest radiograph as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vald_export.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=0)


@pytest.fixture(scope="session")
def engines(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vald_export.export import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny"
    export_model(tiny_model, out, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def chest_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pydicom-data's real PA chest CR (1955×1841), as a 16-bit PNG."""
    pytest.importorskip("pydicom")
    from vald_export.samples import chest_cr_png

    return chest_cr_png(tmp_path_factory.mktemp("img") / "chest_cr.png")


@pytest.fixture(scope="session")
def small_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small non-square 8-bit image (fast runs)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:90, 0:70]
    img = 0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 11.0) + 0.05 * rng.standard_normal((90, 70))
    path = tmp_path_factory.mktemp("img") / "small.png"
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path

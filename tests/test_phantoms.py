"""Phantoms: deterministic, exact twins, findings where the report says, DICOM and PNG sets read back."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from vald.config import DEFAULT_PROMPT
from vald_train.phantoms import ABNORMAL, Finding, make_phantom
from vald_train.reports import vocabulary


def test_same_seed_same_images_and_other_seeds_differ() -> None:
    a, b, c = make_phantom(7), make_phantom(7), make_phantom(8)
    assert np.array_equal(a.abnormal, b.abnormal) and np.array_equal(a.twin, b.twin) and a.report == b.report
    assert not np.array_equal(a.twin, c.twin)


def test_normal_case_is_its_own_twin() -> None:
    p = make_phantom(3, kind=Finding.NORMAL)
    assert np.array_equal(p.abnormal, p.twin) and not p.mask.any()


@pytest.mark.parametrize("kind", ABNORMAL)
def test_finding_changes_only_around_its_mask_and_adds_density(kind: Finding) -> None:
    for seed in range(5):
        p = make_phantom(seed, 128, kind)
        assert p.mask.any() and p.abnormal.dtype == np.float32 and 0 <= p.abnormal.min() <= p.abnormal.max() <= 1
        near = binary_dilation(p.mask, iterations=3)
        assert float(np.abs(p.difference[~near]).max()) < 0.05
        assert float(p.difference[p.mask].mean()) > 0.02  # findings are denser: brighter in MONOCHROME2


@pytest.mark.parametrize("kind", [Finding.CONSOLIDATION, Finding.NODULE, Finding.EFFUSION])
def test_side_in_the_report_is_the_side_of_the_lesion(kind: Finding) -> None:
    for seed in range(6):
        p = make_phantom(seed, 128, kind)
        centre_x = np.nonzero(p.mask)[1].mean() / 128
        # PA view: the patient's right is on the image left.
        assert (centre_x < 0.5) == (p.finding.side == "right"), (p.finding, centre_x)
        assert p.finding.side in p.report and ("pleural effusion" in p.report if kind is Finding.EFFUSION else True)


def test_cardiomegaly_enlarges_the_heart() -> None:
    p = make_phantom(4, 128, Finding.CARDIOMEGALY)
    assert "cardiomegaly" in p.report and p.mask.sum() > 100


def test_vocabulary_covers_every_report_and_the_default_prompt() -> None:
    words = set(vocabulary())
    texts = [make_phantom(s).report for s in range(60)] + [DEFAULT_PROMPT]
    assert {w for t in texts for w in re.findall(r"[a-z]+", t)} <= words


def test_written_set_has_the_covid_layout_and_readable_dicom(tmp_path: Path) -> None:
    import pydicom
    from PIL import Image

    from vald_train.dataset import write_set

    assert write_set(tmp_path, 2, 96, dicom=True) == 10
    for name in ("Normal", "Consolidation", "Nodule", "Effusion", "Cardiomegaly"):
        assert len(list((tmp_path / name / "images").glob("*.png"))) == 2
        assert len(list((tmp_path / name / "masks").glob("*.png"))) == 2
    png = np.asarray(Image.open(next((tmp_path / "Nodule" / "images").glob("*.png"))))
    assert png.dtype == np.uint16 and png.shape == (96, 96)
    files = sorted((tmp_path / "dicom").glob("Nodule-*.dcm"))
    mono2, mono1 = (pydicom.dcmread(f) for f in files)
    assert (mono2.PhotometricInterpretation, mono1.PhotometricInterpretation) == ("MONOCHROME2", "MONOCHROME1")
    assert mono1.BitsStored == 12 and mono1.Modality == "DX" and mono1.pixel_array.max() <= 4095
    seed = int(files[1].stem.split("-")[1])
    expected = np.round(make_phantom(seed, 96, Finding.NODULE).abnormal * 4095)
    assert np.array_equal(4095 - mono1.pixel_array.astype(np.float64), expected)  # MONOCHROME1 stores inverted values

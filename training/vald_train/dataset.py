"""Write phantom sets to disk: PNG in the COVID-19 Radiography Database layout, and DICOM DX files.

    python -m vald_train.dataset OUT [--per-type 20] [--size 256] [--dicom]

PNG layout: ``OUT/<Class>/images/<Class>-<seed>.png`` (16-bit), ``OUT/<Class>/masks/``
(lesion masks, 8-bit), ``OUT/<Class>/twins/`` (the normal twins: the exact
counterfactuals) and ``OUT/labels.csv`` (seed, class, side, zone, size, report).
DICOM: ``OUT/dicom/<Class>-<seed>.dcm``, Digital X-Ray (for presentation),
12 bits stored, alternating MONOCHROME2 and MONOCHROME1, with a window.
All identifiers are synthetic and derived from the seed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vald_train.data import held_out_seeds
from vald_train.phantoms import Finding, Phantom, make_phantom

CLASS_NAMES = {
    Finding.NORMAL: "Normal",
    Finding.CONSOLIDATION: "Consolidation",
    Finding.NODULE: "Nodule",
    Finding.EFFUSION: "Effusion",
    Finding.CARDIOMEGALY: "Cardiomegaly",
}
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
FIELD_OF_VIEW_MM = 380.0


def _png16(image: NDArray[np.float32], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(path)


def write_png_case(p: Phantom, out: Path) -> None:
    """One case in the COVID-19 Radiography Database layout (plus its twin)."""
    name = CLASS_NAMES[p.finding.kind]
    stem = f"{name}-{p.seed}.png"
    _png16(p.abnormal, out / name / "images" / stem)
    _png16(p.twin, out / name / "twins" / stem)
    (out / name / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray((p.mask * 255).astype(np.uint8)).save(out / name / "masks" / stem)


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["vald-phantom", *map(str, parts)]))


def write_dicom(p: Phantom, path: Path, *, monochrome1: bool, bits: int = 12) -> None:
    """A DX radiograph (for presentation) of the abnormal image; MONOCHROME1 stores inverted values."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    top = 2**bits - 1
    values = np.round(np.clip(p.abnormal, 0, 1) * top).astype(np.uint16)
    if monochrome1:
        values = (top - values).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = _uid(p.seed, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(p.seed, "study"), _uid(p.seed, "series")
    ds.PatientName, ds.PatientID = "Phantom", f"PH{p.seed}"
    ds.StudyDate = ds.SeriesDate = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["DERIVED", "PRIMARY"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer, ds.ImageComments = "vald phantom generator", "synthetic phantom, not a patient"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = top // 2, top
    ds.ImagerPixelSpacing = [FIELD_OF_VIEW_MM / values.shape[0]] * 2
    ds.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_set(out: Path, per_type: int, size: int, *, dicom: bool, offset: int = 900) -> int:
    """Held-out phantoms of every type to ``out``; returns the number of cases."""
    rows = []
    for kind in Finding:
        for k, seed in enumerate(held_out_seeds(per_type, kind, offset=offset)):
            p = make_phantom(seed, size, kind)
            write_png_case(p, out)
            if dicom:
                write_dicom(p, out / "dicom" / f"{CLASS_NAMES[kind]}-{seed}.dcm", monochrome1=k % 2 == 1)
            f = p.finding
            rows.append([seed, CLASS_NAMES[kind], f.side or "", f.zone or "", f.size or "", p.report])
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seed", "class", "side", "zone", "size", "report"])
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m vald_train.dataset", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-type", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dicom", action="store_true")
    parser.add_argument("--offset", type=int, default=900, help="held-out seed offset (900: the vald eval set)")
    args = parser.parse_args(argv)
    written = write_set(args.out, args.per_type, args.size, dicom=args.dicom, offset=args.offset)
    print(written, "cases written to", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""DICOM files written by the tests: every photometric interpretation, windows, rescale, LUTs, syntaxes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-778899", "PatientBirthDate": "19700101"}


def ramp(rows: int = 96, cols: int = 80, bits: int = 12, seed: int = 0) -> NDArray[np.uint16]:
    """A smooth image with some texture covering the full stored range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    img = 0.5 + 0.35 * np.sin(x / 9.0) * np.cos(y / 13.0) + 0.05 * rng.standard_normal((rows, cols))
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * (2**bits - 1)).astype(np.uint16)


def dataset(
    values: NDArray[Any],
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str = "DX",
    signed: bool = False,
    uid_seed: int = 1,
    **tags: Any,
) -> Any:
    """An uncompressed single-frame DX dataset with file meta; ``tags`` set further attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.{uid_seed}.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1234.{uid_seed}.1"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1234.{uid_seed}.2"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Modality, ds.BodyPartExamined, ds.PatientOrientation = modality, "CHEST", ["P", "F"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = values.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    ds.ImagerPixelSpacing = [0.15, 0.15]
    dtype = (np.int8 if signed else np.uint8) if ds.BitsAllocated == 8 else (np.int16 if signed else np.uint16)
    ds.PixelData = np.ascontiguousarray(values.astype(dtype)).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def save(ds: Any, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def to_bytes(ds: Any) -> bytes:
    """``ds`` as Part 10 bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def voi_lut(first: int, entries: int, out_bits: int, gamma: float) -> Any:
    """A VOI LUT Sequence item: a gamma curve over [first, first + entries)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [entries, first, out_bits]
    curve = (np.linspace(0.0, 1.0, entries) ** gamma) * (2**out_bits - 1)
    item.add_new(0x00283006, "OW", np.round(curve).astype("<u2").tobytes())  # LUT Data
    item.LUTExplanation = "test gamma"
    return item


def jpeg_baseline(values8: NDArray[np.uint8], **kwargs: Any) -> Any:
    """An 8-bit dataset whose pixel data is a JPEG baseline stream (encoded by Pillow)."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(values8).save(buf, format="JPEG", quality=95)
    ds = dataset(values8, bits_stored=8, **kwargs)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    return ds

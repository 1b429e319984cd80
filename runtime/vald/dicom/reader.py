"""Reading one CR/DX radiograph for the model, with clean, PHI-free errors.

Errors never carry a file name, a tag value or pydicom's own message (which may quote tag values):
only what is wrong and, for decoding failures, the exception's type.  pydicom's warnings and log
records are silenced while a file is read for the same reason.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.dicom.codecs import check_decodable, transfer_syntax_name
from vald.dicom.pixels import Display, to_display
from vald.errors import InputError
from vald.imageio import check_size

MODALITIES = ("CR", "DX")
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


@dataclass(frozen=True)
class DicomImage:
    """A radiograph as displayed, plus the header (no pixel data) for derived objects."""

    image: NDArray[np.float32]
    header: Any = field(repr=False)
    display: Display
    info: dict[str, Any]


@contextmanager
def quiet_dicom() -> Iterator[None]:
    """No pydicom/highdicom warnings or log records: both may quote tag values (names, IDs)."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    was = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, old in zip(loggers, was, strict=True):
            logger.disabled = old


def is_dicom(path: Path) -> bool:
    """True if the file has the DICOM preamble and 'DICM' prefix."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _spacing(ds: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for tag in SPACING_TAGS:
        value = ds.get(tag)
        if value is not None:
            try:
                found[tag] = [float(v) for v in value]
            except (TypeError, ValueError):
                found[tag] = "unreadable"
    found["used_for_geometry"] = False
    return found


@contextmanager
def _as_input_error(what: str) -> Iterator[None]:
    """Turn any failure inside into ``InputError(f"{what} ({exception type})")``, never quoting its message.

    pydicom raises many types on damaged files, and decoders written in Rust panic with a BaseException
    (pyo3), so BaseException is caught; interrupts, exits and MemoryError are not.
    """
    try:
        yield
    except InputError:
        raise
    except (KeyboardInterrupt, SystemExit, MemoryError, GeneratorExit):
        raise
    except BaseException as exc:
        raise InputError(f"{what} ({type(exc).__name__})") from None


def _check_header(ds: Any, modalities: tuple[str, ...] | None, path: Path) -> None:
    if "PixelData" not in ds and PIXEL_DATA_TAG in path.read_bytes():
        raise InputError("the DICOM file is truncated inside its pixel data")
    if "PixelData" not in ds:
        kind = "float or double float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else None
        raise InputError(f"the DICOM file has {kind or 'no pixel data (truncated, or not an image)'}")
    mod = str(ds.get("Modality", "") or "").upper()
    if modalities is not None and mod not in modalities:
        raise InputError(
            f"modality {mod or 'missing'!r} is not a chest radiograph ({', '.join(modalities)}); "
            "pass --any-modality to process it anyway"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(f"multi-frame image ({frames} frames); only single-frame radiographs are supported")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"colour or non-greyscale image ({photometric or 'no photometric interpretation'}, "
            f"{samples} samples per pixel); only MONOCHROME1/MONOCHROME2 are supported"
        )
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 8 <= bits <= 16:
        raise InputError(f"Bits Stored is {bits}; 8 to 16 are supported")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(cols, rows)


def read_dicom(path: Path, modalities: tuple[str, ...] | None = MODALITIES) -> DicomImage:
    """Read, check and display one single-frame greyscale radiograph (``modalities=None``: any)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    with quiet_dicom():
        with _as_input_error("the DICOM file cannot be parsed; truncated or corrupt"):
            try:
                ds = dcmread(path)
            except InvalidDicomError:
                raise InputError("not a DICOM file (no DICOM preamble or meta header)") from None
        with _as_input_error("the DICOM header is damaged"):  # a damaged value in one of the checked tags
            _check_header(ds, modalities, path)
        syntax = check_decodable(ds)
        with _as_input_error(f"pixel data cannot be decoded ({transfer_syntax_name(syntax)}); truncated or corrupt"):
            stored = np.asarray(ds.pixel_array)
        if stored.shape != (int(ds.Rows), int(ds.Columns)):
            raise InputError(f"decoded pixel data has shape {stored.shape}, the header says {ds.Rows}x{ds.Columns}")
        with _as_input_error("the grey-level transforms cannot be applied"):
            image, display = to_display(stored, ds)
        if not np.isfinite(image).all():
            raise InputError("the grey-level transforms give non-finite values")
        info = {
            "transfer_syntax": transfer_syntax_name(syntax),
            "modality": str(ds.get("Modality", "")),
            "sop_class": str(getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", ""))),
            "photometric_interpretation": str(ds.PhotometricInterpretation),
            "bits_stored": int(ds.BitsStored),
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "spacing": _spacing(ds),
            "display": display.as_dict(),
        }
        del ds.PixelData
    return DicomImage(image, ds, display, info)

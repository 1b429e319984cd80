"""One input, ready for the model: displayed pixels, a content hash, its output name and its DICOM header.

Output folders are named by a hash: of the SOP Instance UID for DICOM (the same instance sent twice
lands in the same folder), of the file's bytes otherwise.  Never by file or patient names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.errors import InputError, os_cause
from vald.imageio import read_image
from vald.manifest import sha256_file

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
KEY_CHARS = 16


@dataclass(frozen=True)
class Source:
    """An input image as the pipeline needs it."""

    image: NDArray[np.float32]
    sha256: str
    key: str
    header: Any = field(default=None, repr=False)  # pydicom Dataset without pixel data (DICOM only)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dicom(self) -> bool:
        """True when the input was DICOM (derived DICOM objects can be written)."""
        return self.header is not None


def looks_like_dicom(path: Path) -> bool:
    """By suffix, or by the 'DICM' magic for suffix-less files (as PACS exports often are)."""
    from vald.dicom.reader import is_dicom

    return path.suffix.lower() in DICOM_SUFFIXES or is_dicom(path)


def read_sha256(path: Path) -> str:
    """The content hash of an input file; InputError naming the cause if it cannot be read."""
    if not path.is_file():
        raise InputError("input file does not exist or is not a file")
    try:
        return sha256_file(path)
    except OSError as exc:
        raise InputError(f"cannot read input: {os_cause(exc, 'input device')}") from None


def load(path: Path, sha256: str | None = None, *, modalities: tuple[str, ...] | None = ("CR", "DX")) -> Source:
    """Read an image file or a DICOM radiograph (``modalities=None`` accepts any DICOM modality).

    ``sha256``: the file's content hash when the caller has it already.
    """
    sha = sha256 or read_sha256(path)
    try:
        return _load(path, sha, modalities)
    except OSError as exc:  # a read that fails after the hash (the file changed, an I/O error)
        raise InputError(f"cannot read input: {os_cause(exc, 'input device')}") from None


def _load(path: Path, sha: str, modalities: tuple[str, ...] | None) -> Source:
    if not looks_like_dicom(path):
        return Source(read_image(path), sha, sha[:KEY_CHARS])
    try:
        import pydicom  # noqa: F401  (vald.dicom imports it lazily, so check for the extra here)
    except ImportError:
        raise InputError("reading DICOM needs the dicom extra: pip install 'vald[dicom]'") from None
    from vald.dicom.reader import read_dicom

    dicom = read_dicom(path, modalities)
    uid = str(dicom.header.get("SOPInstanceUID", "") or "")
    if not uid:
        raise InputError("the DICOM file has no SOP Instance UID")
    return Source(dicom.image, sha, instance_key(uid), dicom.header, dicom.info)


def instance_key(sop_instance_uid: str) -> str:
    """The output folder's name for a DICOM instance: a prefix of the SOP Instance UID's hash."""
    return hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()[:KEY_CHARS]

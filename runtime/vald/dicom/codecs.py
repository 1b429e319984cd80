"""Which package decodes which compressed transfer syntax, and a clear error when none is installed.

Decoders are pydicom plugins, chosen for permissive licences (``pip install 'vald[dicom]'`` brings
them): python-gdcm (BSD) for JPEG Lossless and as a fall-back for everything; pylibjpeg with
pylibjpeg-openjpeg (MIT / BSD-2) for JPEG 2000 and HTJ2K; pylibjpeg-rle (MIT) for fast RLE;
pyjpegls (MIT) for JPEG-LS; Pillow (HPND, already a vald dependency) for JPEG baseline.
pylibjpeg-libjpeg is **not** used: it is GPLv3.
"""

from __future__ import annotations

from typing import Any

from vald.errors import InputError

_GDCM = "python-gdcm"
_J2K = "pylibjpeg pylibjpeg-openjpeg"

# Transfer syntax UID -> the packages to install for it (first choice first).
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": f"pillow or {_GDCM}",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": f"pillow or {_GDCM}",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": _GDCM,  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": _GDCM,  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": f"pyjpegls or {_GDCM}",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": f"pyjpegls or {_GDCM}",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": f"{_J2K} or {_GDCM}",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91": f"{_J2K} or {_GDCM}",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K,  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202": _J2K,  # HTJ2K with RPCL (Lossless Only)
    "1.2.840.10008.1.2.4.203": _J2K,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle (pydicom's own decoder is used otherwise)",  # RLE Lossless
}


def transfer_syntax_name(uid: str) -> str:
    """The transfer syntax's name and UID, e.g. ``'JPEG Lossless ... (1.2.840.10008.1.2.4.70)'``."""
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def check_decodable(ds: Any) -> str:
    """Raise InputError naming the transfer syntax and the package to install if no decoder is here.

    Returns the transfer syntax UID.
    """
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not uid:
        raise InputError("the file has no Transfer Syntax UID in its meta header")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(f"no decoder exists in pydicom for transfer syntax {transfer_syntax_name(uid)}") from None
    if not decoder.is_available:
        hint = DECODER_PACKAGES.get(uid, "python-gdcm")
        raise InputError(
            f"pixel data is compressed as {transfer_syntax_name(uid)} and no decoder for it is installed; "
            f"install one: pip install {hint.split(' or ')[0]}  (or: pip install 'vald[dicom]')"
        )
    return uid

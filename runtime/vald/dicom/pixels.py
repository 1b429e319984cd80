"""Stored DICOM pixel values -> displayed grey levels in [0, 1] (0 = black), as pure functions.

The order is the standard's grayscale pipeline: Modality LUT (or Rescale Slope/Intercept) -> VOI
(a VOI LUT, else a window, else the image's own range) -> MONOCHROME1 inversion, done explicitly
because pydicom's helpers do not invert on Photometric Interpretation alone.

Choices where a file offers several:
- **VOI LUT before window.**  If the file has a VOI LUT Sequence its first LUT is used, else the
  first Window Center/Width pair (LINEAR, LINEAR_EXACT or SIGMOID per VOI LUT Function).  Both
  follow pydicom's default and what most viewers show first.
- **No VOI at all** (or an unusable window, width < 1): the image's own minimum..maximum.
- **Presentation LUT Shape** is not applied: in CR/DX it restates the photometric interpretation
  (INVERSE goes with MONOCHROME1), so applying both would invert twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Display:
    """What was done to turn stored values into the displayed image (recorded in result.json)."""

    modality_lut: str
    voi: str
    window: tuple[float, float] | None
    voi_function: str | None
    inverted: bool
    windows_offered: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "modality_lut": self.modality_lut,
            "voi": self.voi,
            "window_center_width": list(self.window) if self.window else None,
            "voi_lut_function": self.voi_function,
            "monochrome1_inverted": self.inverted,
            "windows_offered": self.windows_offered,
        }


def window(values: F64, center: float, width: float, function: str = "LINEAR") -> F64:
    """A VOI window (PS3.3 C.11.2.1.2) onto [0, 1]."""
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        out: F64 = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return out
    if width < 1:
        raise ValueError("LINEAR window width must be >= 1")
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def full_range(values: F64) -> F64:
    """The image's own minimum..maximum onto [0, 1] (a flat image maps to 0)."""
    return full_range_of(values, float(values.min()), float(values.max()))


def _values(value: Any) -> list[float]:
    """The values of a DS/IS element that may hold one value or several (pydicom's MultiValue)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [float(v) for v in value]
    return [float(value)]


def modality(stored: NDArray[Any], ds: Any) -> tuple[F64, str]:
    """Stored values -> modality values: the Modality LUT Sequence, else Rescale Slope/Intercept."""
    from pydicom.pixels.processing import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), "Modality LUT Sequence"
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.float64) * slope + intercept
    return values, f"rescale slope {slope:g}, intercept {intercept:g}"


def voi(values: F64, ds: Any) -> tuple[F64, str, tuple[float, float] | None, str | None, int]:
    """Modality values -> [0, 1] by the first VOI LUT, else the first window, else the full range."""
    from pydicom.pixels.processing import apply_voi

    luts = ds.get("VOILUTSequence")
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    offered = (len(luts) if luts else 0) + (len(_values(centers)) if centers is not None else 0)
    if luts:
        mapped = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        entries, first = int(luts[0].LUTDescriptor[0]) or 65536, int(luts[0].LUTDescriptor[1])
        lut = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0), dtype=np.float64)
        shown = full_range_of(mapped, float(lut.min()), float(lut.max()))
        return shown, "VOI LUT Sequence (first)", None, None, offered
    if centers is not None and widths is not None:
        center, width = _values(centers)[0], _values(widths)[0]
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"
        if width >= 1 or (function != "LINEAR" and width > 0):
            return window(values, center, width, function), "window (first)", (center, width), function, offered
    return full_range(values), "image minimum..maximum", None, None, offered


def full_range_of(values: F64, lo: float, hi: float) -> F64:
    """``values`` from [lo, hi] onto [0, 1]."""
    return np.zeros_like(values) if hi <= lo else np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def to_display(stored: NDArray[Any], ds: Any) -> tuple[NDArray[np.float32], Display]:
    """The whole pipeline: stored values of one grey frame -> displayed [0, 1], and what was done."""
    values, how = modality(stored, ds)
    shown, voi_how, win, function, offered = voi(values, ds)
    inverted = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if inverted:
        shown = 1.0 - shown
    return shown.astype(np.float32), Display(how, voi_how, win, function, inverted, offered)

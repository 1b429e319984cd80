"""The Parametric Map of one result: the signed attribution map M on the source's matrix, in the source's study.

Pixels.  M itself, as 32-bit float pixels (Float Pixel Data), with an identity Real World Value Mapping
(slope 1, intercept 0, unit "no units": M is a difference of intensities scaled to 0..1) and a LINEAR_EXACT
window centred on 0 whose width is twice the colour limit, so a grey display saturates where the overlay does.

Colour.  No palette is written.  PS3.3 and highdicom attach a Palette Color LUT (Pixel Presentation
COLOR_RANGE) to integer Pixel Data only, and a COLOR_RANGE map built that way (16-bit stored values, the
overlay's diverging palette, ICC profile, Stored Value Color Range) still drew 8 Errors from dciodvfy: it
checks the palette elements against the Image Pixel module's PALETTE COLOR condition, and it cannot check the
Stored Value Color Range's float values.  The diverging colours stay in the overlay Secondary Capture; a
viewer colours the map with its own colour map (OHIF's, see docs/dicom.md).

Geometry.  The Parametric Map IOD requires a Frame of Reference and plane positions; a CR/DX has neither.
For such a source the map declares a frame of reference of its own (a UID derived from the source instance,
Position Reference Indicator empty): its axes are the source's pixel grid (rows along (1, 0, 0), columns
along (0, 1, 0)), its origin the first pixel, spacing the one the SEG uses (``writer.pixel_measures``, else
1 mm, said in the Derivation Description).  No relation to patient coordinates is claimed.  A source that has a
Frame of Reference, an Image Position and an Image Orientation keeps its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.dicom.writer import (
    NOT_FOR_DIAGNOSIS,
    SERIES,
    Provenance,
    _conditional,
    _equipment,
    _reference,
    _source_copy,
    derived_uid,
    identity,
    pixel_measures,
)
from vald.errors import ValdError
from vald.render import CAUTION


def _geometry_source(header: Any, prov: Provenance) -> tuple[Any, str]:
    """A copy of the source header with the geometry the IOD requires, and a sentence saying what was declared."""
    source = _source_copy(header, drop=("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"))
    measures = pixel_measures(header)
    spacing = [float(v) for v in measures[0].PixelSpacing] if measures is not None else [1.0, 1.0]
    source.PixelSpacing = spacing
    source.SliceThickness = header.get("SliceThickness", None) or 1.0  # highdicom reads it; a projection has none
    own = all(name in header for name in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient"))
    if own:
        return source, "the source's frame of reference"
    source.FrameOfReferenceUID = derived_uid(str(header.SOPInstanceUID), "pixel-grid frame of reference")
    source.PositionReferenceIndicator = None
    source.ImagePositionPatient = [0.0, 0.0, 0.0]
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    how = "the source's spacing" if measures is not None else "1 mm (the source states no spacing)"
    return source, f"a frame of reference of the source's pixel grid (spacing {how}; not patient coordinates)"


def attribution_pmap(header: Any, signed_map: NDArray[np.float32], vmax: float, prov: Provenance) -> Any:
    """Parametric Map of ``signed_map`` (``[Rows, Columns]`` float32, M in image units of [0, 1] intensity)."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    if signed_map.shape != (int(header.Rows), int(header.Columns)):
        raise ValdError("the attribution map must be on the source's pixel matrix")
    pixels = np.ascontiguousarray(signed_map, dtype=np.float32)
    source, frame = _geometry_source(header, prov)
    kind = prov.kind("parametric-map")
    label = "M" if prov.task != "induction" else "induced M"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label,
        lut_explanation="M = I_abnormal - I_normal, intensities scaled to 0..1",
        unit=Code("1", "UCUM", "no units"),
        value_range=(float(pixels.min()), float(pixels.max())),
        slope=1.0,
        intercept=0.0,
    )
    ds = hd.pm.ParametricMap(
        source_images=[source],
        pixel_array=pixels,
        **identity(header, kind, prov),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=0.0, window_width=2 * vmax, voi_lut_function="LINEAR_EXACT")
        ],
        content_description=f"{NOT_FOR_DIAGNOSIS}: signed attribution map"[:64],
        content_label="VALD_MAP",
        contributing_equipment=[_equipment(prov)],
    )
    _label(ds, header, kind, prov, frame)
    return ds


def _label(ds: Any, header: Any, kind: str, prov: Provenance, frame: str) -> None:
    """What every derived object says, for the map (no Patient Orientation: the IOD has no General Image)."""
    _conditional(ds, header, image=True)
    del ds.PatientOrientation
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} - {SERIES[kind][1]}"[:64]
    ds.ReferencedImageSequence = [_reference(header)]
    ds.DerivationDescription = (
        f"{SERIES[kind][1]}; {NOT_FOR_DIAGNOSIS.lower()}; vald {prov.version}; geometry: {frame}"
    )[:1024]
    ds.ImageComments = f"{CAUTION}. model sha256 {prov.model_sha256[:16]}, settings sha256 {prov.settings_sha256[:16]}"

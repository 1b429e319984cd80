"""The report's colours for the Parametric Map: a Pseudo-Color Softcopy Presentation State that refers to it.

The Parametric Map holds M as float pixels and so carries no palette of its own (see ``vald.dicom.pmap``).
This presentation state (PS3.3 A.33.4) tells a viewer how to show it in colour: a LINEAR_EXACT window from
-colour limit to +colour limit, then the overlay's diverging palette (``vald.render.diverging``, 256 entries
of 16 bits): white at M = 0, red where the abnormal image is brighter than its counterfactual (M > 0), blue
where it is darker, saturated at ± the colour limit, as in the overlay and the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vald.dicom.writer import NOT_FOR_DIAGNOSIS, SERIES, Provenance, _conditional, identity
from vald.render import diverging

ENTRIES = 256


def diverging_palette() -> Any:
    """The overlay's diverging colour map as a 16-bit Palette Color LUT (entry 0 = -limit, 255 = +limit)."""
    import highdicom as hd

    rgb = np.rint(diverging(np.linspace(-1.0, 1.0, ENTRIES)) * 65535).astype(np.uint16)
    luts = [hd.PaletteColorLUT(0, rgb[:, i].copy(), color) for i, color in enumerate(("red", "green", "blue"))]
    return hd.PaletteColorLUTTransformation(*luts)


def map_colours(header: Any, pmap: Any, vmax: float, prov: Provenance) -> Any:
    """Pseudo-Color Softcopy Presentation State: ``pmap`` (the result's Parametric Map) in the report's colours."""
    import highdicom as hd

    kind = prov.kind("map-colours")
    ds = hd.pr.PseudoColorSoftcopyPresentationState(
        referenced_images=[pmap],
        **identity(header, kind, prov),
        palette_color_lut_transformation=diverging_palette(),
        content_label="VALD_COLOURS",
        content_description=f"{NOT_FOR_DIAGNOSIS}: red M>0, blue M<0"[:64],
    )
    # highdicom 0.28.2's constructor fails on its own voi_lut_transformations check: the window is set here
    ds.SoftcopyVOILUTSequence = [
        hd.pr.SoftcopyVOILUTTransformation(window_center=0.0, window_width=2 * vmax, voi_lut_function="LINEAR_EXACT")
    ]
    _conditional(ds, header, image=True)
    del ds.PatientOrientation  # no General Image module in a presentation state
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} - {SERIES[kind][1]}"[:64]
    return ds

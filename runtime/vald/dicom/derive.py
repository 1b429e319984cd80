"""The derived DICOM files of one result, as bytes ready to be written (names -> bytes, plus their UIDs)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vald.dicom.palette import map_colours
from vald.dicom.pmap import attribution_pmap
from vald.dicom.reader import quiet_dicom
from vald.dicom.report import Algorithm, attribution_sr
from vald.dicom.writer import Provenance, attribution_seg, binary_region, grey_sc, overlay_sc, to_bytes
from vald.errors import InputError, ValdError
from vald.render import overlay_figure, with_caution

OVERLAY_DCM = "overlay.dcm"
GENERATED_DCM = "counterfactual.dcm"
INDUCED_DCM = "induced.dcm"
SEGMENTATION_DCM = "segmentation.dcm"
REPORT_DCM = "report.dcm"
PMAP_DCM = "parametric-map.dcm"
COLOURS_DCM = "parametric-map-colours.dcm"  # the report's colours for the map (a presentation state)
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def derived_files(
    header: Any,
    input01: NDArray[np.float32],
    generated01: NDArray[np.float32],
    signed_map: NDArray[np.float32],
    vmax: float,
    prov: Provenance,
    *,
    segmentation: bool,
    seg_type: str = "binary",
    algorithm: Algorithm | None = None,
    parametric_map: bool = False,
) -> tuple[dict[str, bytes], dict[str, dict[str, str]]]:
    """Overlay SC, generated-image SC and (optionally) the map's Parametric Map and Segmentation, at native size.

    ``vmax`` is the input's colour limit: the overlay's colours and the SEG's fraction saturate there.
    With the Segmentation and an ``algorithm``, a TID 1500 Structured Report that refers to the SEG's region
    (and to the Parametric Map when there is one).

    A source header that cannot carry derived objects (missing or damaged UIDs) is an InputError naming
    the problem, not the value.
    """
    missing = [name for name in REQUIRED if not str(header.get(name, "") or "")]
    if missing:
        raise InputError(f"derived DICOM objects need {', '.join(missing)}, which the source lacks; use --no-dicom-out")
    try:
        figure = np.asarray(overlay_figure(input01, signed_map, vmax).convert("RGB"), dtype=np.uint8)
        grey = Image.fromarray((np.clip(generated01, 0.0, 1.0) * 65535 + 0.5).astype(np.uint16))
        grey16 = np.asarray(with_caution(grey), dtype=np.uint16)
        with quiet_dicom():
            objects = {OVERLAY_DCM: overlay_sc(header, figure, prov)}
            objects[INDUCED_DCM if prov.task == "induction" else GENERATED_DCM] = grey_sc(header, grey16, prov)
            pmap = attribution_pmap(header, signed_map, vmax, prov) if parametric_map else None
            if pmap is not None:
                objects[PMAP_DCM] = pmap
                objects[COLOURS_DCM] = map_colours(header, pmap, vmax, prov)
            if segmentation:
                seg = objects[SEGMENTATION_DCM] = attribution_seg(header, signed_map, vmax, prov, seg_type)
                if algorithm is not None:
                    region = binary_region(signed_map, vmax)
                    objects[REPORT_DCM] = attribution_sr(header, seg, region, algorithm, prov, pmap)
            files = {name: to_bytes(ds) for name, ds in objects.items()}
        uids = {
            name: {"series_instance_uid": str(ds.SeriesInstanceUID), "sop_instance_uid": str(ds.SOPInstanceUID)}
            for name, ds in objects.items()
        }
        return files, uids
    except ValdError:
        raise
    except Exception as exc:  # a damaged header value highdicom refuses; its message may quote the value
        raise InputError(
            f"derived DICOM objects cannot be built from this header ({type(exc).__name__}); use --no-dicom-out"
        ) from None

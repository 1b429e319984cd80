"""The Structured Report of one result: TID 1500 Measurement Report naming the algorithm and its region.

One Comprehensive 3D SR per input (highdicom's SR classes): the observer is the vald device; one planar
measurement group (TID 1410) refers to segment 1 of the result's Segmentation on the source image, with
the algorithm's identification (TID 4019: name "vald", version, and as parameters the engine set's and the
settings' sha256, the seed, the backend and the precision actually used), the region's area (when the
source has a pixel spacing), the result's Parametric Map (when written) as the group's "Illustration of ROI"
(DCM 121200: the signed map the region was drawn from), and a "not for diagnostic use" comment.  Everything
else about the result stays in the SEG, the Secondary Captures and result.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.dicom.writer import (
    MANUFACTURER,
    NOT_FOR_DIAGNOSIS,
    SERIES,
    Provenance,
    _source_copy,
    _uids,
    pixel_measures,
)

SR_TITLE = "vald attribution report"


@dataclass(frozen=True, kw_only=True)
class Algorithm:
    """What the SR says made the region (TID 4019 Algorithm Identification)."""

    version: str
    engines_sha256: str
    settings_sha256: str
    seed: int
    backend: str
    precision: str

    def parameters(self) -> list[str]:
        """The Algorithm Parameters, as text items."""
        return [
            f"engine set sha256 {self.engines_sha256}",
            f"settings sha256 {self.settings_sha256}",
            f"seed {self.seed}",
            f"backend {self.backend}",
            f"precision {self.precision}",
            NOT_FOR_DIAGNOSIS.lower(),
        ]


def attribution_sr(
    header: Any, seg: Any, region: NDArray[np.bool_], algorithm: Algorithm, prov: Provenance, pmap: Any = None
) -> Any:
    """TID 1500 report for ``seg`` (the result's Segmentation, segment 1 = ``region`` on the source's matrix).

    ``pmap``: the result's Parametric Map, referred to from the group and listed as evidence, or None.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    kind = prov.kind("report")
    series_uid, sop_uid = _uids(header, kind, prov)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=series_uid, name="vald", manufacturer_name=MANUFACTURER, model_name=f"vald {algorithm.version}"
        ),
    )
    source = hd.sr.SourceImageForSegmentation(str(header.SOPClassUID), str(header.SOPInstanceUID))
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        frame_number=1,
        segment_number=1,
        source_image=source,
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=sop_uid + ".1",
            identifier="vald attribution region" if prov.task != "induction" else "vald induced change region",
        ),
        referenced_segment=segment,
        finding_type=codes.DCM.VisualExplanation,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name="vald", version=algorithm.version, parameters=algorithm.parameters()
        ),
        measurements=_measurements(header, region),
    )
    if pmap is not None:
        _illustration(group, pmap)
    _comment(group, f"{NOT_FOR_DIAGNOSIS}: research output of vald {algorithm.version}")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport,
    )
    ds = hd.sr.Comprehensive3DSR(
        evidence=[_source_copy(header), seg, *([pmap] if pmap is not None else [])],
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SERIES[kind][0],
        sop_instance_uid=sop_uid,
        instance_number=int(header.get("InstanceNumber", 1) or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} - {SERIES[kind][1]}"[:64]
    _segment_only(ds)
    return ds


def _segment_only(node: Any) -> None:
    """Refer to the SEG's segment alone: PS3.3 forbids a Referenced Segment Number beside a frame number.

    highdicom's planar group takes only a segmentation *frame*; the SEG has one frame, so the segment says it.
    """
    for item in node.get("ContentSequence", []):
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref and "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
        _segment_only(item)


def _measurements(header: Any, region: NDArray[np.bool_]) -> list[Any]:
    """The region's area in mm² when the source has a pixel spacing (see ``pixel_measures``), else nothing."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    measures = pixel_measures(header)
    if measures is None:
        return []
    dy, dx = (float(v) for v in measures[0].PixelSpacing)
    area = float(region.sum()) * dy * dx
    return [hd.sr.Measurement(name=codes.SCT.Area, value=area, unit=codes.UCUM.SquareMillimeter)]


def _illustration(group: Any, pmap: Any) -> None:
    """The Parametric Map as the group's Illustration of ROI (an IMAGE item, frame 1 of the map)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    item = hd.sr.ImageContentItem(
        name=codes.DCM.IllustrationOfROI,
        referenced_sop_class_uid=str(pmap.SOPClassUID),
        referenced_sop_instance_uid=str(pmap.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group[0].ContentSequence.append(item)


def _comment(group: Any, text: str) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    item = hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group[0].ContentSequence.append(item)

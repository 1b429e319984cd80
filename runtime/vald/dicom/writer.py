"""Derived DICOM objects: RGB overlay and counterfactual Secondary Captures, a Segmentation of |M|.

Every object keeps the study (and patient) of its source, gets its own series and instance, refers to
its source (Referenced and Source Image Sequence), has a Series Description beginning "Not for
diagnostic use" and names vald, its version and the model hash under Contributing Equipment.

UIDs are derived (``2.25.`` + a hash) from the source's UIDs, the output kind, the settings and the
model: a re-run with the same settings writes the same UIDs, so a PACS does not get duplicates.

The Segmentation is BINARY by default: the region where |M| reaches ``SEG_THRESHOLD`` of the input's
colour limit (the value the overlay saturates at), which viewers such as OHIF show; FRACTIONAL (|M| scaled
to 0..1 by the colour limit) stays available for viewers that show fractional segmentations (Weasis,
3D Slicer; OHIF does not).  Its Pixel Measures Sequence carries the source's Pixel Spacing, else its Imager
Pixel Spacing (the detector plane, as the source's own measurements use it), else its Nominal Scanned Pixel
Spacing; a source with none of them gets no Pixel Measures (nothing is invented).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import check_seg_type
from vald.errors import ValdError
from vald.render import CAUTION

# Output kind -> (Series Number, what follows "Not for diagnostic use - " in the Series Description).
SERIES: dict[str, tuple[int, str]] = {
    "overlay": (9101, "vald attribution overlay"),
    "counterfactual": (9102, "vald normal counterfactual"),
    "segmentation": (9103, "vald attribution region (SEG)"),
    "report": (9104, "vald attribution report (SR)"),
    "parametric-map": (9105, "vald signed attribution map (PMAP)"),
    "map-colours": (9106, "vald map colours (pseudo-colour PR)"),
    "induced-overlay": (9111, "vald induced change overlay"),
    "induced": (9112, "vald induced finding (synthetic)"),
    "induced-segmentation": (9113, "vald induced change (SEG)"),
    "induced-report": (9114, "vald induced change report (SR)"),
    "induced-parametric-map": (9115, "vald signed induced change map (PMAP)"),
    "induced-map-colours": (9116, "vald induced map colours (pseudo-colour PR)"),
}
NOT_FOR_DIAGNOSIS = "Not for diagnostic use"
SEG_THRESHOLD = 0.5  # BINARY SEG: |M| >= this fraction of the colour limit (the overlay's saturation value)


def binary_region(signed_map: NDArray[np.float32], vmax: float) -> NDArray[np.bool_]:
    """The BINARY SEG's region (and the SR's): |M| >= ``SEG_THRESHOLD`` x the colour limit ``vmax``."""
    region: NDArray[np.bool_] = np.abs(signed_map) >= SEG_THRESHOLD * vmax
    return region


MANUFACTURER = "vald"


@dataclass(frozen=True)
class Provenance:
    """What made the derived objects: it enters their UIDs and their Contributing Equipment."""

    settings_sha256: str
    model_sha256: str
    version: str
    task: str  # "attribution" or "induction"

    def kind(self, base: str) -> str:
        """The output kind for this task ("overlay" -> "induced-overlay" for induction)."""
        if self.task != "induction":
            return base
        return "induced" if base == "counterfactual" else f"induced-{base}"


# Namespace of vald's name-based UUIDs (itself uuid5 of the URL namespace and "vald derived DICOM").
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "vald derived DICOM")


def derived_uid(*parts: str) -> str:
    """A deterministic UID from ``parts``: ``2.25.`` + the integer of their name-based UUID (PS3.5 B.2).

    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random.)
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


# Type 2 patient/study attributes highdicom copies from the source: present but empty when the source lacks them
# (de-identified files often do).
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _source_copy(header: Any, drop: tuple[str, ...] = ()) -> Any:
    """A copy of the source header for highdicom: empty Type 2 attributes where missing, ``drop`` removed.

    The copy has its own element dictionary: pydicom's ``Dataset.copy`` shares it, so removing ``drop``
    from that copy once removed the source's own spacing too (elements themselves are not changed).
    """
    source = header.copy()
    source._dict = dict(header._dict)
    for name in TYPE2_COPIED:
        if name not in source:
            setattr(source, name, None)
    for name in drop:
        if name in source:
            delattr(source, name)
    return source


def _positive(spacing: Any) -> bool:
    """A usable spacing: two numbers, both above zero (some sources carry zeros)."""
    try:
        return spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing)
    except (TypeError, ValueError):
        return False


def _uids(header: Any, kind: str, prov: Provenance) -> tuple[str, str]:
    series = derived_uid(str(header.SeriesInstanceUID), kind, prov.settings_sha256, prov.model_sha256)
    sop = derived_uid(str(header.SOPInstanceUID), kind, prov.settings_sha256, prov.model_sha256)
    return series, sop


def identity(header: Any, kind: str, prov: Provenance) -> dict[str, Any]:
    """The series, instance and equipment arguments highdicom's SEG, PMAP and presentation state classes take."""
    series_uid, sop_uid = _uids(header, kind, prov)
    return {
        "series_instance_uid": series_uid,
        "series_number": SERIES[kind][0],
        "sop_instance_uid": sop_uid,
        "instance_number": int(header.get("InstanceNumber", 1) or 1),
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": f"vald model sha256 {prov.model_sha256[:16]}",
        "software_versions": prov.version,
        "device_serial_number": "none",
    }


def _equipment(prov: Provenance) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"vald model sha256 {prov.model_sha256[:16]}",
        software_versions=prov.version,
        contribution_description=(
            f"{NOT_FOR_DIAGNOSIS}. vald {prov.version} {prov.task} by latent diffusion; "
            f"model sha256 {prov.model_sha256}; settings sha256 {prov.settings_sha256}"
        ),
    )


def _reference(header: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _conditional(ds: Any, header: Any, *, image: bool) -> None:
    """Body part and Type 2C attributes of a projection image, from the source; never invented.

    Body Part Examined is copied, so that a validator can tell a paired body part from an unpaired one.
    Laterality (General Series) is copied when the source has one; a Secondary Capture (``image``) of a
    source that names neither its body part nor its laterality gets it empty ("unknown", as the standard
    allows), while the Segmentation leaves it out (its condition does not apply).  Patient Orientation
    (General Image: no Image Orientation (Patient) in a radiograph) is the source's, or empty.
    """
    if header.get("BodyPartExamined", None):
        ds.BodyPartExamined = header.BodyPartExamined
    if header.get("Laterality", None):
        ds.Laterality = header.Laterality
    elif image and not header.get("BodyPartExamined", None):
        ds.Laterality = None
    ds.PatientOrientation = header.get("PatientOrientation", None) or None


# Copied from the source onto the captures, which are on its pixel matrix: calibrated distances, the study's name.
SC_COPIED = ("PixelSpacing", "PixelSpacingCalibrationType", "NominalScannedPixelSpacing", "StudyDescription")


def _label(ds: Any, header: Any, kind: str, prov: Provenance, *, image: bool = True) -> None:
    """The attributes every derived object carries besides what highdicom sets (``image``: not the SEG)."""
    _conditional(ds, header, image=image)
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} - {SERIES[kind][1]}"[:64]
    ds.ReferencedImageSequence = [_reference(header)]
    ds.SourceImageSequence = [_reference(header)]
    ds.DerivationDescription = f"{SERIES[kind][1]}; {NOT_FOR_DIAGNOSIS.lower()}; vald {prov.version}"
    ds.ImageComments = f"{CAUTION}. model sha256 {prov.model_sha256[:16]}, settings sha256 {prov.settings_sha256[:16]}"


def _secondary_capture(header: Any, pixels: NDArray[Any], photometric: str, kind: str, prov: Provenance) -> Any:
    import highdicom as hd

    series_uid, sop_uid = _uids(header, kind, prov)
    ds = hd.sc.SCImage.from_ref_dataset(
        _source_copy(header),
        pixels,
        photometric,
        8 if pixels.dtype == np.uint8 else 16,
        "PATIENT",
        series_uid,
        SERIES[kind][0],
        sop_uid,
        int(header.get("InstanceNumber", 1) or 1),
        MANUFACTURER,
        patient_orientation=("L", "F"),  # placeholder, replaced by the source's own value just below
        contributing_equipment=[_equipment(prov)],
    )
    # Patient Orientation: the source's, or empty rather than invented (set by _label)
    if pixels.shape[:2] != (int(header.Rows), int(header.Columns)):
        raise ValdError("a secondary capture must be on its source's pixel matrix")
    for name in SC_COPIED:
        value = header.get(name, None)
        if value and (not name.endswith("Spacing") or _positive(value)):
            setattr(ds, name, value)
    if "PixelSpacing" not in ds and _positive(header.get("ImagerPixelSpacing", None)):
        # the detector-plane spacing, as the source's own measurements use it (not corrected for magnification)
        ds.PixelSpacing = header.ImagerPixelSpacing
    if "PixelSpacing" not in ds and "PixelSpacingCalibrationType" in ds:
        del ds.PixelSpacingCalibrationType
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    _label(ds, header, kind, prov)
    return ds


def overlay_sc(header: Any, figure_rgb: NDArray[np.uint8], prov: Provenance) -> Any:
    """RGB Secondary Capture of the heat-map figure (overlay, colour bar, caution line burned in)."""
    if figure_rgb.ndim != 3 or figure_rgb.shape[2] != 3 or figure_rgb.dtype != np.uint8:
        raise ValdError("the overlay figure must be an RGB uint8 array")
    return _secondary_capture(header, np.ascontiguousarray(figure_rgb), "RGB", prov.kind("overlay"), prov)


def grey_sc(header: Any, figure16: NDArray[np.uint16], prov: Provenance) -> Any:
    """16-bit MONOCHROME2 Secondary Capture of the generated image (caution line burned in)."""
    ds = _secondary_capture(header, np.ascontiguousarray(figure16), "MONOCHROME2", prov.kind("counterfactual"), prov)
    ds.WindowCenter, ds.WindowWidth = 32768, 65536
    return ds


def pixel_measures(header: Any) -> Any:
    """The SEG's Pixel Measures Sequence from the source's spacing (see the module docstring), or None."""
    import highdicom as hd

    for name in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = header.get(name, None)
        if _positive(value):
            return hd.PixelMeasuresSequence([float(v) for v in value], None)  # a projection: no slice thickness
    return None


def attribution_seg(
    header: Any, signed_map: NDArray[np.float32], vmax: float, prov: Provenance, seg_type: str = "binary"
) -> Any:
    """Segmentation of the map on the source's matrix: BINARY |M| >= SEG_THRESHOLD·``vmax``, or FRACTIONAL |M|/``vmax``.

    The source's spacing attributes are left out of the copy handed to highdicom (it would look for a
    slice thickness a projection radiograph does not have); the spacing goes into the Pixel Measures
    Sequence instead (:func:`pixel_measures`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if signed_map.shape != (int(header.Rows), int(header.Columns)):
        raise ValdError("the attribution map must be on the source's pixel matrix")
    check_seg_type(seg_type)
    source = _source_copy(header, drop=("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"))
    kind = prov.kind("segmentation")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="vald", family=codes.cid7162.ArtificialIntelligence, version=prov.version
    )
    label = "attribution" if prov.task != "induction" else "induced change"
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"{label} |M|" if seg_type == "fractional" else f"{label} region",
        # CID 217 "Visual Explanation": what the map is (a saliency map), not a lesion it would claim to find
        segmented_property_category=codes.DCM.VisualExplanation,
        segmented_property_type=codes.DCM.Saliency,
        algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm,
    )
    if seg_type == "binary":
        pixels: NDArray[Any] = binary_region(signed_map, vmax)
        extra: dict[str, Any] = {}
        what = f"|M| >= {SEG_THRESHOLD:g} x the colour limit {vmax:.4g}"
    else:
        pixels = np.clip(np.abs(signed_map) / vmax, 0.0, 1.0).astype(np.float32)
        extra = {"fractional_type": "PROBABILITY", "max_fractional_value": 255}
        what = f"|M| / the colour limit {vmax:.4g}, clipped to 1"
    ds = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=seg_type.upper(),
        segment_descriptions=[segment],
        **identity(header, kind, prov),
        content_description=f"{NOT_FOR_DIAGNOSIS}: {what}"[:64],
        contributing_equipment=[_equipment(prov)],
        omit_empty_frames=False,
        pixel_measures=pixel_measures(header),
        **extra,
    )
    _label(ds, header, kind, prov, image=False)
    ds.DerivationDescription = f"{ds.DerivationDescription}; {seg_type} segmentation: {what}"[:1024]
    if "FrameOfReferenceUID" not in header:
        _image_axes_orientation(ds)
    return ds


def _image_axes_orientation(ds: Any) -> None:
    """State the source's own pixel axes as the SEG's plane orientation (a projection radiograph has none).

    OHIF's SEG loader (cornerstone adapters, 3.13) compares the SEG's Plane Orientation with the image plane
    it assumes for a source without one, rows along (1, 0, 0) and columns along (0, 1, 0), and refuses the
    SEG without it.  The values mean "the source's pixel grid", not a geometry in patient coordinates; no
    position is written.
    """
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [item]


def to_bytes(ds: Any) -> bytes:
    """The object as a DICOM Part 10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

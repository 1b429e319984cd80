"""Derived DICOM objects, read back with pydicom and highdicom: references, UIDs, captions, no PHI leaks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
from dicomfiles import PATIENT, dataset, ramp, save  # noqa: E402

from vald import __version__  # noqa: E402
from vald.cli import main  # noqa: E402
from vald.render import MAX_ALPHA  # noqa: E402

FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    v = ramp(rows=120, cols=100, bits=12)
    ds = dataset(4095 - v, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096, uid_seed=7)
    return save(ds, tmp_path_factory.mktemp("dcm") / "Doe^Jane_PID-778899.dcm")


def _run(engines: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    return main(["run", *map(str, inputs), "--engines", str(engines), "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def outputs(engines: Path, source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert _run(engines, [source], out) == 0  # PMAP, SEG and SR are written by default
    src = pydicom.dcmread(source)
    folder = out / hashlib.sha256(src.SOPInstanceUID.encode()).hexdigest()[:16]
    assert folder.is_dir()
    return folder


def _common_checks(ds, src) -> None:
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.PatientID == src.PatientID  # same patient and study: the objects file beside the source
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.SeriesDescription.startswith("Not for diagnostic use")
    for seq in (ds.ReferencedImageSequence, ds.SourceImageSequence):
        assert seq[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert seq[0].ReferencedSOPClassUID == src.SOPClassUID
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "vald" and __version__ in str(equipment.SoftwareVersions)
    assert "model sha256" in equipment.ManufacturerModelName
    assert "not for diagnostic use" in ds.ImageComments.lower()


def test_overlay_and_counterfactual_secondary_captures(outputs: Path, source: Path) -> None:
    src = pydicom.dcmread(source)
    result = json.loads((outputs / "result.json").read_text())
    overlay = pydicom.dcmread(outputs / "overlay.dcm")
    _common_checks(overlay, src)
    assert overlay.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert overlay.PhotometricInterpretation == "RGB" and overlay.SamplesPerPixel == 3
    assert overlay.BurnedInAnnotation == "YES" and list(overlay.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    rgb = overlay.pixel_array
    # on the source's own matrix (a viewer can link it with its source), calibrated with the source's spacing
    assert rgb.shape == (src.Rows, src.Columns, 3)
    band = max(16, src.Rows // 40)
    assert rgb[src.Rows - band :, :, 0].max() > 200  # the caution line is burned in (yellow text on black)
    assert [float(v) for v in overlay.PixelSpacing] == [float(v) for v in src.ImagerPixelSpacing]
    cf = pydicom.dcmread(outputs / "counterfactual.dcm")
    _common_checks(cf, src)
    assert cf.PhotometricInterpretation == "MONOCHROME2" and cf.BitsAllocated == 16
    assert (cf.Rows, cf.Columns) == (src.Rows, src.Columns)
    png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(outputs / "counterfactual.png"))
    np.testing.assert_array_equal(cf.pixel_array[: src.Rows - band], png[: src.Rows - band])  # above the band
    assert overlay.SeriesInstanceUID != cf.SeriesInstanceUID
    assert result["dicom_outputs"]["overlay.dcm"]["sop_instance_uid"] == overlay.SOPInstanceUID
    # highdicom reads them back as images
    for name, ds in (("overlay.dcm", overlay), ("counterfactual.dcm", cf)):
        image = hd.imread(outputs / name)
        assert image.SOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_array_equal(image.get_frame(1), ds.pixel_array)


def _segment_codes(seg) -> None:
    segment = seg.SegmentSequence[0]  # coded as what it is: a saliency map (CID 217), not a lesion
    category, kind = segment.SegmentedPropertyCategoryCodeSequence[0], segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("DCM", "130401")  # Visual explanation
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("DCM", "130404")  # Saliency


def test_binary_segmentation_of_the_map_with_pixel_measures(outputs: Path, source: Path) -> None:
    src = pydicom.dcmread(source)
    # read with pydicom: highdicom 0.28.2's reader insists on a Slice Thickness in the Pixel Measures, which a
    # projection radiograph does not have (PS3.3 C.7.6.16.2.1 requires it only for volumes); none is invented
    seg = pydicom.dcmread(outputs / "segmentation.dcm")
    _common_checks(seg, src)
    _segment_codes(seg)
    assert seg.SegmentationType == "BINARY" and "SliceThickness" not in seg.SharedFunctionalGroupsSequence[0]
    # what OHIF's SEG loader needs on a projection radiograph: a Pixel Measures Sequence (the source has only
    # Imager Pixel Spacing, which it carries)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in src.ImagerPixelSpacing]
    pixels = seg.pixel_array
    assert (
        seg.PerFrameFunctionalGroupsSequence[0]
        .DerivationImageSequence[0]
        .SourceImageSequence[0]
        .ReferencedSOPInstanceUID
        == src.SOPInstanceUID
    )
    magnitude = np.abs(np.load(outputs / "attribution.npy"))
    result = json.loads((outputs / "result.json").read_text())
    limit = result["display"]["colour_limit"]
    assert result["dicom_segmentation"]["type"] == "binary"
    assert result["dicom_segmentation"]["threshold"] == pytest.approx(0.5 * limit)
    np.testing.assert_array_equal(pixels.astype(bool), magnitude >= 0.5 * limit)
    assert 0 < pixels.sum() < pixels.size


def _texts(node) -> list[str]:
    found = []
    for child in node.get("ContentSequence", []):
        for key in ("TextValue", "UID"):
            if key in child:
                found.append(str(child[key].value))
        found += _texts(child)
    return found


def _references(node) -> list:
    found = []
    for child in node.get("ContentSequence", []):
        found += list(child.get("ReferencedSOPSequence", [])) + _references(child)
    return found


def test_structured_report_names_the_algorithm_and_refers_to_the_segment(outputs: Path, source: Path) -> None:
    src = pydicom.dcmread(source)
    sr = hd.sr.srread(outputs / "report.dcm")
    seg = pydicom.dcmread(outputs / "segmentation.dcm")
    result = json.loads((outputs / "result.json").read_text())
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesDescription.startswith("Not for diagnostic use")
    assert result["dicom_outputs"]["report.dcm"]["sop_instance_uid"] == sr.SOPInstanceUID
    group = sr.content.get_planar_roi_measurement_groups()[0]
    refs = [r for r in _references(sr) if "ReferencedSegmentNumber" in r]
    assert len(refs) == 1
    item = refs[0]
    assert item.ReferencedSOPInstanceUID == seg.SOPInstanceUID and item.ReferencedSegmentNumber == 1
    assert "ReferencedFrameNumber" not in item  # PS3.3: the segment alone
    text = " | ".join(_texts(sr))
    for expected in (
        "vald",
        __version__,
        f"settings sha256 {result['settings_sha256']}",
        "seed 0",
        "backend onnxruntime",
        "precision fp32",
        "not for diagnostic use",
    ):
        assert expected in text, expected
    area = group.get_measurements()[0]
    spacing = [float(v) for v in src.ImagerPixelSpacing]
    region = np.abs(np.load(outputs / "attribution.npy")) >= 0.5 * result["display"]["colour_limit"]
    assert area.value == pytest.approx(region.sum() * spacing[0] * spacing[1])
    evidence = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for s_ in sr.CurrentRequestedProcedureEvidenceSequence
        for item in s_.ReferencedSeriesSequence
    }
    assert {src.SOPInstanceUID, seg.SOPInstanceUID} <= evidence


def test_fractional_segmentation_of_the_map(engines: Path, source: Path, tmp_path: Path) -> None:
    assert _run(engines, [source], tmp_path, "--segmentation", "--seg-type", "fractional") == 0
    src = pydicom.dcmread(source)
    outputs = tmp_path / hashlib.sha256(src.SOPInstanceUID.encode()).hexdigest()[:16]
    seg = pydicom.dcmread(outputs / "segmentation.dcm")  # pydicom: see the binary test for why not highdicom
    _common_checks(seg, src)
    _segment_codes(seg)
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
    pixels = seg.pixel_array / 255.0
    assert pixels.shape == (src.Rows, src.Columns) and pixels.min() >= 0.0 and pixels.max() <= 1.0
    magnitude = np.abs(np.load(outputs / "attribution.npy"))
    limit = json.loads((outputs / "result.json").read_text())["display"]["colour_limit"]
    assert limit == pytest.approx(float(np.percentile(magnitude, 99.5)), rel=1e-6)
    # one colour scale per input: the SEG's fraction and the heat map's opacity both saturate at the limit
    assert np.abs(pixels - np.clip(magnitude / limit, 0, 1)).max() <= 1 / 255 + 1e-6
    with Image.open(outputs / "heatmap.png") as img:
        alpha = np.asarray(img)[..., 3]
    assert (magnitude >= limit).any() and (alpha[magnitude >= limit] == round(MAX_ALPHA * 255)).all()
    assert (alpha[magnitude < 0.9 * limit] < round(MAX_ALPHA * 255)).all()


def test_no_patient_data_in_names_logs_or_non_dicom_outputs(
    engines: Path, source: Path, outputs: Path, tmp_path: Path, capfd
) -> None:
    out = outputs.parent
    assert (
        _run(engines, [source], tmp_path / "o", "--steps", "4", "--guidance-min-t", "0") == 0
    )  # not quiet: progress lines too
    captured = capfd.readouterr()
    tokens = [*PATIENT.values(), "Doe", "778899"]
    texts = [captured.out, captured.err]
    for folder in (out, tmp_path / "o"):
        for path in folder.rglob("*"):
            assert not any(t in str(path.relative_to(folder)) for t in tokens)
            if path.suffix in (".json", ".csv", ".html"):
                texts.append(path.read_text())
    for text in texts:
        assert not any(t in text for t in tokens), text[:200]


def test_uids_are_deterministic_and_depend_on_the_settings(
    engines: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def uids(out: Path) -> dict[str, str]:
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        return {name: pydicom.dcmread(folder / name).SOPInstanceUID for name in ("overlay.dcm", "counterfactual.dcm")}

    assert _run(engines, [source], tmp_path / "a") == 0
    assert _run(engines, [source], tmp_path / "b") == 0
    assert _run(engines, [source], tmp_path / "c", "--seed", "5", "--mode", "img2img") == 0
    first = uids(tmp_path / "a")
    assert first == uids(tmp_path / "b")
    assert set(first.values()).isdisjoint(uids(tmp_path / "c").values())
    assert all(uid.startswith("2.25.") for uid in first.values())
    # another vald version may compute other pixels: it redoes the input and never reuses a UID
    import vald.app

    monkeypatch.setattr(vald.app, "__version__", "999.0")
    assert _run(engines, [source], tmp_path / "a") == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["counts"] == {"done": 1}
    assert set(first.values()).isdisjoint(uids(tmp_path / "a").values())


def test_no_dicom_out_and_png_inputs_write_no_dicom(
    engines: Path, source: Path, small_png: Path, tmp_path: Path
) -> None:
    assert _run(engines, [source, small_png], tmp_path, "--no-dicom-out") == 0
    assert not list(tmp_path.rglob("*.dcm"))


def test_induction_on_a_dicom_input(engines: Path, source: Path, tmp_path: Path) -> None:
    from PIL import Image

    mask = np.zeros((120, 100), np.uint8)
    mask[60:100, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["induce", str(source), "--mask", str(tmp_path / "mask.png"), "--prompt", "left lower zone nodule"]
    assert main([*args, "--engines", str(engines), "--out", str(tmp_path / "o"), *FAST]) == 0
    (folder,) = [p for p in (tmp_path / "o").iterdir() if p.is_dir()]
    induced = pydicom.dcmread(folder / "induced.dcm")
    assert induced.SeriesDescription.startswith("Not for diagnostic use") and "induced" in induced.SeriesDescription
    assert induced.StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID


def test_a_source_without_series_uid_fails_cleanly_and_the_batch_goes_on(
    engines: Path, source: Path, tmp_path: Path, capsys
) -> None:
    ds = pydicom.dcmread(source)
    del ds.SeriesInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.99.3"
    broken = save(ds, tmp_path / "in" / "a.dcm")
    code = _run(engines, [broken, source], tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 1 and "need SeriesInstanceUID" in err and "--no-dicom-out" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [e["status"] for e in summary["entries"]] == ["failed", "done"]
    assert _run(engines, [broken], tmp_path / "o2", "--no-dicom-out") == 0


def test_other_modalities_only_when_asked(engines: Path, tmp_path: Path, capsys) -> None:
    ct = save(dataset(ramp(rows=80, cols=80), modality="CT", uid_seed=11), tmp_path / "in" / "ct.dcm")
    assert _run(engines, [ct], tmp_path / "o") == 1
    assert "modality 'CT'" in capsys.readouterr().err
    assert _run(engines, [ct], tmp_path / "o", "--any-modality") == 0
    (folder,) = [p for p in (tmp_path / "o").iterdir() if p.is_dir()]
    result = json.loads((folder / "result.json").read_text())
    timings = result["timings_s"]
    assert result["input"]["dicom"]["modality"] == "CT" and timings["dicom_outputs"] > 0
    assert timings["total"] >= timings["dicom_outputs"] + timings["unet"]  # the total counts the DICOM objects


def test_parametric_map_holds_the_signed_map_on_the_source_matrix(outputs: Path, source: Path) -> None:
    src = pydicom.dcmread(source)
    pm = pydicom.dcmread(outputs / "parametric-map.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pm.StudyInstanceUID == src.StudyInstanceUID and pm.SeriesInstanceUID != src.SeriesInstanceUID
    assert pm.SeriesDescription.startswith("Not for diagnostic use") and pm.SeriesNumber == 9105
    assert pm.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert "not for diagnostic use" in pm.ImageComments.lower()
    # float pixels, exactly the map vald wrote as attribution.npy, with an identity real-world value mapping
    assert "FloatPixelData" in pm and pm.PixelPresentation == "MONOCHROME"
    np.testing.assert_array_equal(pm.pixel_array, np.load(outputs / "attribution.npy"))
    shared = pm.SharedFunctionalGroupsSequence[0]
    rwvm = shared.RealWorldValueMappingSequence[0]
    assert (float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)) == (1.0, 0.0)
    assert rwvm.LUTLabel == "M"
    # grey display saturates where the overlay's colours do: a window of twice the recorded colour limit
    limit = json.loads((outputs / "result.json").read_text())["display"]["colour_limit"]
    voi = shared.FrameVOILUTSequence[0]
    assert float(voi.WindowCenter) == 0.0 and float(voi.WindowWidth) == pytest.approx(2 * limit)
    assert voi.VOILUTFunction == "LINEAR_EXACT"
    # a CR/DX has no frame of reference: the map declares one of the source's pixel grid, spacing from the source
    assert "FrameOfReferenceUID" not in src and pm.FrameOfReferenceUID.startswith("2.25.")
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [
        float(v) for v in src.ImagerPixelSpacing
    ]
    assert "pixel grid" in pm.DerivationDescription
    # the SR names the map as its region's illustration and lists it as evidence
    sr = pydicom.dcmread(outputs / "report.dcm")
    refs = [
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    assert pm.SOPInstanceUID in refs
    assert pm.SOPInstanceUID in str(sr.ContentSequence)


def test_each_dicom_output_can_be_turned_off(engines: Path, source: Path, tmp_path: Path) -> None:
    assert _run(engines, [source], tmp_path, "--no-pmap", "--no-sr") == 0
    names = {p.name for p in tmp_path.rglob("*.dcm")}
    assert names == {"overlay.dcm", "counterfactual.dcm", "segmentation.dcm"}
    assert _run(engines, [source], tmp_path / "b", "--no-segmentation") == 0
    assert {p.name for p in (tmp_path / "b").rglob("*.dcm")} == {
        "overlay.dcm",
        "counterfactual.dcm",
        "parametric-map.dcm",
        "parametric-map-colours.dcm",
    }


def test_the_map_colours_presentation_state_shows_red_for_positive_and_blue_for_negative_m(
    outputs: Path,
) -> None:
    pr = pydicom.dcmread(outputs / "parametric-map-colours.dcm")
    pm = pydicom.dcmread(outputs / "parametric-map.dcm")
    assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.3"  # Pseudo-Color Softcopy Presentation State
    assert pr.StudyInstanceUID == pm.StudyInstanceUID and pr.SeriesDescription.startswith("Not for diagnostic use")
    ref = pr.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == pm.SeriesInstanceUID
    assert ref.ReferencedImageSequence[0].ReferencedSOPInstanceUID == pm.SOPInstanceUID
    # the pipeline a viewer applies: LINEAR_EXACT window -> palette index -> RGB (PS3.3 C.11.2.1.3.2, C.7.9)
    voi = pr.SoftcopyVOILUTSequence[0]
    limit = json.loads((outputs / "result.json").read_text())["display"]["colour_limit"]
    assert float(voi.WindowCenter) == 0.0 and float(voi.WindowWidth) == pytest.approx(2 * limit)
    entries = int(pr.RedPaletteColorLookupTableDescriptor[0])
    lut = {c: np.frombuffer(pr[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")}
    m = np.array([-2 * limit, -limit, 0.0, limit, 2 * limit])
    index = np.clip(np.rint((m / (2 * limit) + 0.5) * (entries - 1)), 0, entries - 1).astype(int)
    red, green, blue = (lut[c][index].astype(int) for c in ("Red", "Green", "Blue"))
    assert all(blue[:2] > 3 * red[:2]) and all(red[3:] > 3 * blue[3:])  # blue below 0, red above
    assert min(red[2], green[2], blue[2]) > 60000  # white at M = 0

"""Reading CR/DX radiographs: the grey-level pipeline, compressed syntaxes, and clean, PHI-free errors."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from dicomfiles import PATIENT, dataset, jpeg_baseline, ramp, save, to_bytes, voi_lut  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from vald.dicom.pixels import window  # noqa: E402
from vald.dicom.reader import read_dicom  # noqa: E402
from vald.errors import InputError  # noqa: E402
from vald.sources import load  # noqa: E402

PHI = (*PATIENT.values(), "Doe", "Jane")


def _clean(message: str) -> None:
    assert not any(token in message for token in PHI), message


def _read(ds, tmp_path: Path, name: str = "x.dcm", **kw):
    return read_dicom(save(ds, tmp_path / name), **kw)


# ---------------------------------------------------------------- grey-level pipeline


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_windows_match_pydicom(function: str) -> None:
    from pydicom.pixels.processing import apply_windowing

    values = ramp(bits=12).astype(np.float64)
    ds = dataset(ramp(bits=12), WindowCenter=1500, WindowWidth=1800, VOILUTFunction=function)
    theirs = apply_windowing(values, ds) / 4095.0  # pydicom maps onto the stored range
    ours = window(values, 1500.0, 1800.0, function)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_monochrome1_is_inverted_after_windowing(tmp_path: Path) -> None:
    v = ramp(bits=12)
    mono2 = _read(dataset(v, WindowCenter=2000, WindowWidth=3000, VOILUTFunction="LINEAR_EXACT"), tmp_path, "a.dcm")
    mono1 = _read(
        dataset(
            4095 - v,
            photometric="MONOCHROME1",
            WindowCenter=4095 - 2000,
            WindowWidth=3000,
            VOILUTFunction="LINEAR_EXACT",
            PresentationLUTShape="INVERSE",  # restates MONOCHROME1 in DX: must not invert a second time
        ),
        tmp_path,
        "b.dcm",
    )
    assert mono1.display.inverted and not mono2.display.inverted
    np.testing.assert_allclose(mono1.image, mono2.image, atol=1e-6)
    # bright is bright: the highest stored MONOCHROME2 value is the brightest displayed pixel
    assert mono2.image.flat[np.argmax(v)] == mono2.image.max()


def test_rescale_slope_intercept_applies_before_the_window(tmp_path: Path) -> None:
    v = ramp(bits=12)
    plain = _read(dataset(v, WindowCenter=2000, WindowWidth=3000), tmp_path, "a.dcm")
    # modality values = 2 * stored - 1000: the same window in modality units gives the same picture
    scaled = _read(
        dataset(v, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2 * 2000 - 1000 + 0.5, WindowWidth=5999),
        tmp_path,
        "b.dcm",
    )
    assert "slope 2" in scaled.display.modality_lut
    np.testing.assert_allclose(scaled.image, plain.image, atol=1e-3)


def test_signed_pixels_with_intercept(tmp_path: Path) -> None:
    v = ramp(bits=12).astype(np.int32) - 2048
    img = _read(dataset(v, signed=True, RescaleIntercept=2048, RescaleSlope=1), tmp_path).image
    assert img.min() == 0.0 and img.max() == 1.0  # no window: the image's own range
    np.testing.assert_allclose(img, (v - v.min()) / (v.max() - v.min()), atol=1e-6)


def test_voi_lut_is_preferred_to_the_window(tmp_path: Path) -> None:
    v = ramp(bits=12)
    ds = dataset(v, WindowCenter=100, WindowWidth=10, VOILUTSequence=[voi_lut(0, 4096, 16, gamma=0.5)])
    got = _read(ds, tmp_path)
    assert got.display.voi.startswith("VOI LUT") and got.display.windows_offered == 2
    expected = np.round((np.linspace(0, 1, 4096) ** 0.5) * 65535)[v] / 65535
    np.testing.assert_allclose(got.image, expected, atol=1e-6)


def test_several_windows_take_the_first(tmp_path: Path) -> None:
    v = ramp(bits=12)
    got = _read(dataset(v, WindowCenter=[2000, 500], WindowWidth=[3000, 400]), tmp_path)
    assert got.display.window == (2000.0, 3000.0) and got.display.windows_offered == 2


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_bits_stored_8_to_16(tmp_path: Path, bits: int) -> None:
    v = ramp(bits=bits)
    got = _read(dataset(v, bits_stored=bits), tmp_path)
    assert got.info["bits_stored"] == bits and got.image.dtype == np.float32
    np.testing.assert_allclose(got.image, (v - v.min()) / float(v.max() - v.min()), atol=1e-6)


def test_spacing_is_recorded(tmp_path: Path) -> None:
    got = _read(dataset(ramp(), PixelSpacing=[0.14, 0.14]), tmp_path)
    spacing = got.info["spacing"]
    assert spacing["ImagerPixelSpacing"] == [0.15, 0.15] and spacing["PixelSpacing"] == [0.14, 0.14]


# ---------------------------------------------------------------- the real chest CR and compressed syntaxes


def test_real_chest_cr_and_its_jpeg2000_versions() -> None:
    unc = read_dicom(Path(get_testdata_file("RG1_UNCR.dcm")))
    assert unc.image.shape == (1955, 1841) and unc.display.inverted and unc.info["modality"] == "CR"
    assert unc.display.window == (15000.0, 30000.0)
    # lungs (dark as displayed) are darker than the mediastinum below the neck
    assert unc.image[700:1100, 300:700].mean() < unc.image[700:1100, 850:1000].mean()
    lossless = read_dicom(Path(get_testdata_file("RG1_J2KR.dcm")))
    assert "JPEG 2000" in lossless.info["transfer_syntax"]
    np.testing.assert_array_equal(lossless.image, unc.image)
    lossy = read_dicom(Path(get_testdata_file("RG1_J2KI.dcm")))
    assert np.abs(lossy.image - unc.image).mean() < 0.01


def _compressed(tmp_path: Path, syntax, name: str) -> tuple[np.ndarray, np.ndarray]:
    v = ramp(bits=12)
    plain = _read(dataset(v), tmp_path, f"{name}-plain.dcm").image
    ds = dataset(v)
    ds.compress(syntax)
    return plain, _read(ds, tmp_path, f"{name}.dcm").image


@pytest.mark.parametrize("name", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_lossless_syntaxes_written_by_the_test(tmp_path: Path, name: str) -> None:
    import pydicom.uid

    syntax = getattr(pydicom.uid, name)
    from pydicom.pixels import get_encoder

    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {name} installed")
    plain, got = _compressed(tmp_path, syntax, name)
    np.testing.assert_array_equal(got, plain)


def test_jpeg_baseline(tmp_path: Path) -> None:
    v8 = (ramp(bits=12) >> 4).astype(np.uint8)
    got = _read(jpeg_baseline(v8), tmp_path).image
    assert np.abs(got - v8 / 255.0).mean() < 0.02  # lossy


@pytest.mark.parametrize("name", ["JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG-LL.dcm"])
def test_jpeg_lossless_from_pydicom_data(name: str) -> None:
    from pydicom.pixels import get_decoder

    path = Path(get_testdata_file(name))
    if not get_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("no JPEG Lossless decoder (python-gdcm) installed")
    got = read_dicom(path, modalities=None)
    assert "JPEG Lossless" in got.info["transfer_syntax"] and np.isfinite(got.image).all()
    assert 0.0 <= got.image.min() < got.image.max() <= 1.0


def test_missing_decoder_names_the_syntax_and_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(InputError) as err:
        read_dicom(Path(get_testdata_file("RG1_J2KR.dcm")))
    message = str(err.value)
    assert "JPEG 2000" in message and "1.2.840.10008.1.2.4.90" in message and "pylibjpeg-openjpeg" in message


# ---------------------------------------------------------------- bad inputs


def _error(tmp_path: Path, data: bytes, name: str = "Doe^Jane.dcm", **kw) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        load(path, **kw)
    message = str(err.value)
    _clean(message)
    assert "Doe" not in message and str(tmp_path) not in message
    return message


def test_bad_inputs_are_clean_errors(tmp_path: Path) -> None:
    good = dataset(ramp())
    assert "not a DICOM file" in _error(tmp_path, b"Patient Doe^Jane\n" * 20)
    no_pixels = dataset(ramp())
    del no_pixels.PixelData
    assert "no pixel data" in _error(tmp_path, to_bytes(no_pixels))
    multi = dataset(np.concatenate([ramp(), ramp()]), NumberOfFrames=2, Rows=96)
    assert "multi-frame" in _error(tmp_path, to_bytes(multi))
    colour = dataset(ramp(), SamplesPerPixel=3, PhotometricInterpretation="RGB")
    assert "colour" in _error(tmp_path, to_bytes(colour))
    assert "modality 'CT'" in _error(tmp_path, to_bytes(dataset(ramp(), modality="CT")))
    assert "--any-modality" in _error(tmp_path, to_bytes(dataset(ramp(), modality="MR")))
    huge = dataset(ramp(), Rows=40000)
    assert "outside the supported" in _error(tmp_path, to_bytes(huge))
    tiny = dataset(ramp(rows=8, cols=8))
    assert "outside the supported" in _error(tmp_path, to_bytes(tiny))
    assert "Bits Stored is 32" in _error(tmp_path, to_bytes(dataset(ramp(), bits_stored=32)))
    data = to_bytes(good)
    assert "truncated" in _error(tmp_path, data[: len(data) - 3000])
    assert "no pixel data (truncated" in _error(tmp_path, data[:300])
    assert "truncated or corrupt" in _error(tmp_path, data[:700])


def test_colour_and_multiframe_files_from_pydicom_data() -> None:
    with pytest.raises(InputError, match="colour"):
        read_dicom(Path(get_testdata_file("SC_rgb.dcm")), modalities=None)
    ct = read_dicom(Path(get_testdata_file("CT_small.dcm")), modalities=None)  # any modality, when asked
    assert ct.info["modality"] == "CT" and ct.image.shape == (128, 128)


def test_reading_logs_and_warns_nothing_identifying(tmp_path: Path, caplog, recwarn) -> None:
    ds = dataset(ramp(), ReferringPhysicianName="Doe")  # a one-part name: pydicom would warn, quoting it
    caplog.set_level(logging.DEBUG)
    read_dicom(save(ds, tmp_path / "x.dcm"))
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    _clean(text)


def test_fuzz_truncated_and_bit_flipped_files_give_only_input_errors(tmp_path: Path) -> None:
    """Damaged copies of an uncompressed and an RLE file: each read succeeds or raises InputError, nothing else."""
    plain = to_bytes(dataset(ramp(rows=72, cols=64)))
    rle = dataset(ramp(rows=72, cols=64))
    rle.compress(pydicom.uid.RLELossless)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "InputError": 0}
    path = tmp_path / "fuzz.dcm"
    for base in (plain, to_bytes(rle)):
        cases = [base[:cut] for cut in range(0, len(base), max(1, len(base) // 60))]
        for _ in range(150):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
            cases.append(bytes(data))
        for data in cases:
            path.write_bytes(data)
            try:
                read_dicom(path)
                outcomes["ok"] += 1
            except InputError as exc:
                _clean(str(exc))
                outcomes["InputError"] += 1
    assert outcomes["InputError"] > 50 and outcomes["ok"] > 10, outcomes


def test_dicom_without_the_extra_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(dataset(ramp()), tmp_path / "x.dcm")
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)  # as if vald[dicom] were not installed
    with pytest.raises(InputError, match=r"pip install 'vald\[dicom\]'"):
        load(path)


def test_decoder_versions_are_recorded() -> None:
    from vald.app import versions

    found = versions()
    assert found["pydicom"] and found["highdicom"] and found["pylibjpeg-openjpeg"] and found["python-gdcm"]

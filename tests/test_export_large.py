"""Export mechanics that real-size models hit, exercised on the tiny model with lowered thresholds.

An SD1.5-size UNet has 3.44 GB of FP32 weights: protobuf cannot serialise it, the checker must run
on the path, the weights go to one external-data file, and FP16 conversion runs without ONNX shape
inference (which also cannot take a model over 2 GiB).  The same branches are forced here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from vald.config import EXPORT_PRECISIONS, Precision
from vald.errors import ExportError
from vald.manifest import Manifest
from vald.spec import Component


@pytest.fixture(scope="module")
def external_engines(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vald_export.export import export_model

    out = tmp_path_factory.mktemp("ext") / "engines"
    export_model(tiny_model, out, external_data_threshold=1_000_000, log=lambda _: None)
    return out


def test_large_graphs_keep_their_weights_in_one_external_file(external_engines: Path, engines: Path) -> None:
    data = json.loads((external_engines / "manifest.json").read_text())
    unet = data["components"]["unet"]["precisions"]
    for precision in ("fp32", "fp16"):
        files = list(unet[precision]["files"])
        assert files == [f"{precision}/unet.onnx", f"{precision}/unet.onnx.data"]
        graph = onnx.load(str(external_engines / files[0]), load_external_data=False)
        external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, "no weights were moved to the external-data file"
        for t in external:
            assert {e.key: e.value for e in t.external_data}["location"] == "unet.onnx.data"
        onnx.checker.check_model(str(external_engines / files[0]))  # path-based, as for > 2 GiB
    # the external data is readable like its neighbours (onnx writes it 0600)
    modes = {(external_engines / f).stat().st_mode & 0o777 for p in ("fp32", "fp16") for f in unet[p]["files"]}
    assert modes == {(external_engines / "manifest.json").stat().st_mode & 0o777}
    # a component under the threshold (the text encoder: ~0.14 MB) stays one file
    assert list(data["components"]["text_encoder"]["precisions"]["fp32"]["files"]) == ["fp32/text_encoder.onnx"]
    # the runtime opens them and they compute what the inline export computes
    manifest = Manifest.load(external_engines)
    manifest.verify(Precision.FP16)
    from vald.sessions.ort import OrtSession

    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 16, 16), dtype=np.float32),
        "timestep": np.array([10.0, 500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    spec = manifest.specs[Component.UNET]
    inline = Manifest.load(engines)
    for precision in EXPORT_PRECISIONS:
        ext = OrtSession(manifest.graph_path(Component.UNET, precision), spec, ["CPUExecutionProvider"]).run(feeds)
        ref = OrtSession(inline.graph_path(Component.UNET, precision), spec, ["CPUExecutionProvider"]).run(feeds)
        assert np.abs(ext["out_sample"] - ref["out_sample"]).max() <= (1e-6 if precision is Precision.FP32 else 2e-2)


def test_fp16_conversion_without_shape_inference_keeps_resize_in_fp32(engines: Path, tmp_path: Path) -> None:
    """The SD-size failure: without shape inference, a float16 Resize was rejected by onnxruntime."""
    from vald.sessions.ort import OrtSession
    from vald_export.onnx_export import convert_fp16

    manifest = Manifest.load(engines)
    fp32 = manifest.graph_path(Component.UNET, Precision.FP32)
    assert any(n.op_type == "Resize" for n in onnx.load(str(fp32)).graph.node)
    files = convert_fp16(fp32, tmp_path / "unet.onnx", threshold=1)  # forces disable_shape_infer and external data
    assert [f.name for f in files] == ["unet.onnx", "unet.onnx.data"]
    half = onnx.load(str(files[0]), load_external_data=False)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    spec = manifest.specs[Component.UNET]
    session = OrtSession(files[0], spec, ["CPUExecutionProvider"])  # raised INVALID_GRAPH before the fix
    rng = np.random.default_rng(1)
    feeds = {
        "sample": rng.standard_normal((1, 4, 16, 16), dtype=np.float32),
        "timestep": np.array([300.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32), dtype=np.float32),
    }
    ref = OrtSession(fp32, spec, ["CPUExecutionProvider"]).run(feeds)["out_sample"]
    assert np.abs(session.run(feeds)["out_sample"] - ref).max() < 2e-2


def test_failed_export_removes_its_staging_folder_and_is_one_line(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vald_export.export as export_mod
    from vald.cli import main

    def boom(*_args: object, **_kwargs: object) -> list[Path]:
        raise ValueError("Failed to serialize proto\nsecond line of a library traceback")

    monkeypatch.setattr(export_mod, "convert_fp16", boom)
    out = tmp_path / "engines"
    with pytest.raises(ExportError, match="while converting text_encoder to FP16: ValueError: Failed to serialize"):
        export_mod.export_model(tiny_model, out, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no engines, no .engines.partial
    assert main(["export", str(tiny_model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "second line" not in err
    assert [line for line in err.splitlines() if line.startswith("vald:")] == [
        "vald: error: export failed while converting text_encoder to FP16: ValueError: Failed to serialize proto"
    ]
    assert not list(tmp_path.iterdir())

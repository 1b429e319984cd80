"""The demo's graphs are tracked packed (fp16-exact fp32 weights as fp16): unpacking gives back the exact graph."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vald.config import Precision
from vald.errors import EngineMismatchError
from vald.manifest import Manifest
from vald_export import f16pack
from vald_export.f16pack import PackError, pack, unpack

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
SCRIPT = ROOT / "export" / "vald_export" / "f16pack.py"


def test_every_shipped_pack_gives_back_the_graph_the_manifest_hashes_at_about_half_the_bytes() -> None:
    expected = Manifest.load(DEMO).engine_hashes(Precision.FP32)
    packs = sorted((DEMO / "fp32").glob("*.onnx.f16pack"))
    graphs = {rel for rel in expected if rel.endswith(".onnx")}
    assert {f"fp32/{p.name.removesuffix('.f16pack')}" for p in packs} == graphs
    for path in packs:
        packed = path.read_bytes()
        graph = unpack(packed)
        assert hashlib.sha256(graph).hexdigest() == expected[f"fp32/{path.name.removesuffix('.f16pack')}"]
        assert len(packed) < 0.6 * len(graph), path.name


def _graph(exact: np.ndarray, inexact: np.ndarray) -> bytes:
    nodes = [helper.make_node("Add", ["x", "a"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [exact.size])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [exact.size])
    inits = [numpy_helper.from_array(exact, "a"), numpy_helper.from_array(inexact, "b")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [z], inits)).SerializeToString()


def test_only_fp16_exact_weights_shrink_and_the_round_trip_is_byte_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(1024).astype(np.float16).astype(np.float32)
    exact[:2] = [-0.0, np.float32(65504.0)]  # the sign of zero and fp16's largest value survive
    inexact = exact + np.float32(1e-6)  # needs fp32's low mantissa bits: stays fp32
    graph = _graph(exact, inexact)
    packed = pack(graph)
    header = len(f16pack.MAGIC) + 8
    body = len(packed) - header - int.from_bytes(packed[len(f16pack.MAGIC) : header], "little")
    assert body == len(graph) - 2 * exact.size  # exactly the fp16-exact weight halved, the other kept
    assert unpack(packed) == graph
    back = onnx.load_model_from_string(unpack(packed))
    assert np.array_equal(numpy_helper.to_array(back.graph.initializer[1]).view(np.uint32), inexact.view(np.uint32))
    # with python3 alone (no numpy, no onnx): what `make setup` runs before any virtual environment exists
    (tmp_path / "g.onnx.f16pack").write_bytes(packed)
    subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), "unpack", str(tmp_path / "g.onnx.f16pack")], check=True)
    assert (tmp_path / "g.onnx").read_bytes() == graph


def test_a_damaged_pack_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    packed = bytearray(
        pack(_graph(rng.standard_normal(512).astype(np.float16).astype(np.float32), np.ones(512, np.float32)))
    )
    flipped = bytearray(packed)
    flipped[-100] ^= 0x40
    with pytest.raises(PackError, match="SHA-256"):
        unpack(bytes(flipped))
    with pytest.raises(PackError):
        unpack(bytes(packed[: len(packed) // 2]))
    with pytest.raises(PackError, match="not an f16pack"):
        unpack(b"ONNX" + bytes(packed))
    (tmp_path / "g.onnx.f16pack").write_bytes(bytes(flipped))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "unpack", str(tmp_path / "g.onnx.f16pack")], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "SHA-256" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx.f16pack"]


def test_a_graph_left_packed_is_named_with_how_to_unpack_it(tmp_path: Path) -> None:
    copy = tmp_path / "demo"
    shutil.copytree(DEMO, copy, ignore=shutil.ignore_patterns("samples", "training", "model"))
    (copy / "fp32" / "unet.onnx").unlink()
    with pytest.raises(
        EngineMismatchError, match=r"fp32/unet.onnx .* is missing \(fp32/unet.onnx.f16pack is there: `make setup`"
    ):
        Manifest.load(copy).verify_all()

"""Start-up that does not grow with gigabytes: verification stamps, cached optimised graphs, `vald verify`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vald.app import open_engines
from vald.cache import CACHE_DIR, StampStore
from vald.cli import main
from vald.config import Precision, RunConfig
from vald.errors import EngineMismatchError
from vald.manifest import Manifest
from vald.spec import Component


@pytest.fixture
def fresh(engines: Path, tmp_path: Path) -> Path:
    """A private copy of the exported engines, without any cache."""
    dst = tmp_path / "engines"
    shutil.copytree(engines, dst, ignore=shutil.ignore_patterns(CACHE_DIR))
    return dst


def test_second_start_trusts_stamps_and_a_changed_file_is_hashed_and_refused(fresh: Path) -> None:
    manifest = Manifest.load(fresh)
    first = manifest.verify(Precision.FP32)
    assert first.hashed == len(first.hashes) and first.stamped == 0 and first.cache_writable
    second = manifest.verify(Precision.FP32)
    assert second.hashed == 0 and second.stamped == len(first.hashes)
    assert second.hashes == first.hashes
    # an edit through the file system changes size/mtime: hashed again and refused
    graph = fresh / "fp32" / "vae_decoder.onnx"
    with graph.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(EngineMismatchError, match=r"fp32/vae_decoder\.onnx does not match manifest\.json"):
        manifest.verify(Precision.FP32)


def test_same_size_edit_with_restored_mtime_is_caught_by_vald_verify(fresh: Path, capsys) -> None:
    """The documented limit of stamps, and the command that closes it."""
    manifest = Manifest.load(fresh)
    manifest.verify(Precision.FP32)
    graph = fresh / "fp32" / "text_encoder.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    with graph.open("r+b") as fh:  # same inode, same size
        fh.write(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert manifest.verify(Precision.FP32).hashed == 0  # the stamp still matches: trusted
    assert main(["verify", str(fresh)]) == 2
    assert "fp32/text_encoder.onnx does not match manifest.json" in capsys.readouterr().err
    with pytest.raises(EngineMismatchError):
        manifest.verify(Precision.FP32)  # the refused file's stamp was dropped


def test_vald_verify_rehashes_every_graph_set(fresh: Path, capsys) -> None:
    open_engines(fresh, RunConfig())  # leaves optimised graphs in the cache
    assert any((fresh / CACHE_DIR / "ort").iterdir())
    assert main(["verify", str(fresh)]) == 0
    assert not (fresh / CACHE_DIR / "ort").exists()  # derived from the files: cleared, rebuilt on the next start
    out = capsys.readouterr().out
    files = len(Manifest.load(fresh).engine_hashes(Precision.FP32)) + 4  # plus the FP16 graphs
    assert f"{files} file(s) match manifest.json (graph sets: fp32, fp16)" in out
    stamps = json.loads((fresh / CACHE_DIR / "stamps.json").read_text())
    assert {"fp16/unet.onnx", "fp32/unet.onnx", "tokenizer/tokenizer.json"} <= set(stamps)


def test_torch_backend_does_not_hash_graphs_it_never_loads(fresh: Path, tiny_model: Path) -> None:
    hashes = Manifest.load(fresh).verify(None).hashes
    assert hashes and all(rel.startswith("tokenizer/") for rel in hashes)
    _, provenance = open_engines(fresh, RunConfig(backend="torch"), model_dir=tiny_model)  # type: ignore[arg-type]
    assert set(provenance["engine_files_sha256"]) == set(hashes)


def _unet_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "sample": rng.standard_normal((2, 4, 16, 16), dtype=np.float32),
        "timestep": np.array([20.0, 700.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }


def test_optimised_graphs_are_cached_and_compute_the_same(fresh: Path) -> None:
    cfg = RunConfig(threads=1)
    first, prov1 = open_engines(fresh, cfg)
    assert not any(s["cached"] for s in prov1["sessions"].values())
    second, prov2 = open_engines(fresh, cfg)
    assert all(s["cached"] for s in prov2["sessions"].values())
    assert prov2["startup"]["files_hashed"] == 0
    feeds = _unet_feeds()
    a = first.sessions[Component.UNET].run(feeds)["out_sample"]
    b = second.sessions[Component.UNET].run(feeds)["out_sample"]
    assert np.array_equal(a, b)
    # a cached graph changed on disk is not used: it is rebuilt
    cached = next((fresh / CACHE_DIR / "ort").glob("*/optimized.onnx.data"))
    with cached.open("ab") as fh:
        fh.write(b"\0")
    # and a staging folder left by a killed process (pid 999999999 does not exist) is removed
    stale = cached.parent.parent / f".{cached.parent.name}.999999999"
    stale.mkdir()
    _, prov3 = open_engines(fresh, cfg)
    assert sum(not s["cached"] for s in prov3["sessions"].values()) == 1
    assert not stale.exists()


def test_an_unwritable_engine_folder_runs_without_cache(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only install: no stamps, no cached graphs, and provenance says so (root ignores chmod)."""
    import vald.cache as cache
    import vald.sessions.ort as ort_sessions

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "write_atomic", refuse)
    monkeypatch.setattr(ort_sessions, "cache_dir", lambda *_args: None)
    engines, provenance = open_engines(fresh, RunConfig())
    assert provenance["startup"]["cache_writable"] is False
    assert not any(s["cached"] for s in provenance["sessions"].values())
    assert StampStore(fresh).trusted_sha256("fp32/unet.onnx") is None
    assert engines.sessions[Component.UNET].run(_unet_feeds())["out_sample"].shape == (2, 4, 16, 16)

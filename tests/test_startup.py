"""Start-up that does not grow with gigabytes: verification stamps, cached optimised graphs, `vald verify`."""

from __future__ import annotations

import hashlib
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
from vald.errors import CacheWarning, EngineMismatchError
from vald.manifest import Manifest, sha256_file
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


def _edit_keeping_mtime(path: Path) -> None:
    """Flip the last byte in place (same inode, same size) and restore the mtime, as ``touch -d`` would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    with path.open("r+b") as fh:
        fh.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ctime_ns != st.st_ctime_ns


def test_same_size_edit_with_restored_mtime_is_caught_at_start_and_by_vald_verify(fresh: Path, capsys) -> None:
    """The ctime in the stamp: restoring the mtime cannot hide an edit."""
    manifest = Manifest.load(fresh)
    manifest.verify(Precision.FP32)
    graph = fresh / "fp32" / "text_encoder.onnx"
    _edit_keeping_mtime(graph)
    with pytest.raises(EngineMismatchError, match=r"fp32/text_encoder\.onnx does not match"):
        manifest.verify(Precision.FP32)
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
    with pytest.warns(CacheWarning, match="was changed after it was written"):
        _, prov3 = open_engines(fresh, cfg)
    assert sum(not s["cached"] for s in prov3["sessions"].values()) == 1
    assert not stale.exists()


def test_an_unwritable_engine_folder_runs_without_cache(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only install: no stamps, no cached graphs, and provenance says so (root ignores chmod)."""
    import vald.cache as cache
    import vald.sessions.ort_cache as ort_cache

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "write_atomic", refuse)
    monkeypatch.setattr(ort_cache, "cache_dir", lambda *_args: None)
    engines, provenance = open_engines(fresh, RunConfig())
    assert provenance["startup"]["cache_writable"] is False
    assert not any(s["cached"] for s in provenance["sessions"].values())
    assert StampStore(fresh).trusted_sha256("fp32/unet.onnx") is None
    assert engines.sessions[Component.UNET].run(_unet_feeds())["out_sample"].shape == (2, 4, 16, 16)


def _cached_files(root: Path) -> list[Path]:
    return sorted((root / CACHE_DIR / "ort").glob("*/optimized.onnx*"))


def _unet_cache(root: Path, provenance: dict) -> Path:
    digest = provenance["engine_files_sha256"]["fp32/unet.onnx"]
    import onnxruntime as ort

    from vald.sessions.ort_cache import cpu_flags_sha

    key = hashlib.sha256(json.dumps([digest, ort.__version__, cpu_flags_sha()]).encode()).hexdigest()[:24]
    return root / CACHE_DIR / "ort" / key


def test_a_cached_graph_edited_with_its_mtime_restored_is_rebuilt_with_one_warning(fresh: Path) -> None:
    cfg = RunConfig(threads=1)
    clean, prov = open_engines(fresh, cfg)
    expected = clean.sessions[Component.UNET].run(_unet_feeds())["out_sample"]
    _, prov = open_engines(fresh, cfg)
    assert prov["sessions"]["unet"]["cached"] and len(prov["sessions"]["unet"]["cache_sha256"]) == 64
    folder = _unet_cache(fresh, prov)
    _edit_keeping_mtime(folder / "optimized.onnx.data")
    with pytest.warns(
        CacheWarning, match=r"cached optimised graph .*ort/\w+ discarded: optimized\.onnx\.data was changed"
    ):
        engines, after = open_engines(fresh, cfg)
    assert not after["sessions"]["unet"]["cached"] and all(after["sessions"][c]["cached"] for c in ("vae_decoder",))
    assert np.array_equal(engines.sessions[Component.UNET].run(_unet_feeds())["out_sample"], expected)


def test_a_replaced_cached_graph_with_a_rewritten_stamp_fails_its_content_hash(fresh: Path) -> None:
    cfg = RunConfig(threads=1)
    open_engines(fresh, cfg)
    _, prov = open_engines(fresh, cfg)
    data = _unet_cache(fresh, prov) / "optimized.onnx.data"
    rel = str(data.relative_to(fresh))
    recorded = StampStore(fresh).recorded_sha256(rel)
    _edit_keeping_mtime(data)
    stamps = StampStore(fresh)
    stamps.record(rel, recorded)  # the stamp now matches the new file's size, times and inode
    stamps.save()
    with pytest.warns(CacheWarning, match=r"no longer has the sha256 recorded when it was written"):
        _, after = open_engines(fresh, cfg)
    assert not after["sessions"]["unet"]["cached"]


def test_a_corrupt_cached_graph_with_a_matching_stamp_is_rebuilt_not_blamed_on_the_engine(fresh: Path) -> None:
    cfg = RunConfig(threads=1)
    open_engines(fresh, cfg)
    _, prov = open_engines(fresh, cfg)
    graph = _unet_cache(fresh, prov) / "optimized.onnx"
    graph.write_bytes(b"not a protobuf" * 100)
    stamps = StampStore(fresh)
    stamps.record(str(graph.relative_to(fresh)), sha256_file(graph))  # stamp and hash both agree with the junk
    stamps.save()
    with pytest.warns(CacheWarning, match=r"discarded: onnxruntime cannot load it; rebuilding it from fp32/unet\.onnx"):
        engines, after = open_engines(fresh, cfg)
    assert not after["sessions"]["unet"]["cached"]
    assert engines.sessions[Component.UNET].run(_unet_feeds())["out_sample"].shape == (2, 4, 16, 16)
    _, again = open_engines(fresh, cfg)
    assert again["sessions"]["unet"]["cached"]


def test_vald_verify_names_the_cached_files_it_found_altered(fresh: Path, capsys) -> None:
    open_engines(fresh, RunConfig(threads=1))
    victim = next(p for p in _cached_files(fresh) if p.name.endswith(".data") and p.stat().st_size)
    _edit_keeping_mtime(victim)
    assert main(["verify", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert f"cached file {victim.relative_to(fresh)} was altered since it was written" in out
    assert out.count("was altered") == 1 and not (fresh / CACHE_DIR / "ort").exists()

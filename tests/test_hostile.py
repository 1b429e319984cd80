"""Hostile files and unlucky machines: one line, the right exit status, never a traceback (issue 10, 5-8).

Faults are real where the machine allows: a 3 MB tmpfs and a read-only mount inside a user namespace
(``unshare``), a file the run may not read (owned by an unmapped user there), decompression bombs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.cli import main

FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval
PATIENT = "Doe^Jane_PID-778899"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("vald: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


needs_userns = pytest.mark.skipif(not _can_unshare(), reason="no unprivileged user and mount namespaces here")


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root of a new user + mount namespace (mounts are private to it)."""
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )


def _vald(engines: Path, *args: str) -> str:
    return " ".join([sys.executable, "-m", "vald.cli", "run", *args, "--engines", str(engines), *FAST])


# ----------------------------------------------------------------------------------------------- item 5


def test_out_is_a_file(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    code, err = _run(capsys, str(small_png), "--engines", str(engines), "--out", str(target), *FAST)
    assert code == 2
    assert _one_line(err).startswith(f"vald: error: cannot use output folder {target}:")


@needs_userns
def test_disk_full_and_read_only_out_are_named(engines: Path, small_png: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "ro").mkdir()
    script = (
        f"mount -t tmpfs -o size=3m tmpfs full && dd if=/dev/zero of=full/filler bs=1k count=4000 2>/dev/null; "
        f"{_vald(engines, str(small_png), '--out', 'full/out')}; echo rc=$?; "
        f"mount -t tmpfs -o ro tmpfs ro; {_vald(engines, str(small_png), '--out', 'ro/out')}; echo rc=$?"
    )
    done = _in_namespace(script, tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if "error" in ln]
    assert [ln for ln in done.stdout.splitlines() if ln.startswith("rc=")] == ["rc=2", "rc=2"], done.stderr
    assert "no space left on the output device" in errors[0] and "internal error" not in done.stderr
    assert "read-only file system" in errors[-1].lower()


@needs_userns
def test_an_unreadable_input_is_named_by_index_not_name(engines: Path, small_png: Path, tmp_path: Path) -> None:
    locked = tmp_path / f"{PATIENT}.png"
    shutil.copy(small_png, locked)
    os.chown(locked, 12345, 12345)  # an owner the namespace does not map: its root may not read it
    locked.chmod(0o600)
    done = _in_namespace(_vald(engines, str(small_png), str(locked), "--out", "out"), tmp_path)
    assert done.returncode == 1, done.stderr
    assert "input #2" in done.stderr and "cannot read input: permission denied" in done.stderr.lower()
    assert PATIENT not in done.stderr and "internal error" not in done.stderr


def test_binary_config_file(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "settings.toml"
    cfg.write_bytes(b"\xff\xfe\x00strength = \x80\x81")
    code, err = _run(
        capsys, str(small_png), "--engines", str(engines), "--out", str(tmp_path / "o"), "--config", str(cfg)
    )
    assert code == 2 and "the config file is not UTF-8 text" in _one_line(err) and "settings.toml" not in err


def _engine_copy(engines: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy, ignore=shutil.ignore_patterns(".vald-cache"))
    return copy


def _rehash(copy: Path, rel: str) -> None:
    """Make the manifest agree with a changed file (a hash that matches, as an attacker or a bad copy would)."""
    import hashlib

    manifest = json.loads((copy / "manifest.json").read_text())
    digest = hashlib.sha256((copy / rel).read_bytes()).hexdigest()
    for component in manifest["components"].values():
        for entry in component["precisions"].values():
            if rel in entry["files"]:
                entry["files"][rel] = digest
    (copy / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_graph_whose_hash_matches(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    copy = _engine_copy(engines, tmp_path)
    (copy / "fp32" / "unet.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    _rehash(copy, "fp32/unet.onnx")
    code, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "engine file fp32/unet.onnx cannot be loaded" in _one_line(err)


def test_graph_with_other_io_names_is_an_engine_error_at_open(
    engines: Path, small_png: Path, tmp_path: Path, capsys
) -> None:
    copy = _engine_copy(engines, tmp_path)
    shutil.copy(copy / "fp32" / "vae_decoder.onnx", copy / "fp32" / "unet.onnx")  # a valid graph, the wrong one
    _rehash(copy, "fp32/unet.onnx")
    code, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2
    line = _one_line(err)
    assert "fp32/unet.onnx" in line and "inputs" in line and "expected" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "components": ["unet"]}, "'components' is not an object"),
        (lambda m: {**m, "components": {"unet": 3}}, "malformed"),
        (lambda m: {**m, "model": "big"}, "'model' section is malformed"),
    ],
)
def test_malformed_manifests(engines: Path, small_png: Path, tmp_path: Path, capsys, edit, message) -> None:
    copy = _engine_copy(engines, tmp_path)
    (copy / "manifest.json").write_text(json.dumps(edit(json.loads((copy / "manifest.json").read_text()))))
    code, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and message in _one_line(err)


def test_non_utf8_manifest(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    copy = _engine_copy(engines, tmp_path)
    (copy / "manifest.json").write_bytes(b'{"format_version": 1, "x": "\xff\xfe"}')
    code, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "manifest.json in" in _one_line(err) and "not UTF-8" in err


def test_a_failure_while_reading_still_names_the_content_hash(engines: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / f"{PATIENT}.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, err = _run(capsys, str(bad), "--engines", str(engines), "--out", str(tmp_path / "o"), *FAST)
    import hashlib

    assert code == 1 and f"(sha256 {hashlib.sha256(bad.read_bytes()).hexdigest()[:12]})" in err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["entries"][0]["input_sha256"]


def test_internal_errors_are_one_line_with_exit_70(engines: Path, small_png: Path, tmp_path: Path, capsys) -> None:
    import vald.cli as cli

    def explode(args: object) -> int:
        raise RuntimeError(f"secret {PATIENT}")

    original = cli._cmd_run
    cli._cmd_run = explode
    try:
        code, err = _run(capsys, str(small_png), "--engines", str(engines), "--out", str(tmp_path / "o"))
    finally:
        cli._cmd_run = original
    assert code == 70
    assert _one_line(err) == "vald: error: internal error (RuntimeError); please report it (VALD_DEBUG=1 shows details)"
    assert PATIENT not in err


# ----------------------------------------------------------------------------------------------- item 6


def test_every_json_vald_writes_is_strict(engines: Path, small_png: Path, tmp_path: Path) -> None:
    """A DPM-Solver folder as diffusers saves it has lambda_min_clipped = -Infinity: the manifest stays JSON."""

    def strict(text: str) -> object:
        def refuse(name: str) -> None:
            raise ValueError(f"{name} is not JSON")

        return json.loads(text, parse_constant=refuse)

    manifest = json.loads((engines / "manifest.json").read_text())
    from vald.manifest import Manifest

    manifest["scheduler"]["lambda_min_clipped"] = float("-inf")
    copy = _engine_copy(engines, tmp_path)
    from vald.strictjson import dumps

    (copy / "manifest.json").write_text(dumps(manifest))
    strict((copy / "manifest.json").read_text())
    assert Manifest.load(copy).scheduler_config["lambda_min_clipped"] == float("-inf")
    assert main(["run", str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST]) == 0
    for path in (tmp_path / "o").rglob("*.json"):
        strict(path.read_text())


def test_export_writes_a_strict_manifest_for_a_dpm_folder(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    config["lambda_min_clipped"] = float("-inf")
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))  # as diffusers writes it
    assert "-Infinity" in (model / "scheduler" / "scheduler_config.json").read_text()
    assert main(["export", str(model), "--out", str(tmp_path / "engines")]) == 0
    text = (tmp_path / "engines" / "manifest.json").read_text()
    assert "Infinity" not in text.replace('"-Infinity"', "")
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


# ----------------------------------------------------------------------------------------------- item 7


def _bomb(path: Path, width: int, height: int) -> Path:
    Image.new("L", (width, height)).save(path, optimize=True)  # all zeros: a tiny file, a huge image
    return path


@pytest.mark.parametrize(("width", "height"), [(12000, 12000), (100000, 10), (20000, 64), (63, 5000)])
def test_image_sides_and_pixels_are_bounded_before_decoding(
    engines: Path, tmp_path: Path, capsys, width: int, height: int
) -> None:
    path = _bomb(tmp_path / "big.png", width, height)
    code, err = _run(capsys, str(path), "--engines", str(engines), "--out", str(tmp_path / "o"), *FAST)
    assert code == 1 and f"image of {width}x{height} pixels" in err and "internal error" not in err


def test_the_largest_allowed_input_runs_within_its_memory_bound(engines: Path, tmp_path: Path) -> None:
    from vald.imageio import MAX_PIXELS

    side = int(MAX_PIXELS**0.5)
    path = tmp_path / "largest.png"
    Image.fromarray((np.indices((side, side)).sum(0) % 251).astype(np.uint8)).save(path)
    code = (
        "import resource, sys; from vald.cli import main; "
        f"rc = main(['run', {str(path)!r}, '--engines', {str(engines)!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--steps', '2', '--guidance-min-t', '0', '--quiet', '--no-report']); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout.strip().splitlines()[-1])
    assert peak_mib < 5120, f"peak RSS {peak_mib} MiB for a {side}x{side} input"  # README: measured 4.4 GiB


def test_non_finite_float_tiff_is_an_input_error(engines: Path, tmp_path: Path, capsys) -> None:
    values = np.full((80, 80), 0.5, dtype=np.float32)
    values[10, 10] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(values, mode="F").save(path)
    code, err = _run(capsys, str(path), "--engines", str(engines), "--out", str(tmp_path / "o"), *FAST)
    assert code == 1 and "non-finite pixel values" in err and "precision" not in err


def test_signed_integer_images_are_mapped_by_their_range(tmp_path: Path) -> None:
    from vald.imageio import read_image

    values = np.linspace(-1000, 3000, 80 * 80).reshape(80, 80).astype(np.int32)
    path = tmp_path / "signed.tif"
    Image.fromarray(values, mode="I").save(path)
    image = read_image(path)
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, (values + 1000) / 4000, atol=1e-6)


# ----------------------------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("where", ["graph", "tokenizer"])
def test_manifest_paths_stay_inside_the_engine_folder(
    engines: Path, small_png: Path, tmp_path: Path, capsys, where: str
) -> None:
    copy = _engine_copy(engines, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    import hashlib

    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    manifest = json.loads((copy / "manifest.json").read_text())
    if where == "graph":
        manifest["components"]["unet"]["precisions"]["fp32"]["files"] = {"../outside.txt": digest}
    else:
        manifest["tokenizer"]["files"]["../../../../../../../../etc/hostname"] = digest
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, err = _run(capsys, str(small_png), "--engines", str(copy), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "outside the engine folder" in _one_line(err)


def test_an_engine_folder_named_by_a_relative_path(engines: Path, small_png: Path, tmp_path: Path, monkeypatch) -> None:
    """As `make demo` names engines/demo: the manifest's paths are checked and used relative to it."""
    monkeypatch.chdir(engines.parent)
    out = tmp_path / "o"
    assert main(["run", str(small_png), "--engines", engines.name, "--out", str(out), *FAST]) == 0

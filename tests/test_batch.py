"""Batch runs: folders, per-input status, summary files, resume after a crash, exit status, the HTML report."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vald.batch import Entry, collect, run_batch
from vald.cli import main
from vald.errors import InputError
from vald.outputs import RESULT, write_atomic
from vald.sources import Source, load

FAST = ["--steps", "4", "--quiet"]


def _png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((72, 64)) * 255).astype(np.uint8)).save(path)
    return path


def _fake_process(out: Path, settings: str, fail_on: set[int] | None = None, calls: list[int] | None = None):
    def process(source: Source, entry: Entry) -> Path:
        if calls is not None:
            calls.append(entry.index)
        if fail_on and entry.index in fail_on:
            raise KeyboardInterrupt
        write_atomic(out / source.key / RESULT, json.dumps({"settings_sha256": settings}).encode())
        return out / source.key

    return process


def test_collect_walks_folders_and_skips_non_images(tmp_path: Path) -> None:
    a, b = _png(tmp_path / "in" / "b.png", 1), _png(tmp_path / "in" / "sub" / "a.png", 2)
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"x")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"x")
    _png(tmp_path / "in" / "out" / "old.png", 3)  # the output folder inside the input folder is left out
    assert collect([tmp_path / "in"], exclude=tmp_path / "in" / "out") == [a, b]
    with pytest.raises(InputError, match="no input files"):
        collect([tmp_path / "in" / "out"], exclude=tmp_path / "in" / "out")


def test_a_crash_loses_nothing_and_a_rerun_resumes(tmp_path: Path) -> None:
    inputs = [_png(tmp_path / f"{k}.png", k) for k in range(4)]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(inputs, out, "s1", load, _fake_process(out, "s1", fail_on={3}))
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["entries"]] == ["done", "done", "interrupted"]
    calls: list[int] = []
    again = run_batch(inputs, out, "s1", load, _fake_process(out, "s1", calls=calls))
    assert [e.status for e in again.entries] == ["skipped", "skipped", "done", "done"] and calls == [3, 4]
    calls.clear()
    changed = run_batch(inputs, out, "s2", load, _fake_process(out, "s2", calls=calls))  # new settings: redo all
    assert [e.status for e in changed.entries] == ["done"] * 4 and calls == [1, 2, 3, 4]
    forced = run_batch(inputs, out, "s2", load, _fake_process(out, "s2"), force=True)
    assert [e.status for e in forced.entries] == ["done"] * 4


def test_duplicates_and_failures_do_not_stop_the_batch(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png", 1)
    copy = tmp_path / "copy.png"
    shutil.copy(a, copy)
    bad = tmp_path / "Doe^Jane.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    summary = run_batch([a, bad, copy, _png(tmp_path / "z.png", 2)], out, "s", load, _fake_process(out, "s"))
    assert [e.status for e in summary.entries] == ["done", "failed", "skipped", "done"]
    assert "same instance as input #1" in summary.entries[2].error and summary.failed == 1
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["done", "failed", "skipped", "done"]
    assert "Doe" not in (out / "summary.csv").read_text() + (out / "summary.json").read_text()


def test_internal_errors_are_recorded_without_their_text(tmp_path: Path) -> None:
    def process(source: Source, entry: Entry) -> Path:
        raise RuntimeError("Doe^Jane leaked into an exception")

    summary = run_batch([_png(tmp_path / "a.png", 1)], tmp_path / "o", "s", load, process)
    assert summary.entries[0].status == "failed" and "RuntimeError" in summary.entries[0].error
    assert "Doe" not in summary.entries[0].error


def test_folder_run_end_to_end(engines: Path, tmp_path: Path, capsys) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from dicomfiles import dataset, ramp, save

    folder = tmp_path / "in"
    _png(folder / "a.png", 1)
    save(dataset(ramp(rows=80, cols=72)), folder / "study" / "IM0001")  # no suffix: found by its DICM magic
    (folder / "study" / "IM0002").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)  # damaged
    out = tmp_path / "out"
    code = main(["run", str(folder), "--engines", str(engines), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 1 and "input #3" in captured.err and "failed" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "failed": 1}
    assert len(captured.out.split()) == 2  # one output folder per finished input on stdout
    assert (out / "report.html").is_file()
    (folder / "study" / "IM0002").unlink()
    code = main(["run", str(folder), "--engines", str(engines), "--out", str(out), *FAST])
    assert code == 0 and json.loads((out / "summary.json").read_text())["counts"] == {"skipped": 2}


# ---------------------------------------------------------------- the HTML report


@pytest.fixture(scope="module")
def report_run(engines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    _png(folder / "a.png", 1), _png(folder / "b.png", 2)
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path_factory.mktemp("out")
    assert main(["run", str(folder), "--engines", str(engines), "--out", str(out), *FAST]) == 1
    return out


def test_report_is_self_contained(report_run: Path) -> None:
    page = (report_run / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page and "<link" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count('type="range"') == 2 and "not for diagnostic use" in page
    assert "input #3" in page and "Failed" in page  # the broken input is listed
    for src in __import__("re").findall(r'src="([^"]+)"', page):
        assert (report_run / src).is_file(), src


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_run: Path, tmp_path: Path) -> None:
    browser, page = _chromium(), (report_run / "report.html").as_uri()
    shot = tmp_path / "report.png"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"]
    subprocess.run([*common, f"--screenshot={shot}", page], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (900, 1280) and pixels.std() > 10  # not blank
    dom = subprocess.run([*common, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120)
    # the page's script ran and every image it references loaded (2 inputs x 4 images: 3 panels + the heat layer)
    loaded = __import__("re").search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded is not None and loaded.group(1) == loaded.group(2) and int(loaded.group(1)) == 8

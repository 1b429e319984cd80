"""Batch runs: folders, per-input status, summary files, resume after a crash, exit status, the HTML report."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vald.batch import Entry, collect, run_batch
from vald.cli import main
from vald.errors import InputError
from vald.outputs import publish_set
from vald.sources import Source, load

FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval


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
        publish_set(out / source.key, {"counterfactual.png": source.sha256.encode()}, {"settings_sha256": settings})
        return out / source.key

    return process


def test_collect_walks_folders_and_skips_non_images(tmp_path: Path) -> None:
    a, b = _png(tmp_path / "in" / "b.png", 1), _png(tmp_path / "in" / "sub" / "a.png", 2)
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"x")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"x")
    assert collect([tmp_path / "in"], out=tmp_path / "out") == [a, b]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        collect([tmp_path / "empty"])


def test_an_output_folder_in_the_inputs_is_refused_and_old_outputs_are_never_inputs(tmp_path: Path) -> None:
    a = _png(tmp_path / "in" / "a.png", 1)
    with pytest.raises(InputError, match="the output folder is input folder #2; choose an --out outside"):
        collect([a, tmp_path / "in"], out=tmp_path / "in")
    with pytest.raises(InputError, match="the output folder is inside input folder #1"):
        collect([tmp_path / "in"], out=tmp_path / "in" / "results")
    # outputs of earlier runs that were moved among the inputs: an output root (its lock) and a loose set
    _png(tmp_path / "in" / "old-run" / "0123abcd" / "counterfactual.png", 2)
    (tmp_path / "in" / "old-run" / ".vald-lock").write_text("1\n")
    _png(tmp_path / "in" / "copied" / "triptych.png", 3)
    (tmp_path / "in" / "copied" / "result.json").write_text("{}")
    assert collect([tmp_path / "in"], out=tmp_path / "out") == [a]
    with pytest.raises(InputError, match="input folder #1 is an output folder of vald"):
        collect([tmp_path / "in" / "old-run"], out=tmp_path / "out")


def test_a_crash_loses_nothing_and_a_rerun_resumes(tmp_path: Path) -> None:
    inputs = [_png(tmp_path / f"{k}.png", k) for k in range(4)]
    out = tmp_path / "out"
    stopped = run_batch(inputs, out, "s1", load, _fake_process(out, "s1", fail_on={3}))
    assert stopped.interrupted and stopped.counts() == {"done": 2, "interrupted": 1, "not started": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["entries"]] == ["done", "done", "interrupted"]
    assert summary["interrupted"] and summary["not_started"] == 1 and summary["finished"]
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


def test_ctrl_c_keeps_the_summary_and_report_and_exits_130(
    engines: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vald.app

    inputs = [str(_png(tmp_path / "in" / f"{k}.png", k)) for k in range(3)]
    out, real, calls = tmp_path / "out", vald.app.run_one, []

    def stopped_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vald.app, "run_one", stopped_at_second)
    assert main(["run", *inputs, "--engines", str(engines), "--out", str(out), *FAST]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "interrupted": 1, "not started": 1}
    page = (out / "report.html").read_text()
    assert "interrupted" in page and page.count('type="range"') == 1
    monkeypatch.setattr(vald.app, "run_one", real)
    assert main(["run", *inputs, "--engines", str(engines), "--out", str(out), *FAST]) == 0
    assert json.loads((out / "summary.json").read_text())["counts"] == {"skipped": 1, "done": 2}


# ---------------------------------------------------------------- the HTML report


@pytest.fixture(scope="module")
def report_run(engines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    _png(folder / "a.png", 1), _png(folder / "b.png", 2)
    (folder / "broken.png").write_bytes(b"nope")
    wide = (np.indices((2500, 3000)).sum(0) % 251).astype(np.uint8)  # 3000 x 2500: must not wrap its panels
    Image.fromarray(wide).save(folder / "c.png")
    out = tmp_path_factory.mktemp("out")
    assert main(["run", str(folder), "--engines", str(engines), "--out", str(out), *FAST]) == 1
    return out


def test_report_is_self_contained(report_run: Path) -> None:
    page = (report_run / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page and "<link" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count('type="range"') == 3 and "not for diagnostic use" in page
    broken = json.loads((report_run / "summary.json").read_text())["entries"][2]
    assert f"input #3 (sha256 {broken['input_sha256'][:12]})" in page and "Failed" in page  # listed with its hash
    # the map's meaning for the default mode, its colour scale and limit, per-case status and image facts
    assert "M = reconstruction - counterfactual: red where the reconstruction is brighter" in page
    assert page.count('class="scale"') == 3 and "colours saturate at ±" in page
    assert page.count('class="status">done<') == 3 and "3000 x 2500 pixels · image file (not DICOM)" in page
    assert page.count("<table>") == 1  # the settings once, not under every case
    for src in __import__("re").findall(r'src="([^"]+)"', page):
        assert (report_run / src).is_file(), src


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser() -> tuple[str, Any]:
    """Chromium and Playwright (which drives it), or the test is skipped, saying what is missing."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (vald[dev])")
    return chromium, sync_api


def _shot(page: Any, box: dict[str, float]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")).astype(np.float64)


def test_report_in_headless_chromium_and_its_slider(report_run: Path, tmp_path: Path) -> None:
    chromium, sync_api = _browser()
    key = json.loads((report_run / "summary.json").read_text())["entries"][0]["output"]
    with Image.open(report_run / key / "input.png") as img:
        grey = np.asarray(img, dtype=np.float64) / 65535 * 255
    under = Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGBA")
    with Image.open(report_run / key / "heatmap.png") as img:
        full = np.asarray(Image.alpha_composite(under, img.convert("RGBA")).convert("RGB"), dtype=np.float64)
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto((report_run / "report.html").as_uri())
        page.screenshot(path=tmp_path / "report.png")
        with Image.open(tmp_path / "report.png") as img:
            assert np.asarray(img.convert("RGB")).std() > 10  # not blank
        # the script ran, every image loaded (2 inputs x 4 images), nothing left the machine, no CSP complaint
        assert page.get_attribute("body", "data-images-loaded") == "12/12"
        tops = [f.bounding_box()["y"] for f in page.locator("#case-4 figure").all()]
        assert len(tops) == 3 and max(tops) - min(tops) < 1  # a wide input's three panels stay on one row
        assert requests and all(url.startswith("file:") for url in requests), requests
        assert problems == []
        heat, slider = page.locator("#heat-1"), page.locator("#case-1 input[type=range]")
        box = heat.bounding_box()
        slider.fill("0")
        assert heat.evaluate("e => getComputedStyle(e).opacity") == "0"
        bare = _shot(page, box)
        slider.fill("100")
        assert heat.evaluate("e => getComputedStyle(e).opacity") == "1"
        covered = _shot(page, box)
        assert page.locator("#heat-2").evaluate("e => getComputedStyle(e).opacity") == "0.8"  # the other case
        browser.close()
    # at 0 the reader sees the input alone, at 100 the heat map laid over it, pixel for pixel
    assert bare.shape == full.shape == covered.shape
    assert np.abs(bare - grey[..., None]).mean() < 1 and np.abs(covered - full).mean() < 2
    assert np.abs(covered - bare).mean() > 5 * np.abs(covered - full).mean()

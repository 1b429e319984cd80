"""vald's DICOM outputs in the real OHIF viewer (3.13.2, its npm build) against Orthanc's DICOMweb, in Chromium.

A consolidation phantom (known lesion mask) goes through `vald run --segmentation`; the source and every
derived object are stored in Orthanc; OHIF opens the study and each derived object is double-clicked into the
viewport.  Asserted: no error in the console or the page, and on the screen the overlay's colours lie inside
the lesion and not far outside it.  Screenshots stay in ``build/test-artifacts/ohif/``.

Orthanc runs on the host's loopback here (the browser must reach it; Orthanc 1.10 has no bind-address
setting, so it listens on every interface for the test's minute, with remote access refused).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicomnet import DICOMWEB_PLUGIN, ORTHANC, REPO, VALD, Netns, Orthanc
from ohif import OHIF_VERSION, Viewer, ohif_dist
from PIL import Image

pydicom = pytest.importorskip("pydicom")
SAMPLES = REPO / "engines" / "demo" / "samples"
ARTEFACTS = REPO / "build" / "test-artifacts" / "ohif"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HIDE_TOUR = ".shepherd-modal-overlay-container,.shepherd-element{display:none!important}"


class _HostLoopback(Netns):
    """No namespace: the browser and Orthanc share the host's loopback."""

    def __init__(self) -> None:
        self.holder, self.prefix, self.private = None, [], False


def _needs() -> str | None:
    if CHROMIUM is None:
        return "Chromium is not installed (apt-get install chromium)"
    if ORTHANC is None or DICOMWEB_PLUGIN is None:
        return "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (vald[dev])"
    return None


@pytest.fixture(scope="module", params=["binary", "fractional"])
def study(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    reason = _needs()
    if reason:
        pytest.skip(reason)
    dist = ohif_dist()
    if isinstance(dist, str):
        pytest.skip(dist)
    work = tmp_path_factory.mktemp("ohif")
    source = SAMPLES / "consolidation.dcm"
    out = work / "out"
    argv = [str(VALD), "run", str(source), "--engines", str(REPO / "engines" / "demo"), "--out", str(out)]
    subprocess.run([*argv, "--seg-type", request.param, "--quiet"], check=True, timeout=300)
    orthanc = Orthanc(_HostLoopback(), work / "orthanc", aet="ORTHANC", known={})
    try:
        for path in [source, *sorted(out.glob("*/*.dcm"))]:
            upload = urllib.request.Request(f"{orthanc.rest}/instances", data=path.read_bytes(), method="POST")
            with urllib.request.urlopen(upload, timeout=30) as answer:
                assert json.loads(answer.read())["Status"] == "Success", path.name
        viewer = Viewer(dist, orthanc.stow_url)
        try:
            yield viewer, str(pydicom.dcmread(source).StudyInstanceUID), request.param
        finally:
            viewer.close()
    finally:
        orthanc.stop()


IMAGE_ON_SCREEN = """(() => {
  const cs = window.cornerstone, element = cs.getEnabledElements()[0], viewport = element.viewport;
  const id = viewport.getCurrentImageId(), plane = cs.metaData.get('imagePlaneModule', id);
  const rect = viewport.canvas.getBoundingClientRect();
  const corner = (c, r) => viewport.worldToCanvas(cs.utilities.imageToWorldCoords(id, [c, r]));
  const [x0, y0] = corner(0, 0), [x1, y1] = corner(plane.columns, plane.rows);
  return [rect.x + x0, rect.y + y0, rect.x + x1, rect.y + y1];
})()"""


def _coloured_inside_and_far(
    shot: np.ndarray, mask: np.ndarray, box: list[float], *, red: bool = True
) -> tuple[float, float]:
    """Fractions of red-tinted (``red``) or any-colour screen pixels inside the lesion and far (> 1/8 of the
    image) outside it.

    "Far" leaves out the overlay's burned-in colour bar (right quarter) and caution band (bottom tenth).
    """
    from scipy.ndimage import distance_transform_edt

    x0, y0, x1, y1 = box
    n = mask.shape[0]
    ys, xs = np.mgrid[0:n, 0:n]
    sx = np.clip((x0 + (xs + 0.5) * (x1 - x0) / n).astype(int), 0, shot.shape[1] - 1)
    sy = np.clip((y0 + (ys + 0.5) * (y1 - y0) / n).astype(int), 0, shot.shape[0] - 1)
    rgb = shot[sy, sx].astype(int)
    if red:
        tinted = (rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])) > 40
    else:  # OHIF colours a Parametric Map with its own colour map: any clearly non-grey pixel
        tinted = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40
    far = (distance_transform_edt(~mask) > n / 8) & (xs < 0.75 * n) & (ys < 0.9 * n)
    return float(tinted[mask].mean()), float(tinted[far].mean())


def _shot(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _viewer_error(page, path: Path) -> str:
    """The text of OHIF's error boundary ("Something went wrong", no console line), closed again; "" if none."""
    if not page.get_by_text("Something went wrong").count():
        return ""
    details = page.get_by_role("button", name="Show Details")
    if details.count():
        details.first.dispatch_event("click")
        time.sleep(1)
        page.screenshot(path=str(path.with_name(path.stem + "-details.png")))
    body = page.inner_text("body")
    start = max(body.find("TypeError"), body.find("Something went wrong"))
    text = body[start:][:300] if start >= 0 else "Something went wrong (no details shown)"
    page.keyboard.press("Escape")
    time.sleep(1)
    return " ".join(text.split())


def test_ohif_shows_the_overlay_and_the_segmentation_inside_the_lesion(study) -> None:
    """BINARY: every object shows, colours on the lesion.  FRACTIONAL: OHIF refuses it, a named limitation."""
    from playwright.sync_api import sync_playwright

    viewer, study_uid, seg_type = study
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(Image.open(SAMPLES / "consolidation_mask.png").convert("L")) > 127
    problems: list[str] = []
    seen: dict[str, tuple[float, float]] = {}
    limitations: dict[str, str] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "console", lambda m: problems.append(f"console {m.type}: {m.text[:300]}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {str(e)[:300]}"))

        def open_study() -> Any:
            page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study_uid}", wait_until="networkidle", timeout=180_000)
            page.wait_for_selector('[data-cy^="study-browser-thumbnail"]', timeout=120_000)
            page.add_style_tag(content=HIDE_TOUR)
            time.sleep(3)
            return page.locator('[data-cy^="study-browser-thumbnail"]')

        thumbs = open_study()
        labels = [thumbs.nth(i).inner_text().replace("\n", " ") for i in range(thumbs.count())]
        assert len(labels) == 7 and sum("Not for diagnostic use" in t for t in labels) == 6, labels
        previous = ""
        for i, label in enumerate(labels):
            kind = "seg" if label.startswith("SEG") else "sr" if label.startswith("SR") else "other"
            kind = "overlay" if "overlay" in label else "pmap" if "(PMAP)" in label else kind
            kind = "pr" if label.startswith("PR") else kind
            if previous in ("pmap", "sr", "pr"):  # OHIF 3.13.2 keeps a fused map's colours for the next object (a SEG
                thumbs = open_study()  # opened after the PMAP lay over a colour-mapped image): open the study anew
            previous = kind
            thumbs.nth(i).dblclick()
            page.wait_for_load_state("networkidle")
            time.sleep(4)
            if kind == "seg" and page.get_by_role("button", name="Yes").count():
                page.get_by_role("button", name="Yes").first.click()  # "Do you want to open this Segmentation?"
                page.wait_for_load_state("networkidle")
                time.sleep(4)
            path = ARTEFACTS / f"ohif-{OHIF_VERSION}-{seg_type}-{i}-{kind}.png"
            page.screenshot(path=str(path))
            for _ in range(4 if kind == "pmap" else 0):  # a fused map appears a few seconds after the source
                if _coloured_inside_and_far(_shot(path), mask, page.evaluate(IMAGE_ON_SCREEN), red=False)[0] > 0:
                    break
                time.sleep(3)
                page.screenshot(path=str(path))
            error = _viewer_error(page, path)
            for _ in range(5 if kind == "sr" and not error else 0):  # its error boundary can come seconds later
                time.sleep(2)
                error = _viewer_error(page, path)
            if kind == "sr":
                # the expected, named limitation: OHIF 3.13.2's SR viewport reads measurements only from SCOORD
                # geometry; a TID 1500 group whose region is a SEG reference stops it (TypeError reading
                # 'ReferencedSOPSequence' in _checkIfCanAddMeasurementsToDisplaySet)
                limitations["sr"] = error
                assert error, "OHIF showed the SR: update the docs and this test"
            elif error:
                problems.append(f"{kind}: the viewer shows an error: {error}")
            if kind in ("seg", "overlay", "pmap", "pr"):
                box = page.evaluate(IMAGE_ON_SCREEN)
                seen[kind] = _coloured_inside_and_far(_shot(path), mask, box, red=kind != "pmap")
        browser.close()
    measured = {k: {"inside": v[0], "far": v[1]} for k, v in seen.items()}
    if seen["pmap"][0] == 0:
        # the expected, named limitation: OHIF 3.13.2 fuses the PMAP over a DX/CR source (which has no frame of
        # reference) only sometimes: 2 of 7 tries on this machine (both while the machine was busy); otherwise it
        # shows the source alone, with no error.  When it does fuse it, the map must lie on the lesion.
        limitations["pmap"] = "OHIF showed the source without the fused Parametric Map"
    # the expected, named limitation: OHIF 3.13.2 marks the pseudo-colour presentation state unsupported (a
    # warning sign on its thumbnail) and shows the source uncoloured; it fails the day OHIF applies the palette
    assert seen["pr"][0] == 0, ("pr", seen["pr"])
    limitations["pr"] = "OHIF does not apply the Pseudo-Color Softcopy Presentation State"
    report = {"problems": problems, "expected_limitations": limitations, **measured}
    (ARTEFACTS / f"measured-{seg_type}.json").write_text(json.dumps(report, indent=1))
    if seg_type == "fractional":
        # the expected, named limitation: OHIF 3.13.2 does not display FRACTIONAL segmentations (its issue #1346)
        assert problems and all("Fractional segmentations are not yet supported" in p for p in problems), problems
        shown = ["overlay", *(["pmap"] if "pmap" not in limitations else [])]
    else:
        assert not problems, problems
        shown = ["overlay", "seg", *(["pmap"] if "pmap" not in limitations else [])]
    for kind in shown:
        inside, far = seen[kind]
        assert inside > 0.3 and far < 0.01, (kind, inside, far)
    assert seen["pmap"][1] < 0.01, ("pmap", seen["pmap"])  # nothing coloured far from the lesion either way

"""The shipped model (engines/demo) on a small fixed set of held-out phantoms: floors a little below what it measures.

The full measurement (200 held-out phantoms, every mode, baselines, sweep) is benchmarks/attribution.py;
these floors catch a regression in the runtime, the export or the model.  Values measured on this set are in
the comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vald.app import open_engines
from vald.config import INDUCE_DEFAULTS, RunConfig
from vald.eval.metrics import ssim_map
from vald.induce import induce
from vald_train.evaluate import cases, runtime_method, score, summarise
from vald_train.phantoms import Finding, make_phantom

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"
pytestmark = pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="engines/demo is not built")

PER_TYPE, OFFSET = 3, 700  # held-out seeds never used in training, nor in the benchmark's sets


@pytest.fixture(scope="module")
def engines():  # type: ignore[no-untyped-def]
    return open_engines(DEMO, RunConfig())[0]


@pytest.fixture(scope="module")
def phantoms():  # type: ignore[no-untyped-def]
    return cases(PER_TYPE, 128, offset=OFFSET)


def _table(engines, phantoms, **settings: object) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    return summarise(score(runtime_method(engines, RunConfig().replace(**settings)), phantoms))


# Floors per mode on this set (overall over the four finding types), a little below the measured values.
# Measured 2026-11-25 on this set: default (inversion) AUROC 0.846, NCC 0.490; img2img AUROC 0.753, removal
# 0.507; paired (1 seed) AUROC 0.713, NCC 0.336; induction: +0.036 inside, SSIM outside 0.99999.
FLOORS = {
    "default": {"auroc": 0.80, "ncc": 0.42},
    "img2img": {"auroc": 0.70, "removal": 0.42},
    "paired": {"auroc": 0.65, "ncc": 0.28},
}


def test_default_mode_finds_the_lesions(engines, phantoms) -> None:  # type: ignore[no-untyped-def]
    table = _table(engines, phantoms)
    for metric, floor in FLOORS["default"].items():
        assert table["overall"][metric] >= floor, (metric, table["overall"])
    assert table["normal"]["change_normal"] < table["overall"]["change_outside"] * 3


def test_img2img_removes_the_findings(engines, phantoms) -> None:  # type: ignore[no-untyped-def]
    table = _table(engines, phantoms, mode="img2img")
    for metric, floor in FLOORS["img2img"].items():
        assert table["overall"][metric] >= floor, (metric, table["overall"])


def test_paired_noise_with_the_report(engines, phantoms) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for p in phantoms:
        prompt = p.report if p.finding.kind is not Finding.NORMAL else "nodule"
        rows += score(runtime_method(engines, RunConfig(mode="paired", finding_prompt=prompt)), [p])
    table = summarise(rows)
    for metric, floor in FLOORS["paired"].items():
        assert table["overall"][metric] >= floor, (metric, table["overall"])


def test_induction_adds_inside_and_keeps_outside(engines) -> None:  # type: ignore[no-untyped-def]
    normal = make_phantom(1_000_777, 128, Finding.NORMAL)
    donor = make_phantom(1_100_777, 128, Finding.CONSOLIDATION)  # a realistic lesion-shaped mask
    mask = donor.mask.astype(np.float32)
    out = induce(engines, normal.abnormal, mask, INDUCE_DEFAULTS.replace(prompt=donor.report))
    change = out.image - normal.abnormal
    inside, outside = mask > 0, out.mask == 0
    assert float(change[inside].mean()) > 0.02  # consolidation is denser: brighter inside
    assert float(ssim_map(out.image, normal.abnormal)[outside].mean()) >= 0.95

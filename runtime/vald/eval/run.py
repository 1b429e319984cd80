"""``vald eval``: the paper's evaluation of counterfactuals on a data set, as one command.

For every abnormal image: its counterfactual with the run settings, at model resolution.  Per image,
identity preservation (SSIM and MS-SSIM of image vs counterfactual), and where the set has them the
counterfactual vs its true normal twin and the attribution metrics against the mask and twin (the same
functions as ``make bench-attribution``).  Per class and overall: the means, FID between the
counterfactuals and the real Normal class (with the FID Inception weights), and with a classifier the
share of counterfactuals it calls normal (flip rate) and the mean drop of the image's abnormal-class
probability (prediction gain).  Results: ``OUT/eval.json`` (with settings, engine provenance and
environment) and ``OUT/eval.md``; images are named by index and content hash only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald import strictjson
from vald.app import describe_engines
from vald.cluster.executor import Executor, LocalExecutor, Task
from vald.cluster.worker import WorkerSpec
from vald.config import DEFAULT_OUTPUTS, RunConfig
from vald.errors import ClusterError, InputError
from vald.eval.classifier import Classifier
from vald.eval.dataset import Case, EvalSet
from vald.eval.fid import fid
from vald.eval.inception import InceptionFeatures
from vald.eval.metrics import attribution_scores, localisation_scores, ms_ssim, ssim
from vald.imageio import Letterbox, read_image
from vald.manifest import sha256_file
from vald.outputs import write_atomic

F32 = NDArray[np.float32]
Log = Callable[[str], None]
FID_SKIPPED = "no --inception weights file given (FID needs the standard FID Inception-v3 weights)"


def _model_view(path: Path, size: int) -> F32:
    image = read_image(path)
    return Letterbox.fit(image.shape, size).to_model(image)


def _mask_view(case: Case, image_shape: tuple[int, ...], size: int, index: int) -> NDArray[np.bool_]:
    """The case's lesion mask at the model's size; InputError unless it can be scored.

    A mask of another size than its image is resampled only when it has the image's aspect ratio (the
    COVID-19 Radiography Database ships 256² masks for 299² images); its region must survive that.
    """
    assert case.mask is not None
    mask = read_image(case.mask)
    where = f"case #{index} ({case.label}): its mask"
    (mh, mw), (ih, iw) = mask.shape, image_shape[:2]
    if abs(mw / mh - iw / ih) > 0.01 * (iw / ih):
        raise InputError(f"{where} is {mw}x{mh}, its image {iw}x{ih}: not the same aspect ratio")
    region = Letterbox.fit(mask.shape, size).to_model(mask) > 0.5
    if not 0 < region.sum() < region.size:
        what = "empty" if not np.any(mask > 0.5) else "all lesion" if np.all(mask > 0.5) else "lost when resampled"
        raise InputError(f"{where} ({mw}x{mh}) has no usable region at the model's {size}x{size}: {what}")
    return region


def _case_metrics(
    case: Case, x: F32, cf: F32, signed: F32, size: int, image_shape: tuple[int, ...], index: int
) -> dict[str, float]:
    row = {"ssim_input_cf": ssim(x, cf), "ms_ssim_input_cf": ms_ssim(x, cf)}
    twin = _model_view(case.twin, size) if case.twin else None
    mask = _mask_view(case, image_shape, size, index) if case.mask else None
    if twin is not None:
        row |= {"ssim_cf_twin": ssim(cf, twin), "ms_ssim_cf_twin": ms_ssim(cf, twin)}
    if mask is not None:
        row |= attribution_scores(x, twin, mask, cf, signed) if twin is not None else localisation_scores(signed, mask)
    return row


def _classifier_metrics(classifier: Classifier, label: str, x: F32, cf: F32) -> dict[str, float]:
    before, after = classifier.predict([x, cf])
    return {
        "input_called_normal": float(before.label == classifier.normal),
        "flipped_to_normal": float(after.label == classifier.normal),
        "prediction_gain": classifier.abnormal_probability(before, label)
        - classifier.abnormal_probability(after, label),
    }


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every metric over the rows that have it (a case without a usable mask has no AUROC)."""
    keys = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, float))
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}


def evaluate(
    data: EvalSet,
    engines_dir: Path,
    cfg: RunConfig,
    out: Path,
    *,
    inception: InceptionFeatures | None = None,
    classifier: Classifier | None = None,
    environment: dict[str, Any] | None = None,
    log: Log = print,
    executor: Executor | None = None,
) -> Path:
    """Run the evaluation; returns the path of ``eval.json``.

    ``executor``: where the counterfactuals are computed (a Ray executor for ``vald eval --cluster``); by
    default a worker in this process.  The metrics are computed here, in the cases' order.
    """
    started = time.perf_counter()
    local = executor is None
    runner = LocalExecutor(WorkerSpec(engines_dir, cfg, DEFAULT_OUTPUTS, None)) if executor is None else executor
    # a local worker has verified and opened the engines already; a cluster's driver verifies them here
    provenance = runner.worker.provenance if isinstance(runner, LocalExecutor) else describe_engines(engines_dir, cfg)
    size = int(provenance["model"]["image_size"])
    in_flight: dict[int, tuple[Case, F32, tuple[int, ...]]] = {}

    def tasks() -> Iterator[Task]:
        for k, case in enumerate(data.abnormal, start=1):
            image = read_image(case.image)
            x = Letterbox.fit(image.shape, size).to_model(image)
            in_flight[k] = (case, x, image.shape)
            yield Task(k, x, "counterfactual")

    rows: list[dict[str, Any]] = []
    counterfactuals: dict[str, list[tuple[int, F32]]] = {}
    try:
        for outcome in runner.map(tasks()):
            case, x, shape = in_flight.pop(outcome.index)
            if not isinstance(outcome.value, tuple):
                raise ClusterError(f"case #{outcome.index} ({case.label}): {outcome.error}")
            cf, signed = outcome.value
            row: dict[str, Any] = {"index": outcome.index, "class": case.label}
            row["image_sha256"] = sha256_file(case.image)[:16]
            row |= _case_metrics(case, x, cf, signed, size, shape, outcome.index)
            if classifier is not None:
                row |= _classifier_metrics(classifier, case.label, x, cf)
            rows.append(row)
            counterfactuals.setdefault(case.label, []).append((outcome.index, cf))
            log(f"eval: [{len(rows)}/{len(data.abnormal)}] {case.label}")
    finally:
        if local:
            runner.close()
    rows.sort(key=lambda row: int(row["index"]))
    counterfactuals = {label: sorted(pairs, key=lambda p: p[0]) for label, pairs in counterfactuals.items()}
    table = {label: {"n": float(len(group)), **_mean(group)} for label in data.classes for group in [_of(rows, label)]}
    table["overall"] = {"n": float(len(rows)), **_mean(rows)}
    fid_info = _fid(data, {k: [cf for _, cf in v] for k, v in counterfactuals.items()}, inception, size, table)
    report = {
        "caution": "research use; not for diagnostic use",
        "dataset": {"classes": data.classes, "abnormal": len(data.abnormal), "normal": len(data.normal)},
        "settings": {k: str(v) for k, v in vars(cfg).items() if "prompt" not in k},
        "fid": fid_info,
        "classifier": None if classifier is None else {"classes": classifier.classes, "input_size": classifier.size},
        "table": table,
        "rows": rows,
        "engines": {k: provenance.get(k) for k in ("model_sha256", "engine_files_sha256", "sessions", "schedule")},
        "executor": runner.name,
        "environment": environment or {},
        "seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    write_atomic(path, (strictjson.dumps(report, indent=1) + "\n").encode())
    write_atomic(out / "eval.md", markdown(report).encode())
    return path


def _of(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["class"] == label]


def _fid(
    data: EvalSet,
    counterfactuals: dict[str, list[F32]],
    inception: InceptionFeatures | None,
    size: int,
    table: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """FID of each class's counterfactuals (and all of them) against the real normals, into ``table``."""
    if inception is None:
        return {"computed": False, "reason": FID_SKIPPED}
    normals = inception([_model_view(c.image, size) for c in data.normal])
    every = []
    for label, images in counterfactuals.items():
        features = inception(images)
        every.append(features)
        table[label]["fid"] = fid(features, normals) if len(images) >= 2 else math.nan
    table["overall"]["fid"] = fid(np.concatenate(every), normals)
    return {"computed": True, "reference": "real Normal class", "normal_images": len(data.normal), "size": size}


COLUMNS = (
    ("n", "n", "{:.0f}"),
    ("fid", "FID", "{:.1f}"),
    ("ssim_input_cf", "SSIM in-cf", "{:.3f}"),
    ("ms_ssim_input_cf", "MS-SSIM in-cf", "{:.3f}"),
    ("ssim_cf_twin", "SSIM cf-twin", "{:.3f}"),
    ("ms_ssim_cf_twin", "MS-SSIM cf-twin", "{:.3f}"),
    ("auroc", "AUROC", "{:.3f}"),
    ("dice_otsu", "Dice (Otsu)", "{:.3f}"),
    ("ncc", "NCC", "{:.3f}"),
    ("removal", "removal", "{:.2f}"),
    ("flipped_to_normal", "flip rate", "{:.2f}"),
    ("prediction_gain", "prediction gain", "{:.3f}"),
)


def markdown(report: dict[str, Any]) -> str:
    """The per-class table (columns that have values), with what FID and the classifier were."""
    table: dict[str, dict[str, float]] = report["table"]
    present = [c for c in COLUMNS if any(c[0] in row for row in table.values())]
    lines = ["| class | " + " | ".join(c[1] for c in present) + " |", "|---|" + "---|" * len(present)]
    for label, row in table.items():
        cells = [fmt.format(row[key]) if key in row and row[key] == row[key] else "" for key, _, fmt in present]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fid_info = report["fid"]
    notes = [f"FID: {'against the real Normal class' if fid_info['computed'] else fid_info['reason']}."]
    if report["classifier"] is None:
        notes.append("Classifier check: no --classifier given.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"

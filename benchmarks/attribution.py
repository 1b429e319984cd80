"""Attribution quality of the shipped model on held-out phantoms, with baselines and a strength/guidance sweep.

    python benchmarks/attribution.py --engines engines/demo --per-type 40 --out benchmarks/results

Writes ``attribution.json`` (per-type tables, settings, environment), ``attribution.md``
(the table for the README) and ``sweep.png`` (removal vs collateral change).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vald.app import open_engines, versions
from vald.config import RunConfig
from vald_train.evaluate import Method, blur_baseline, cases, runtime_method, score, summarise, vae_baseline
from vald_train.phantoms import Finding

FINDING = {  # the finding's own text for paired-noise / prompted inversion: a generic report per type
    "consolidation": "consolidation",
    "nodule": "nodule",
    "effusion": "pleural effusion",
    "cardiomegaly": "cardiomegaly",
}


def methods(engines_dir: Path, base: RunConfig) -> dict[str, tuple[Method, RunConfig | None]]:
    """Name -> (method, settings) for every mode and baseline in the table."""
    engines, _ = open_engines(engines_dir, base)
    out: dict[str, tuple[Method, RunConfig | None]] = {}
    for name, cfg in {
        "inversion (ref. reconstruction, default)": base.replace(mode="inversion", reference="reconstruction"),
        "img2img": base.replace(mode="img2img"),
        "img2img (ref. autoencoder)": base.replace(mode="img2img", reference="autoencoder"),
    }.items():
        out[name] = (runtime_method(engines, cfg), cfg)
    out["VAE reconstruction"] = (vae_baseline(engines), None)
    out["input - blurred input"] = (blur_baseline(), None)
    return out


def precision_methods(int8_engines: Path, base: RunConfig) -> dict[str, tuple[Method, RunConfig | None]]:
    """The default and the fast preset at OpenVINO bf16 and int8 (an engine folder `vald quantize` wrote)."""
    out: dict[str, tuple[Method, RunConfig | None]] = {}
    for label, cfg in {
        "default @ openvino bf16": base.replace(backend="openvino", precision="bf16"),
        "default @ openvino int8": base.replace(backend="openvino", precision="int8"),
        "fast preset @ onnxruntime fp32": base.with_preset("fast"),
        "fast preset @ openvino bf16": base.with_preset("fast").replace(backend="openvino", precision="bf16"),
        "fast preset @ openvino int8": base.with_preset("fast").replace(backend="openvino", precision="int8"),
    }.items():
        engines, _ = open_engines(int8_engines, cfg)
        out[label] = (runtime_method(engines, cfg), cfg)
    return out


def paired_rows(engines_dir: Path, base: RunConfig, per_type: int, size: int, mode: str) -> list[dict[str, Any]]:
    """Modes that need the finding's text: each case gets its own report as ``finding_prompt``."""
    engines, _ = open_engines(engines_dir, base)
    rows = []
    for p in cases(per_type, size):
        prompt = p.report if p.finding.kind is not Finding.NORMAL else "nodule"
        cfg = base.replace(mode=mode, finding_prompt=prompt, average=3 if mode == "paired" else 1)
        rows += score(runtime_method(engines, cfg), [p])
    return rows


def induction(engines_dir: Path, size: int, count: int = 30) -> dict[str, Any]:
    """``vald induce`` at its defaults, per finding type, in two protocols.

    ``own anatomy``: an abnormal phantom's mask and report applied to its normal twin (the same anatomy), so
    the true change inside the mask is known: ``true_contrast`` is the finding's own mean contrast there.
    ``borrowed mask``: the mask and report of one phantom applied to another, normal phantom, whose lungs
    need not be where the mask is (as when a user draws a region freehand).
    """
    import numpy as np

    from vald.config import INDUCE_DEFAULTS
    from vald.eval.metrics import ssim_map
    from vald.induce import induce
    from vald_train.data import held_out_seeds
    from vald_train.phantoms import make_phantom

    engines, _ = open_engines(engines_dir, INDUCE_DEFAULTS)
    kinds = (Finding.CONSOLIDATION, Finding.NODULE, Finding.EFFUSION)

    def measure(base: Any, donor: Any) -> dict[str, float]:
        mask = donor.mask.astype(np.float32)
        out = induce(engines, base, mask, INDUCE_DEFAULTS.replace(prompt=donor.report))
        change = out.image - base
        return {
            "change_inside": float(change[mask > 0].mean()),
            "true_contrast": float(donor.difference[donor.mask].mean()),
            "change_outside": float(np.abs(change[out.mask == 0]).mean()),
            "ssim_outside": float(ssim_map(out.image, base)[out.mask == 0].mean()),
        }

    rows: dict[str, list[tuple[str, dict[str, float]]]] = {"own anatomy": [], "borrowed mask": []}
    for k, seed in enumerate(held_out_seeds(count, Finding.NORMAL, offset=600)):
        kind = kinds[k % 3]
        donor = make_phantom(held_out_seeds(count, kind, offset=600)[k], size, kind)
        rows["own anatomy"].append((kind.value, measure(donor.twin, donor)))
        rows["borrowed mask"].append((kind.value, measure(make_phantom(seed, size, Finding.NORMAL).abnormal, donor)))

    def mean(group: list[dict[str, float]]) -> dict[str, float]:
        return {key: float(np.mean([r[key] for r in group])) for key in group[0]} | {"n": float(len(group))}

    return {
        "settings": {"strength": INDUCE_DEFAULTS.strength, "guidance": INDUCE_DEFAULTS.guidance},
        **{
            protocol: {kind.value: mean([r for name, r in found if name == kind.value]) for kind in kinds}
            | {"overall": mean([r for _, r in found])}
            for protocol, found in rows.items()
        },
    }


def uncertainty(engines_dir: Path, size: int, per_type: int = 10, seeds: int = 4) -> dict[str, float]:
    """Is the per-seed spread high where the map is wrong?  img2img averaged over ``seeds`` seeds.

    Per abnormal phantom: AUROC of the per-pixel std for the pixels whose error |M - true map| is in the
    top decile, and the rank correlation of std and error over all pixels.
    """
    import numpy as np
    from scipy.stats import spearmanr

    from vald.attribution import attribute
    from vald.eval.metrics import pixel_auroc

    cfg = RunConfig(mode="img2img", average=seeds)  # type: ignore[arg-type]
    engines, _ = open_engines(engines_dir, cfg)
    rows = []
    for p in cases(per_type, size, offset=300):
        if p.finding.kind is Finding.NORMAL:
            continue
        result = attribute(engines, p.abnormal, cfg)
        assert result.uncertainty is not None
        error = np.abs(result.signed_map - p.difference)
        rows.append(
            {
                "auroc_top_decile_error": pixel_auroc(result.uncertainty, error > np.quantile(error, 0.9)),
                "spearman": float(spearmanr(result.uncertainty.ravel(), error.ravel()).statistic),
                "mean_std": float(result.uncertainty.mean()),
            }
        )
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"n": float(len(rows)), "seeds": seeds}


SWEEP_MODES = {"img2img": {"mode": "img2img"}, "inversion": {"mode": "inversion", "reference": "reconstruction"}}


def sweep(engines_dir: Path, base: RunConfig, size: int, out: Path, per_type: int = 6) -> list[dict[str, Any]]:
    """Strength × guidance grid per mode on a separate held-out set: removal and AUROC vs change on normals.

    Every step guided (``guidance_min_t=0``): strengths 0.3 and 0.5 start below the default interval.
    """
    points = []
    engines, _ = open_engines(engines_dir, base)
    phantoms = cases(per_type, size, offset=500)
    for mode, settings in SWEEP_MODES.items():
        for strength in (0.3, 0.5, 0.7):
            for guidance in (2.0, 5.0, 8.0):
                cfg = base.replace(**settings, strength=strength, guidance=guidance, guidance_min_t=0)
                table = summarise(score(runtime_method(engines, cfg), phantoms))
                point = {"mode": mode, "strength": strength, "guidance": guidance}
                points.append({**point, **table["overall"], **table["normal"]})
                print(
                    f"sweep {mode} s={strength} g={guidance}: AUROC {table['overall']['auroc']:.3f} "
                    f"NCC {table['overall']['ncc']:.3f} removal {table['overall']['removal']:.2f} "
                    f"normal change {table['normal']['change_normal']:.4f}",
                    flush=True,
                )
    _plot(points, out / "sweep.png")
    return points


INTERVAL_GRID = {"guidance": (5.0, 7.0, 9.0), "guidance_min_t": (0, 300, 450, 600)}
TARGETS = {"auroc": 0.92, "ncc": 0.6, "removal": 0.6}  # the issue's, per finding type; change on normals <= 0.02


def interval_sweep(engines_dir: Path, base: RunConfig, size: int, per_type: int = 8) -> dict[str, Any]:
    """Guidance × guidance interval for the default mode on the sweep's held-out set, per finding type.

    Each point counts the targets it meets (three per finding type, and the change on normals) and its
    worst relative margin over them; ``chosen`` is the point that meets the most, then has the largest
    worst margin (the setting least likely to lose a target on another set).
    """
    engines, _ = open_engines(engines_dir, base)
    phantoms = cases(per_type, size, offset=500)
    points = []
    for guidance in INTERVAL_GRID["guidance"]:
        for min_t in INTERVAL_GRID["guidance_min_t"]:
            cfg = base.replace(guidance=guidance, guidance_min_t=min_t)
            table = summarise(score(runtime_method(engines, cfg), phantoms))
            margins = [
                (table[k.value][m] - v) / v for k in Finding if k is not Finding.NORMAL for m, v in TARGETS.items()
            ]
            margins.append((0.02 - table["normal"]["change_normal"]) / 0.02)
            met = [m for m in margins if m >= 0]
            point = {
                "guidance": guidance,
                "guidance_min_t": min_t,
                "targets_met": len(met),
                "worst_margin": min(met, default=0.0),
                "per_type": table,
            }
            points.append(point)
            print(
                f"interval g={guidance} min_t={min_t}: targets met {len(met)}/13 (worst margin "
                f"{point['worst_margin']:.1%}), overall AUROC {table['overall']['auroc']:.3f} NCC "
                f"{table['overall']['ncc']:.3f} removal {table['overall']['removal']:.2f} normal change "
                f"{table['normal']['change_normal']:.4f}",
                flush=True,
            )
    best = max(points, key=lambda p: (p["targets_met"], p["worst_margin"]))
    return {"chosen": {"guidance": best["guidance"], "guidance_min_t": best["guidance_min_t"]}, "points": points}


def _plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({p["mode"] for p in points})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), dpi=110, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for strength in sorted({p["strength"] for p in points}):
            row = [p for p in points if p["strength"] == strength and p["mode"] == mode]
            xs, ys = [p["change_normal"] for p in row], [p["removal"] for p in row]
            ax.plot(xs, ys, "o-", label=f"strength {strength}")
            for p in row:
                ax.annotate(f"g={p['guidance']:g}", (p["change_normal"], p["removal"]), fontsize=7)
        ax.set_xlabel("mean |input - counterfactual| on normal inputs (collateral change)")
        ax.set_ylabel("removal inside the lesion mask (1 = fully removed)")
        ax.set_title(f"{mode}: strength × guidance (held-out phantoms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    _palette_png(path)


def _palette_png(path: Path) -> None:
    """Re-save a plot with a 64-colour palette (a third of the bytes; the repository stays small)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def markdown(tables: dict[str, dict[str, dict[str, float]]], induced: dict[str, Any] | None = None) -> str:
    """Per-method, per-type table of AUROC / Dice / NCC / removal, change on normals, and the induction."""
    lines = [
        "| method | finding | AUROC | Dice (Otsu) | NCC | removal | change outside | SSIM cf-twin | MS-SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, table in tables.items():
        for kind in [k.value for k in Finding if k is not Finding.NORMAL] + ["overall"]:
            t = table.get(kind)
            if t is None:
                continue
            lines.append(
                f"| {name} | {kind} | {t['auroc']:.3f} | {t['dice_otsu']:.3f} | {t['ncc']:.3f} | {t['removal']:.2f} "
                f"| {t['change_outside']:.4f} | {t['ssim_cf_twin']:.3f} | {t['ms_ssim_cf_twin']:.3f} |"
            )
    lines += ["", "| method | mean abs change on normal inputs | SSIM(cf, input) on normals |", "|---|---|---|"]
    for name, table in tables.items():
        if "normal" in table:
            lines.append(
                f"| {name} | {table['normal']['change_normal']:.4f} | {table['normal']['ssim_cf_input']:.3f} |"
            )
    if induced and "own anatomy" in induced:
        lines += ["", "| induction | finding | change inside | true contrast | SSIM outside | n |"]
        lines += ["|---|---|---|---|---|---|"]
        for protocol in ("own anatomy", "borrowed mask"):
            for kind, r in induced[protocol].items():
                lines.append(
                    f"| {protocol} | {kind} | {r['change_inside']:+.3f} | {r['true_contrast']:.3f} "
                    f"| {r['ssim_outside']:.5f} | {r['n']:.0f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, default=Path("engines/demo"))
    parser.add_argument("--per-type", type=int, default=40, help="held-out phantoms per finding type (5 types)")
    parser.add_argument("--paired-per-type", type=int, default=40, help="the same for paired-noise (3 seeds: slow)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument(
        "--int8-engines",
        type=Path,
        help="also the default and the fast preset at OpenVINO bf16 and int8 from this folder (`make quantize-demo`)",
    )
    parser.add_argument("--sweep-only", action="store_true", help="only the strength × guidance sweep")
    parser.add_argument(
        "--interval-sweep", action="store_true", help="only the guidance × guidance-interval grid (interval_sweep.json)"
    )
    parser.add_argument(
        "--induction-only", action="store_true", help="re-measure only the induction; keep the rest of the JSON"
    )
    parser.add_argument(
        "--only", help="re-measure only the methods whose name contains this; keep the rest of the JSON"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = RunConfig()
    engines, provenance = open_engines(args.engines, base)
    size = engines.model.image_size
    if args.interval_sweep:
        grid = interval_sweep(args.engines, base, size)
        (args.out / "interval_sweep.json").write_text(json.dumps(grid, indent=2) + "\n", encoding="utf-8")
        return
    if args.sweep_only:
        points = sweep(args.engines, base, size, args.out)
        (args.out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n", encoding="utf-8")
        return
    started = time.perf_counter()
    tables: dict[str, dict[str, dict[str, float]]] = {}
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "partial": True,
        "held_out_per_type": args.per_type,
        "paired_held_out_per_type": args.paired_per_type,
        "defaults": {k: str(v) for k, v in vars(base).items() if "prompt" not in k},
        "tables": tables,
        "seconds_per_method": {},
        "environment": {**versions(), "machine": platform.machine(), "processor": platform.processor()},
        **provenance,
    }

    def save() -> None:  # after every method, so an interrupted run keeps what it measured
        report["total_seconds"] = time.perf_counter() - started
        (args.out / "attribution.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (args.out / "attribution.md").write_text(markdown(tables, report.get("induction")), encoding="utf-8")

    if args.induction_only:
        report = json.loads((args.out / "attribution.json").read_text(encoding="utf-8"))
        report["induction"] = induction(args.engines, size)
        (args.out / "attribution.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (args.out / "attribution.md").write_text(markdown(report["tables"], report["induction"]), encoding="utf-8")
        print(json.dumps(report["induction"], indent=2))
        return
    if args.only:  # update an earlier report in place
        report = json.loads((args.out / "attribution.json").read_text(encoding="utf-8"))
        report["partial"] = True
        tables = report["tables"]
    else:
        report["induction"] = induction(args.engines, size)
        print(f"induction: {report['induction']}", flush=True)
        report["uncertainty"] = uncertainty(args.engines, size)
        print(f"uncertainty: {report['uncertainty']}", flush=True)
    runs = {
        name: (lambda m=method: score(m, cases(args.per_type, size)))
        for name, (method, _) in methods(args.engines, base).items()
    }
    runs["paired-noise (report as finding prompt, 3 seeds)"] = lambda: paired_rows(
        args.engines, base, args.paired_per_type, size, "paired"
    )
    if args.int8_engines:
        for name, (method, _) in precision_methods(args.int8_engines, base).items():
            runs[name] = lambda m=method: score(m, cases(args.per_type, size))
    for name, run in runs.items():
        if args.only and args.only not in name:
            continue
        t0 = time.perf_counter()
        tables[name] = summarise(run())
        report["seconds_per_method"][name] = time.perf_counter() - t0
        print(
            f"{name}: overall AUROC {tables[name]['overall']['auroc']:.3f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        save()
    if args.only:
        report["partial"] = False
        report["paired_held_out_per_type"] = args.paired_per_type
        save()
        return
    points = [] if args.no_sweep else sweep(args.engines, base, size, args.out)
    if args.no_sweep and (args.out / "sweep.json").is_file():  # a sweep run earlier with --sweep-only
        points = json.loads((args.out / "sweep.json").read_text(encoding="utf-8"))
    report["sweep"], report["partial"] = points, False
    save()
    print(markdown(tables, report.get("induction")))


if __name__ == "__main__":
    main()

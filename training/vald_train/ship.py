"""Assemble ``engines/demo`` from a finished training run.

    python -m vald_train.ship WORK --out engines/demo

The folder holds: the FP32 ONNX graphs and ``manifest.json`` made by ``vald export``;
``model/``, the diffusers folder they were exported from (weights stored as FP16
safetensors to keep the folder small; every backend computes in FP32 from those
same values, so ONNX and the torch reference agree); ``samples/`` (held-out
phantoms as PNG and DICOM, with their labels and an induction mask); and
``training/`` (recipe, loss curves, log).  It is built in a staging folder and
renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vald import strictjson
from vald.config import Precision
from vald_train.data import held_out_seeds
from vald_train.dataset import write_dicom
from vald_train.phantoms import Finding, make_phantom

LOSS_CURVES = (("vae_loss.csv", "l1"), ("unet_loss.csv", "mse"), ("decoder_loss.csv", "l1"))
SAMPLE_SIZE = 256  # larger than the model: the runtime's resize path is exercised


def half_precision_copy(model: Path, out: Path) -> Path:
    """Copy a diffusers folder with its network weights rounded to FP16 (halves the size)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel

    shutil.copytree(model, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    AutoModel.from_pretrained(model / "text_encoder").half().save_pretrained(out / "text_encoder")
    UNet2DConditionModel.from_pretrained(model / "unet").half().save_pretrained(out / "unet")
    AutoencoderKL.from_pretrained(model / "vae").half().save_pretrained(out / "vae")
    return out


def write_samples(out: Path) -> None:
    """One held-out phantom per finding type (PNG + DICOM), labels, and a mask for ``vald induce``."""
    out.mkdir(parents=True)
    rows = []
    for k, kind in enumerate(Finding):
        seed = held_out_seeds(1, kind, offset=990)[0]
        p = make_phantom(seed, SAMPLE_SIZE, kind)
        name = f"{kind.value}"
        Image.fromarray(np.round(p.abnormal * 65535).astype(np.uint16)).save(out / f"{name}.png")
        Image.fromarray((p.mask * 255).astype(np.uint8)).save(out / f"{name}_mask.png")
        write_dicom(p, out / f"{name}.dcm", monochrome1=k % 2 == 1)
        rows.append([f"{name}.png", kind.value, p.finding.side or "", p.finding.zone or "", p.report, seed])
    mask = np.zeros((SAMPLE_SIZE, SAMPLE_SIZE), np.uint8)
    y, x = np.mgrid[0:SAMPLE_SIZE, 0:SAMPLE_SIZE] / SAMPLE_SIZE
    mask[((x - 0.7) / 0.09) ** 2 + ((y - 0.62) / 0.08) ** 2 <= 1] = 255  # patient's left lower zone
    Image.fromarray(mask).save(out / "induce_mask_left_lower_zone.png")
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "finding", "side", "zone", "report", "phantom_seed"])
        writer.writerows(rows)


def plot_losses(training: Path) -> None:
    """``loss.png``: VAE L1, UNet MSE and decoder fine-tune L1 per step (with a running mean), those present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(n, k) for n, k in LOSS_CURVES if (training / n).is_file()]
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), dpi=110, squeeze=False)
    for ax, (name, key) in zip(axes[0], curves, strict=True):
        with (training / name).open(encoding="utf-8") as fh:
            values = np.array([float(r[key]) for r in csv.DictReader(fh)])
        run = np.convolve(values, np.ones(50) / 50, mode="valid")
        ax.plot(values, alpha=0.3, lw=0.6)
        ax.plot(np.arange(len(run)) + 49, run, lw=1.5)
        ax.set_yscale("log")
        ax.set_title(f"{name.split('_')[0].upper()} training {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(training / "loss.png")


def ship(work: Path, out: Path, log: Any = print) -> Path:
    """Build the demo engine folder from ``work`` (a finished ``python -m vald_train`` run)."""
    from vald_export.export import export_model
    from vald_export.f16pack import pack_file

    stage = out.parent / f".{out.name}.ship"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    half = half_precision_copy(work / "model", stage / "model")
    recipe = json.loads((work / "recipe.json").read_text(encoding="utf-8"))
    exported = stage / "onnx"
    export_model(half, exported, precisions=(Precision.FP32,), max_length=recipe["arch"]["max_length"], log=log)
    for item in exported.iterdir():
        shutil.move(str(item), stage / item.name)
    exported.rmdir()
    manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    manifest["source"]["path"] = "model"  # bundled: the torch reference finds it beside the manifest
    (stage / "manifest.json").write_text(strictjson.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for graph in sorted((stage / "fp32").glob("*.onnx")):  # tracked packed; `make setup` unpacks them
        pack_file(graph)
    write_samples(stage / "samples")
    training = stage / "training"
    training.mkdir()
    for name in ("recipe.json", "train.log", *(n for n, _ in LOSS_CURVES)):
        if (work / name).exists():
            shutil.copy2(work / name, training / name)
    plot_losses(training)
    if (work / "previous").is_dir():  # a run continued with --init-from: the stages before it
        shutil.copytree(work / "previous", training / "previous")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m vald_train.ship", description=__doc__)
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=Path("engines/demo"))
    args = parser.parse_args(argv)
    print(ship(args.work, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``vald`` command line's arguments: one parser per command, the flags they share (:mod:`vald.cli` runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vald.config import (
    EXPORT_PRECISIONS,
    PRESETS,
    SEG_TYPES,
    Backend,
    Loop,
    Mode,
    Precision,
    Provider,
    Reference,
    SchedulerKind,
)

DEFAULT_ENGINES = Path("engines/demo")
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engines",
        type=Path,
        default=DEFAULT_ENGINES,
        help="engine folder written by `vald export` (default engines/demo)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per input, named by hash)")
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    p.add_argument("--model", type=Path, help="source diffusers folder for --backend torch")
    p.add_argument("--strength", type=float, help="fraction of the schedule re-noised, (0, 1]")
    p.add_argument("--steps", type=int, help="sampler steps of the full schedule (default 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale >= 1")
    p.add_argument(
        "--guidance-min-t",
        type=int,
        help="guide only at UNet timesteps >= this; below, the prompt alone steers (default 600; 0: every step)",
    )
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default 0)")
    p.add_argument("--negative-prompt", help="negative / unconditional prompt (default empty)")
    p.add_argument("--seed", type=int, help="noise seed (default 0)")
    p.add_argument("--scheduler", choices=[s.value for s in SchedulerKind])
    p.add_argument("--backend", choices=[b.value for b in Backend])
    p.add_argument("--provider", choices=[x.value for x in Provider])
    p.add_argument(
        "--precision", choices=[x.value for x in Precision], help="fp32 (default), fp16, bf16 (openvino, torch)"
    )
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default 0: one per available CPU)")
    p.add_argument("--cuda-graph", action="store_true", default=None, help="provider cuda: run the UNet as CUDA graphs")
    p.add_argument("--unet-batch", type=int, help="most latents per UNet call (default 0: a step's all in one call)")
    p.add_argument(
        "--loop",
        choices=[x.value for x in Loop],
        help="where the sampler's arithmetic runs: host (default, numpy) or device arrays (cupy on cuda, torch)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output (failures are still reported)")
    p.add_argument("--any-modality", action="store_true", help="accept DICOM modalities other than CR and DX")
    p.add_argument("--no-dicom-out", action="store_true", help="no derived DICOM objects for DICOM inputs")
    p.add_argument("--segmentation", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1: kept
    p.add_argument(
        "--no-segmentation", action="store_true", help="no DICOM Segmentation of the map's region (and so no SR)"
    )
    p.add_argument("--no-sr", action="store_true", help="no Structured Report (TID 1500) beside the Segmentation")
    p.add_argument("--no-pmap", action="store_true", help="no DICOM Parametric Map of the signed map M")
    p.add_argument(
        "--seg-type",
        choices=SEG_TYPES,
        default="binary",
        help="binary: |M| >= half the colour limit (OHIF shows it; default); fractional: |M| scaled (Weasis, Slicer)",
    )


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="normal counterfactuals and attribution maps of images, DICOM files or folders")
    p.add_argument(
        "inputs", type=Path, nargs="+", metavar="FOLDER_OR_FILE", help="DICOM (CR/DX), PNG, JPEG or TIFF; folders"
    )
    _common(p)
    p.add_argument("--force", action="store_true", help="redo inputs already finished with the same settings")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--prompt", help="target (normal) prompt")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="img2img, inversion (default) or paired")
    p.add_argument(
        "--reference", choices=[r.value for r in Reference], help="map against the input or the reconstruction"
    )
    p.add_argument("--finding-prompt", help="the finding's text (paired: required; inversion: inversion prompt)")
    p.add_argument("--average", type=int, help="seeds averaged in img2img/paired (default 1); adds uncertainty.npy")
    p.add_argument(
        "--keep-mask", type=Path, help="mask at the input's size; its white region is held unchanged (one input)"
    )
    _cluster_flags(p)
    _preset_flag(p)
    p = sub.add_parser("induce", help="add a named finding inside a mask (masked img2img)")
    p.add_argument("image", type=Path, help="input image: DICOM (CR/DX), PNG, JPEG or TIFF")
    p.add_argument("--mask", type=Path, required=True, help="mask image, same size as the input; white = inside")
    p.add_argument("--prompt", required=True, help="the finding to add, e.g. 'left lower zone consolidation'")
    _common(p)


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify", help="re-hash every engine file against the manifest, ignoring start-up stamps, and renew them"
    )
    p.add_argument(
        "engines", type=Path, nargs="?", default=DEFAULT_ENGINES, help="engine folder (default engines/demo)"
    )


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, memory and accuracy of every available backend and precision against the PyTorch reference",
    )
    p.add_argument("--engines", type=Path, default=DEFAULT_ENGINES, help="engine folder (default engines/demo)")
    p.add_argument("--model", type=Path, help="its diffusers folder, for the torch and diffusers contenders")
    p.add_argument("--name", help="the model's name in the table (default: the engine folder's name)")
    p.add_argument("--image", type=Path, help="input image (default: the engine folder's first sample, if any)")
    p.add_argument("--size", type=int, action="append", help="model resolution in pixels, repeatable (default: native)")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="warm runs per contender after the cold one (default 3; 0: the cold run only)",
    )
    p.add_argument("--contenders", help="comma-separated names (default: all available; see the README)")
    p.add_argument("--quick", action="store_true", help="leave out the slowest CPU contenders (FP16 graphs, ...)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON and table go")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per contender (default 3600)")
    for name, kind, text in (
        ("--mode", str, "img2img, inversion (default) or paired; diffusers runs only with img2img"),
        ("--steps", int, "sampler steps of the full schedule"),
        ("--strength", float, "fraction of the schedule re-noised"),
        ("--guidance", float, "classifier-free guidance scale"),
        ("--guidance-min-t", int, "guide only at UNet timesteps >= this (0: every step, as diffusers)"),
        ("--seed", int, "noise seed"),
        ("--threads", int, "intra-op threads for every contender (default: one per available CPU)"),
        ("--config", Path, "TOML file of run settings"),
    ):
        p.add_argument(name, type=kind, help=text)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named preset's settings under the flags above")


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="FID, SSIM/MS-SSIM, attribution metrics and a classifier check of the counterfactuals of a data set",
    )
    p.add_argument("dataset", type=Path, help="folder in the COVID-19 Radiography Database layout (<Class>/images)")
    p.add_argument("--engines", type=Path, default=DEFAULT_ENGINES, help="engine folder (default engines/demo)")
    p.add_argument("--out", type=Path, required=True, help="where eval.json and eval.md go")
    p.add_argument("--inception", type=Path, help=f"local copy of the FID Inception weights ({FID_WEIGHTS})")
    p.add_argument("--classifier", type=Path, help="ONNX classifier for the flip-rate check (see the README)")
    p.add_argument("--per-class", type=int, help="use the first N images of each class (default: all)")
    p.add_argument("--config", type=Path, help="TOML file of run settings")
    p.add_argument("--prompt", help="target (normal) prompt")
    p.add_argument("--mode", choices=[m.value for m in Mode])
    p.add_argument("--reference", choices=[r.value for r in Reference])
    for name, kind in (("--strength", float), ("--steps", int), ("--guidance", float), ("--seed", int)):
        p.add_argument(name, type=kind)
    p.add_argument("--guidance-min-t", type=int)
    p.add_argument("--average", type=int)
    p.add_argument("--backend", choices=[b.value for b in Backend])
    p.add_argument("--provider", choices=[x.value for x in Provider])
    p.add_argument("--precision", choices=[x.value for x in Precision])
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    _cluster_flags(p)
    _preset_flag(p)


def _preset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="settings chosen by measurement: fast = fewest UNet evaluations within the default's quality "
        "(docs/running.md); other flags override it",
    )


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="compute on a Ray cluster: the head's HOST:PORT, or auto (this machine's); needs vald[cluster]",
    )
    p.add_argument("--workers", type=int, default=1, help="--cluster: Ray workers, each with --threads threads (1)")
    p.add_argument(
        "--cluster-bind",
        metavar="IP",
        help="--cluster: this machine's IPv4 address in the cluster; Ray's listeners in this process bind to it "
        "alone (vald restarts itself under libvald_bind; docs/cluster.md)",
    )


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="diffusers folder -> ONNX engines + manifest (needs vald[export])")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--max-length",
        type=int,
        help="prompt tokens (default: the tokenizer's model_max_length when <= 512, else 77)",
    )
    p.add_argument("--precision", action="append", choices=[x.value for x in EXPORT_PRECISIONS], help="repeatable")
    p = sub.add_parser(
        "build", help="exported ONNX graphs -> native TensorRT engines (needs an NVIDIA GPU, TensorRT, cuda-python)"
    )
    p.add_argument("engines", type=Path, help="engine folder written by `vald export`")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="default fp16 (checked per component)")
    p.add_argument("--profile", choices=["static", "dynamic"], default="static", help="optimisation profiles")
    p.add_argument("--size", type=int, help="model resolution in pixels (default: the model's)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="the run settings' mode whose shapes to cover")
    p.add_argument("--config", type=Path, help="TOML file of run settings whose shapes to cover")
    p = sub.add_parser(
        "quantize",
        help="the UNet in int8 for --backend openvino --precision int8, calibrated on the model's own "
        "trajectories for the given images (needs vald[quantize])",
    )
    p.add_argument("engines", type=Path, help="engine folder written by `vald export` (the int8 UNet goes into it)")
    p.add_argument("images", type=Path, nargs="+", help="calibration images or folders (PNG, JPEG, TIFF, DICOM)")
    p.add_argument("--samples", type=int, default=128, help="recorded UNet calls to calibrate on (default 128)")
    p.add_argument("--seed", type=int, default=0, help="which recorded calls are drawn (default 0)")
    p.add_argument("--config", type=Path, help="TOML file of run settings whose trajectories to record")
    p.add_argument("--preset", choices=sorted(PRESETS), help="record the trajectories of a preset's settings")
    p.add_argument("--threads", type=int, default=0, help="threads (0: one per CPU this process may use)")
    p = sub.add_parser("make-tiny-model", help="write a small random-weight diffusers folder (tests, demo)")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser(
        "make-sd15-model", help="write a Stable-Diffusion-1.5-size random-weight folder (4.1 GB; export and bench)"
    )
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="DICOM node: receive CR/DX by C-STORE, process as `vald run`, send results (C-STORE, STOW-RS)"
    )
    p.add_argument("--config", type=Path, required=True, help="the node's TOML file (see the README)")
    act = p.add_mutually_exclusive_group()
    act.add_argument(
        "--status", action="store_true", help="print the spool's and each destination's state as JSON, then exit"
    )
    act.add_argument(
        "--requeue", metavar="KEY", action="append", help="re-send a dead letter (spool/failed/KEY), then exit"
    )
    act.add_argument("--requeue-all", action="store_true", help="re-send every dead letter, then exit")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only")


def _bound_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bound",
        help="run a command (e.g. `ray start`) with its listeners bound to one IPv4 address (libvald_bind; "
        "docs/cluster.md)",
    )
    p.add_argument("address", help="this machine's IPv4 address in the cluster")
    p.add_argument("bound_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (also used by the docs' flag check); ``description`` heads ``vald --help``."""
    parser = argparse.ArgumentParser(prog="vald", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)  # also adds `induce`
    _verify_parser(sub)
    _bench_parser(sub)
    _eval_parser(sub)
    _serve_parser(sub)
    _bound_parser(sub)
    _export_parser(sub)
    return parser

"""The ``vald`` command line.

Exit status: 0 when every input succeeded (or was already finished), 1 when any input failed (the
others are still processed; see summary.json), 2 for a usage, settings, engine or output-folder
error, 130 / 143 / 129 when stopped by Ctrl-C / SIGTERM / SIGHUP (a batch writes its summary and report
first; run it again to resume), 70 for an internal error (a bug; VALD_DEBUG=1 shows its traceback).
Errors print one line, no traceback, and name inputs by index and hash only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vald import __version__
from vald.batch import Entry, Status, Summary
from vald.config import (
    DEFAULT_OUTPUTS,
    EXPORT_PRECISIONS,
    INDUCE_DEFAULTS,
    PRESETS,
    SEG_TYPES,
    Backend,
    Loop,
    Mode,
    OutputOptions,
    Precision,
    Provider,
    Reference,
    RunConfig,
    SchedulerKind,
)
from vald.dicom.reader import MODALITIES
from vald.errors import ConfigError, ValdError, ValdWarning
from vald.lock import claim
from vald.manifest import MANIFEST_NAME
from vald.signals import deferred, exit_status, stop_on_signals, stopped_by
from vald.sources import Source, load

DEFAULT_ENGINES = Path("engines/demo")
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
INTERNAL = 70  # EX_SOFTWARE: an internal error (a bug in vald)
BAR = 30  # width of the progress bar on a terminal


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's CLI reference)."""
    parser = argparse.ArgumentParser(prog="vald", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)  # also adds `induce`
    _verify_parser(sub)
    _bench_parser(sub)
    _eval_parser(sub)
    _serve_parser(sub)
    _export_parser(sub)
    return parser


def _config(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    cfg = RunConfig.from_toml(args.config, base) if args.config else base
    if getattr(args, "preset", None):  # the preset over the file, the flags over both
        cfg = cfg.with_preset(args.preset)
    names = ["strength", "steps", "guidance", "eta", "prompt", "negative_prompt", "seed", "scheduler", "backend"]
    names += ["provider", "precision", "mode", "reference", "finding_prompt", "average", "threads", "cuda_graph"]
    names += ["loop", "guidance_min_t", "unet_batch"]
    return cfg.replace(**{n: getattr(args, n, None) for n in names})


def _progress(quiet: bool, prefix: str = "") -> Callable[[int, int], None] | None:
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def progress(step: int, total: int) -> None:
        if tty:
            filled = round(BAR * step / max(total, 1))
            bar = "#" * filled + "." * (BAR - filled)
            end = "\n" if step == total else ""
            print(f"\r{prefix}[{bar}] step {step}/{total}", end=end, file=sys.stderr, flush=True)
        elif step == total or step % max(1, total // 10) == 0:
            print(f"{prefix}denoising step {step}/{total}", file=sys.stderr, flush=True)

    return progress


def _options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(
        dicom=not args.no_dicom_out,
        segmentation=not args.no_segmentation,
        seg_type=args.seg_type,
        report=not args.no_sr,
        parametric_map=not args.no_pmap,
    )


def _loader(args: argparse.Namespace) -> Callable[[Path, str | None], Source]:
    modalities = None if args.any_modality else MODALITIES

    def loader(path: Path, sha256: str | None) -> Source:
        return load(path, sha256, modalities=modalities)

    return loader


def _cmd_induce(args: argparse.Namespace) -> int:
    from vald.app import induce_one, open_engines

    cfg = _config(args, INDUCE_DEFAULTS)
    engines, provenance = open_engines(args.engines, cfg, model_dir=args.model)
    source = _loader(args)(args.image, None)
    with claim(args.out):
        out_dir = induce_one(
            source, args.mask, args.out, engines, provenance, cfg, options=_options(args), on_step=_progress(args.quiet)
        )
    print(out_dir)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from vald.app import attribution_settings_sha256, check_keep_mask, open_engines, run_one
    from vald.batch import collect, run_batch
    from vald.report import write_report

    cfg = _config(args, RunConfig())
    inputs = collect(args.inputs, out=args.out)
    if args.keep_mask and len(inputs) != 1:
        raise ConfigError(f"--keep-mask applies to one input, not {len(inputs)}: run each image with its own mask")
    keep_sha = check_keep_mask(args.keep_mask, _loader(args)(inputs[0], None)) if args.keep_mask else None
    options = _options(args)
    if args.cluster is not None:
        return _run_on_cluster(args, cfg, inputs, options)
    engines, provenance = open_engines(args.engines, cfg, model_dir=args.model)
    settings_sha = attribution_settings_sha256(cfg, provenance, options, keep_sha)

    def process(source: Source, entry: Entry) -> Path:
        prefix = f"[{entry.index}/{len(inputs)}] "
        return run_one(
            source,
            args.out,
            engines,
            provenance,
            cfg,
            options=options,
            on_step=_progress(args.quiet, prefix),
            keep_mask=args.keep_mask,
        )

    info = {"model_sha256": provenance["model_sha256"], "inputs": len(inputs), "vald": __version__}
    # deferred: a stop signal ends the input in progress (its work is interruptible), never the summary or report
    with claim(args.out), deferred():
        summary = run_batch(
            inputs,
            args.out,
            settings_sha,
            _loader(args),
            process,
            run_info=info,
            force=args.force,
            on_event=_event(args),
        )
        report = None if args.no_report else write_report(args.out, summary)
    return _finish_run(args, inputs, summary, report)


def _run_on_cluster(args: argparse.Namespace, cfg: RunConfig, inputs: list[Path], options: OutputOptions) -> int:
    """``vald run --cluster``: workers compute on the Ray cluster, this process alone publishes (vald.cluster)."""
    from vald.cluster.batch import run_on
    from vald.cluster.run import cluster_config, open_cluster
    from vald.report import write_report

    if args.keep_mask:
        raise ConfigError("--keep-mask applies to one input: run it without --cluster")
    executor, settings_sha, model_sha = open_cluster(
        args.engines, cfg, options, cluster_config(args.cluster, args.workers, cfg)
    )
    info = {"model_sha256": model_sha, "inputs": len(inputs), "vald": __version__, "workers": args.workers}
    try:
        with claim(args.out), deferred():
            summary = run_on(
                executor, inputs, args.out, settings_sha, _loader(args), run_info=info, force=args.force,
                on_event=_event(args),
            )  # fmt: skip
            report = None if args.no_report else write_report(args.out, summary)
    finally:
        executor.close()
    return _finish_run(args, inputs, summary, report)


def _event(args: argparse.Namespace) -> Callable[[Entry, int], None]:
    """Per-input lines on the terminal (failures always; the rest unless --quiet); output folders on stdout."""

    def event(entry: Entry, total: int) -> None:
        label = f"[{entry.index}/{total}] input #{entry.index}"
        if entry.status == Status.FAILED:
            print(f"vald: {label} (sha256 {entry.input_sha256[:12] or 'n/a'}) failed: {entry.error}", file=sys.stderr)
        elif entry.status and not args.quiet:
            note = f" ({entry.error})" if entry.error else ""
            print(f"{label}: {entry.status}{note} in {entry.seconds:.1f} s", file=sys.stderr, flush=True)
        if entry.status in (Status.DONE, Status.SKIPPED):
            print(args.out / entry.output, flush=True)

    return event


def _finish_run(args: argparse.Namespace, inputs: list[Path], summary: Summary, report: Path | None) -> int:
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts().items())
    tail = f"; report: {report}" if report else ""
    print(f"vald: {len(inputs)} input(s): {counts}; summary: {args.out / 'summary.json'}{tail}", file=sys.stderr)
    if summary.interrupted:
        why = "interrupted" if summary.stopped_by == "SIGINT" else f"stopped by {summary.stopped_by}"
        print(f"vald: {why}; run the same command again to resume (finished inputs are skipped)", file=sys.stderr)
        return 128 + int(signal.Signals[summary.stopped_by])
    return 1 if summary.failed else 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from vald.cache import clear_derived
    from vald.manifest import Manifest

    manifest = Manifest.load(args.engines)
    count = manifest.verify_all().hashed
    for rel in clear_derived(args.engines):
        print(f"vald: cached file {rel} was altered since it was written (its sha256 differs); removed")
    sets = ", ".join(p.value for p in manifest.precisions + manifest.quantised) or "none"
    print(
        f"vald: {args.engines}: {count} file(s) match {MANIFEST_NAME} (graph sets: {sets}); stamps renewed, "
        "optimised graphs cleared (rebuilt on the next start)"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from vald.bench.contenders import by_name
    from vald.bench.run import Subject, check_bench_arguments, run_bench
    from vald.errors import InputError
    from vald.manifest import Manifest

    cfg = RunConfig.from_toml(args.config) if args.config else RunConfig()
    cfg = (cfg.with_preset(args.preset) if args.preset else cfg).replace(
        mode=args.mode,
        steps=args.steps,
        strength=args.strength,
        guidance=args.guidance,
        guidance_min_t=args.guidance_min_t,
        seed=args.seed,
        threads=args.threads,
    )
    contenders = by_name(args.contenders, quick=args.quick)
    manifest = Manifest.load(args.engines)
    source = manifest.source_folder(args.model)
    model_dir = source if (source / "model_index.json").is_file() else None
    samples = sorted((args.engines / "samples").glob("*.png"))
    image = args.image or (samples[0] if samples else None)
    if image is None:
        raise InputError("no --image given and the engine folder has no samples/*.png")
    sizes = tuple(args.size or [manifest.model.image_size])
    check_bench_arguments(
        image=image, repeats=args.repeats, sizes=sizes, timeout=args.timeout, scale=manifest.model.vae_scale_factor
    )
    subject = Subject(args.name or args.engines.name, args.engines, model_dir, sizes)
    path = run_bench(
        [subject],
        contenders,
        cfg,
        image=image,
        repeats=args.repeats,
        out=args.out,
        timeout=args.timeout,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(path.with_suffix(".md").read_text(encoding="utf-8"))
    print(path)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    try:
        from vald.eval.run import evaluate
    except ImportError as exc:
        raise ValdError(f"`vald eval` needs the eval extra: pip install 'vald[eval]' ({exc.name} is missing)") from None
    from vald.bench.environment import environment
    from vald.eval.classifier import Classifier
    from vald.eval.dataset import read_eval_set
    from vald.eval.inception import load_fid_inception

    if args.per_class is not None and args.per_class < 1:
        raise ConfigError("--per-class must be at least 1")
    cfg = _config(args, RunConfig())
    data = read_eval_set(args.dataset, args.per_class)
    inception = load_fid_inception(args.inception) if args.inception else None
    classifier = Classifier(args.classifier) if args.classifier else None
    if inception is None:
        print("vald: FID not computed: no --inception weights file given", file=sys.stderr)
    executor = None
    if args.cluster is not None:
        from vald.cluster.run import cluster_config, open_cluster
        from vald.cluster.worker import with_threads

        cluster = cluster_config(args.cluster, args.workers, cfg)
        cfg = with_threads(cfg, cluster.threads)
        executor = open_cluster(args.engines, cfg, DEFAULT_OUTPUTS, cluster)[0]
    try:
        path = evaluate(
            data,
            args.engines,
            cfg,
            args.out,
            inception=inception,
            classifier=classifier,
            environment=environment(),
            log=(lambda _line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
            executor=executor,
        )
    finally:
        if executor is not None:
            executor.close()
    print(path.with_suffix(".md").read_text(encoding="utf-8"))
    print(path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from vald.node import service
    from vald.node.config import NodeConfig

    cfg = NodeConfig.load(args.config)
    if args.status:
        return service.print_status(cfg)
    if args.requeue or args.requeue_all:
        return service.requeue(cfg, None if args.requeue_all else list(args.requeue))
    try:
        import dicomweb_client  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise ValdError(
            f"`vald serve` needs the node extra: pip install 'vald[node]' ({exc.name} is missing)"
        ) from None
    return service.serve(cfg, quiet=args.quiet)


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Vald's own warnings as one line each; other libraries' as Python prints them."""
    if issubclass(category, ValdWarning):
        print(f"vald: warning: {message}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, *args, **kwargs)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vald`` console script."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        with stop_on_signals():
            return _dispatch(args)
    except ValdError as exc:
        print(f"vald: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        why = "interrupted" if stopped_by(exc) == signal.SIGINT else f"stopped by {stopped_by(exc).name}"
        print(f"\nvald: {why}", file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:  # a bug: its type is safe to show, its text may carry paths or patient data
        if os.environ.get("VALD_DEBUG") == "1":
            raise
        print(
            f"vald: error: internal error ({type(exc).__name__}); please report it (VALD_DEBUG=1 shows details)",
            file=sys.stderr,
        )
        return INTERNAL


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command."""
    commands = {
        "run": _cmd_run,
        "induce": _cmd_induce,
        "verify": _cmd_verify,
        "bench": _cmd_bench,
        "eval": _cmd_eval,
        "serve": _cmd_serve,
    }
    if args.command in commands:
        return commands[args.command](args)
    try:
        from vald_export import cli as export_cli  # the export tool is a separate, torch-using package
    except ImportError as exc:
        raise ValdError(f"`vald {args.command}` needs the export extra: pip install 'vald[export]' ({exc})") from None
    return export_cli.main(args)


if __name__ == "__main__":
    sys.exit(main())

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
from vald.cli_args import build_parser
from vald.config import (
    DEFAULT_OUTPUTS,
    INDUCE_DEFAULTS,
    OutputOptions,
    RunConfig,
)
from vald.dicom.reader import MODALITIES
from vald.errors import ConfigError, ValdError, ValdWarning
from vald.lock import claim
from vald.manifest import MANIFEST_NAME
from vald.signals import deferred, exit_status, stop_on_signals, stopped_by
from vald.sources import Source, load

INTERNAL = 70  # EX_SOFTWARE: an internal error (a bug in vald)
BAR = 30  # width of the progress bar on a terminal


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
        args.engines, cfg, options, cluster_config(args.cluster, args.workers, cfg, args.cluster_bind)
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

        cluster = cluster_config(args.cluster, args.workers, cfg, args.cluster_bind)
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
    only_spool = args.status or args.requeue or args.requeue_all
    if cfg.cluster is not None and cfg.cluster.bind is not None and not only_spool:
        _bind_listeners(args, cfg.cluster.bind)
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


def _bind_listeners(args: argparse.Namespace, address: str) -> None:
    """Ray's listeners in this process on ``address`` alone: restart this command under libvald_bind if needed."""
    from vald.cluster.bind import enter

    enter(address, [sys.executable, "-c", "import sys; from vald.cli import main; sys.exit(main())", *args.argv])


def _cmd_bound(args: argparse.Namespace) -> int:
    from vald.cluster.bind import run_bound

    command = args.bound_command[1:] if args.bound_command[:1] == ["--"] else args.bound_command
    run_bound(args.address, command)
    return 0  # not reached: run_bound replaces this process


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Vald's own warnings as one line each; other libraries' as Python prints them."""
    if issubclass(category, ValdWarning):
        print(f"vald: warning: {message}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, *args, **kwargs)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vald`` console script."""
    args = build_parser(__doc__).parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
    if getattr(args, "cluster_bind", None) is not None:
        if args.cluster is None:
            raise ConfigError("--cluster-bind applies with --cluster")
        _bind_listeners(args, args.cluster_bind)
    commands = {
        "run": _cmd_run,
        "induce": _cmd_induce,
        "verify": _cmd_verify,
        "bench": _cmd_bench,
        "eval": _cmd_eval,
        "serve": _cmd_serve,
        "bound": _cmd_bound,
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

"""The ``vald`` command line.  Errors print one line (no traceback) and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vald.config import INDUCE_DEFAULTS, Backend, Mode, Precision, Provider, Reference, RunConfig, SchedulerKind
from vald.errors import ValdError

DEFAULT_ENGINES = Path("engines/demo")


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
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default 0)")
    p.add_argument("--negative-prompt", help="negative / unconditional prompt (default empty)")
    p.add_argument("--seed", type=int, help="noise seed (default 0)")
    p.add_argument("--scheduler", choices=[s.value for s in SchedulerKind])
    p.add_argument("--backend", choices=[b.value for b in Backend])
    p.add_argument("--provider", choices=[x.value for x in Provider])
    p.add_argument("--precision", choices=[x.value for x in Precision])
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="normal counterfactual and attribution map of an image")
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, TIFF)")
    _common(p)
    p.add_argument("--prompt", help="target (normal) prompt")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="img2img, inversion (default) or paired")
    p.add_argument(
        "--reference", choices=[r.value for r in Reference], help="map against the input or the reconstruction"
    )
    p.add_argument("--finding-prompt", help="the finding's text (paired: required; inversion: inversion prompt)")
    p.add_argument("--average", type=int, help="seeds averaged in img2img/paired (default 1)")
    p = sub.add_parser("induce", help="add a named finding inside a mask (masked img2img)")
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, TIFF)")
    p.add_argument("--mask", type=Path, required=True, help="mask image, same size as the input; white = inside")
    p.add_argument("--prompt", required=True, help="the finding to add, e.g. 'left lower zone consolidation'")
    _common(p)


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="diffusers folder -> ONNX engines + manifest (needs vald[export])")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-length", type=int, default=77, help="prompt tokens (default 77, as Stable Diffusion)")
    p.add_argument("--precision", action="append", choices=[x.value for x in Precision], help="repeatable")
    p = sub.add_parser("make-tiny-model", help="write a small random-weight diffusers folder (tests, demo)")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's CLI reference)."""
    parser = argparse.ArgumentParser(prog="vald", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)  # also adds `induce`
    _export_parser(sub)
    return parser


def _config(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    cfg = RunConfig.from_toml(args.config) if args.config else base
    names = ["strength", "steps", "guidance", "eta", "prompt", "negative_prompt", "seed", "scheduler", "backend"]
    names += ["provider", "precision", "mode", "reference", "finding_prompt", "average"]
    return cfg.replace(**{n: getattr(args, n, None) for n in names})


def _progress(quiet: bool) -> Callable[[int, int], None] | None:
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def progress(step: int, total: int) -> None:
        if tty:
            print(f"\rdenoising step {step}/{total}", end="\n" if step == total else "", file=sys.stderr, flush=True)
        elif step == total or step % max(1, total // 10) == 0:
            print(f"denoising step {step}/{total}", file=sys.stderr, flush=True)

    return progress


def _cmd_run(args: argparse.Namespace) -> int:
    from vald.app import induce_one, open_engines, run_one

    base = INDUCE_DEFAULTS if args.command == "induce" else RunConfig()
    cfg = _config(args, base)
    engines, provenance = open_engines(args.engines, cfg, model_dir=args.model)
    if args.command == "induce":
        out_dir = induce_one(args.image, args.mask, args.out, engines, provenance, cfg, on_step=_progress(args.quiet))
    else:
        out_dir = run_one(args.image, args.out, engines, provenance, cfg, on_step=_progress(args.quiet))
    print(out_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vald`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("run", "induce"):
            return _cmd_run(args)
        try:
            from vald_export import cli as export_cli  # the export tool is a separate, torch-using package
        except ImportError as exc:
            raise ValdError(
                f"`vald {args.command}` needs the export extra: pip install 'vald[export]' ({exc})"
            ) from None
        return export_cli.main(args)
    except ValdError as exc:
        print(f"vald: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

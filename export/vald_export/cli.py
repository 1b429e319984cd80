"""Sub-commands of ``vald`` that need the export extra (torch, diffusers, transformers, onnx)."""

from __future__ import annotations

import argparse
import os

from vald.config import Precision


def _build(args: argparse.Namespace) -> int:
    from vald.config import RunConfig
    from vald_export.tensorrt_build import BuildRequest, build
    from vald_export.tensorrt_plan import ProfileKind

    run = RunConfig.from_toml(args.config) if args.config else RunConfig()
    request = BuildRequest(
        precision=Precision(args.precision),
        profile=ProfileKind(args.profile),
        size=args.size,
        run=run.replace(mode=args.mode),
    )
    engine_set = build(args.engines, request)
    print(f"vald: TensorRT engines for {engine_set['identity']} written under {args.engines / 'tensorrt'}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from vald.batch import collect
    from vald.config import RunConfig
    from vald_export.quantize import QuantizeRequest, quantize

    run = RunConfig.from_toml(args.config) if args.config else RunConfig()
    run = (run.with_preset(args.preset) if args.preset else run).replace(threads=args.threads)
    request = QuantizeRequest(tuple(collect(args.images)), samples=args.samples, seed=args.seed, run=run)
    entry = quantize(args.engines, request, say=lambda line: print(f"vald: {line}", flush=True))
    error = entry["error_vs_fp32"]
    rms = f", median relative error vs FP32 on {error['calls']} held-out calls {error['median_relative_rms_error']:.3g}"
    rms = rms if error["calls"] else ""
    print(f"vald: int8 UNet written to {args.engines / 'int8'}{rms}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Dispatch ``export``, ``make-tiny-model`` and ``make-sd15-model``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only; never reach for a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # library progress bars between our step lines
    if args.command == "make-tiny-model":
        from vald_export.tiny import make_tiny_model

        print(make_tiny_model(args.out, seed=args.seed))
        return 0
    if args.command == "make-sd15-model":
        from vald_export.sd15 import make_sd15_model

        print(make_sd15_model(args.out, seed=args.seed))
        return 0
    if args.command == "build":
        return _build(args)
    if args.command == "quantize":
        return _quantize(args)
    from vald_export.export import export_model

    precisions = tuple(Precision(p) for p in (args.precision or ["fp32", "fp16"]))
    print(export_model(args.model_dir, args.out, opset=args.opset, max_length=args.max_length, precisions=precisions))
    return 0

"""``vald quantize``: the UNet post-training quantised to int8 (NNCF), calibrated on the model's own trajectories.

1. The calibration images run the counterfactual with the run settings (ONNX Runtime, the FP32 graphs) while a
   recording UNet session keeps every call's inputs and outputs: latents, timesteps and text states exactly
   as this model's sampler visits them (batches of 1, 2 or 3 rows, guided and unguided).
2. ``samples`` of those calls (drawn without replacement by ``seed``) calibrate NNCF's static int8
   quantisation of the FP32 UNet for OpenVINO (transformer model type: SmoothQuant, then min/max ranges,
   then bias correction; ``FLOAT_LAYERS`` stay float); up to ``HELD_OUT`` other calls are kept aside.
3. The int8 UNet (OpenVINO IR) goes to ``ENGINES/int8/``; its error against the FP32 outputs on the held-out
   calls, the recipe (library versions, numbers, settings) and the calibration images' hashes (never their
   names) go into the manifest, next to the file hashes a run verifies.

The other networks are not quantised: the text encoder runs once and the VAE's share of a counterfactual is
small; ``--precision int8`` runs them from their FP32 graphs at the CPU's float precision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.app import open_engines
from vald.attribution import attribute
from vald.config import Backend, Precision, Provider, RunConfig
from vald.errors import BackendUnavailableError, InputError
from vald.imageio import Letterbox
from vald.manifest import MANIFEST_NAME, Manifest, sha256_file
from vald.outputs import write_atomic
from vald.privacy import quiet_dependencies
from vald.sources import load
from vald.spec import Component
from vald.strictjson import encode

HELD_OUT = 8  # recorded calls kept out of calibration to measure the int8 UNet's error against FP32
FOLDER = "int8"
# Left in float: the timestep embedding and its projections (tiny matrices whose inputs span t = 1..999) and the
# first and last convolutions (the latents in, the noise out).  On the demo model this cut the median
# relative error on held-out calls from 0.128 to 0.085 (bf16 alone: 0.029); leaving the attention products in
# float as well gained nothing (0.086).  Patterns of diffusers' UNet2DConditionModel export; absent ones are
# ignored.
FLOAT_LAYERS = (".*time_embedding.*", ".*time_emb_proj.*", ".*conv_in.*", ".*conv_out.*")


@dataclass(frozen=True)
class QuantizeRequest:
    """What to calibrate on and how many UNet calls to use."""

    images: tuple[Path, ...]
    samples: int = 128
    seed: int = 0
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if not self.images:
            raise InputError("vald quantize needs calibration images (PNG, JPEG, TIFF or DICOM)")
        if self.samples < 1:
            raise InputError(f"--samples must be at least 1, got {self.samples}")


class Recorder:
    """A UNet session that keeps a copy of every call's inputs and outputs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[dict[str, NDArray[Any]], NDArray[np.float32]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[np.float32]]:
        """Run the wrapped session and keep copies of the call."""
        out: dict[str, NDArray[np.float32]] = self.inner.run(feeds)
        self.calls.append(({k: np.array(v) for k, v in feeds.items()}, np.array(out["out_sample"])))
        return out


def record(
    engine_dir: Path, request: QuantizeRequest, say: Callable[[str], None]
) -> tuple[list[tuple[dict[str, NDArray[Any]], NDArray[np.float32]]], list[str]]:
    """The UNet calls of the calibration images' counterfactuals (FP32, ONNX Runtime), and the images' hashes."""
    cfg = request.run.replace(backend=Backend.ONNXRUNTIME, provider=Provider.CPU, precision=Precision.FP32)
    engines, _ = open_engines(engine_dir, cfg)
    recorder = Recorder(engines.sessions[Component.UNET])
    recording = dataclasses.replace(engines, sessions={**engines.sessions, Component.UNET: recorder})
    hashes = []
    for n, path in enumerate(request.images, 1):
        source = load(path, modalities=None)
        box = Letterbox.fit(source.image.shape, engines.model.image_size)
        before = len(recorder.calls)
        attribute(recording, box.to_model(source.image), cfg)
        hashes.append(source.sha256)
        say(f"calibration image {n}/{len(request.images)}: {len(recorder.calls) - before} UNet calls recorded")
    return recorder.calls, hashes


def _nncf() -> Any:
    quiet_dependencies()  # NNCF's telemetry goes through openvino_telemetry, which this keeps unimportable
    try:
        import nncf
    except ImportError:
        raise BackendUnavailableError("vald quantize needs NNCF and OpenVINO: pip install 'vald[quantize]'") from None
    nncf.set_log_level(logging.WARNING)  # its per-layer INFO lines; vald prints its own progress
    return nncf


def quantize(engine_dir: Path, request: QuantizeRequest, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ENGINES/int8/unet.{xml,bin} and its manifest entry; return that entry."""
    nncf = _nncf()
    import openvino as ov

    manifest = Manifest.load(engine_dir)
    calls, image_hashes = record(engine_dir, request, say)
    order = np.random.default_rng(request.seed).permutation(len(calls))
    held = [calls[i] for i in order[: min(HELD_OUT, len(calls) // 4)]]
    chosen = [calls[i] for i in order[len(held) :][: request.samples]]
    say(f"calibrating on {len(chosen)} of {len(calls)} recorded UNet calls ({len(held)} held out)")
    started = time.perf_counter()
    model = ov.Core().read_model(str(manifest.graph_path(Component.UNET, Precision.FP32)))
    quantised = nncf.quantize(
        model,
        nncf.Dataset([feeds for feeds, _ in chosen]),
        subset_size=len(chosen),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_LAYERS), validate=False),
    )
    seconds = time.perf_counter() - started
    staged = engine_dir / f".{FOLDER}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    ov.save_model(quantised, str(staged / "unet.xml"), compress_to_fp16=False)
    error = _held_out_error(ov, staged / "unet.xml", held, request.run.resolved_threads)
    final = engine_dir / FOLDER
    shutil.rmtree(final, ignore_errors=True)
    staged.rename(final)
    files = {f"{FOLDER}/{name}": sha256_file(final / name) for name in ("unet.xml", "unet.bin")}
    entry = {
        "files": files,
        "quantization": _recipe(nncf, ov, request, len(calls), len(chosen), image_hashes, seconds),
        "error_vs_fp32": error,
    }
    data = dict(manifest.data)
    components = dict(data["components"])
    unet = dict(components[Component.UNET.value])
    unet["precisions"] = {**unet["precisions"], Precision.INT8.value: entry}
    components[Component.UNET.value] = unet
    data["components"] = components
    write_atomic(engine_dir / MANIFEST_NAME, encode(data, indent=2))
    return entry


def _held_out_error(
    ov: Any, path: Path, held: Sequence[tuple[dict[str, NDArray[Any]], NDArray[np.float32]]], threads: int
) -> dict[str, Any]:
    """The int8 UNet's relative RMS error against the FP32 outputs, per held-out call (not calibrated on).

    Per call, because it depends on the timestep: near t = 0 the predicted noise is small and any rounding is
    large against it (bf16 alone gives ~0.2 there on the demo model), while it moves the latents least.
    """
    if not held:
        return {"calls": 0}
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    by_call = []
    for feeds, want in held:
        got = np.asarray(next(iter(compiled(feeds).values())), dtype=np.float64)
        reference = np.asarray(want, dtype=np.float64)
        relative = float(np.sqrt(np.sum((got - reference) ** 2) / max(float(np.sum(reference**2)), 1e-30)))
        by_call.append((int(np.asarray(feeds["timestep"]).ravel()[0]), round(relative, 4)))
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {
        "calls": len(held),
        "median_relative_rms_error": float(np.median([r for _, r in by_call])),
        "relative_rms_error_by_timestep": sorted(by_call),
        "float_precision": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint),
    }


def _recipe(
    nncf: Any, ov: Any, request: QuantizeRequest, recorded: int, used: int, image_hashes: list[str], seconds: float
) -> dict[str, Any]:
    run = request.run
    return {
        "tool": "nncf.quantize (post-training static int8, OpenVINO backend)",
        "model_type": "transformer",
        "float_layers": list(FLOAT_LAYERS),
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
        "calibration": {
            "images": len(image_hashes),
            "images_sha256": hashlib.sha256("".join(sorted(image_hashes)).encode("ascii")).hexdigest(),
            "unet_calls_recorded": recorded,
            "samples": used,
            "seed": request.seed,
            "recorded_with": "onnxruntime cpu fp32",
            "settings": {
                "mode": run.mode.value,
                "scheduler": run.scheduler.value,
                "steps": run.steps,
                "strength": run.strength,
                "guidance": run.guidance,
                "guidance_min_t": run.guidance_min_t,
                "seed": run.seed,
                "preset": run.preset,
            },
        },
        "seconds": round(seconds, 1),
    }

"""Use cases behind the CLI: open an engine folder, make one counterfactual and write its outputs."""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vald import __version__
from vald.attribution import attribute
from vald.config import RunConfig
from vald.errors import InputError
from vald.imageio import Letterbox, read_image
from vald.induce import induce
from vald.manifest import Manifest
from vald.outputs import INDUCED, write_outputs
from vald.pipeline import Engines
from vald.render import CAUTION
from vald.schedules import NoiseSchedule
from vald.sessions import open_sessions
from vald.tokenizer import PromptTokenizer


def open_engines(engine_dir: Path, cfg: RunConfig, *, model_dir: Path | None = None) -> tuple[Engines, dict[str, Any]]:
    """Verify the engine folder against its manifest, open sessions; also return provenance for results."""
    manifest = Manifest.load(engine_dir)
    hashes = manifest.verify(cfg.precision)
    info = manifest.model
    tokenizer = PromptTokenizer(engine_dir / "tokenizer", max_length=info.max_length, pad_id=info.pad_id)
    engines = Engines(
        sessions=open_sessions(manifest, cfg, model_dir=model_dir),
        tokenizer=tokenizer,
        model=info,
        schedule=NoiseSchedule.from_config(manifest.scheduler_config),
    )
    provenance = {"model_sha256": manifest.model_sha256, "engine_files_sha256": hashes}
    return engines, provenance


RUNTIME_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "pillow", "torch", "diffusers")


def versions(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Versions of vald, Python, the platform and those of ``packages`` that are installed."""
    found = {"vald": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _settings(cfg: RunConfig) -> dict[str, Any]:
    """Settings for result.json: prompts only as hashes (clinical text may identify a patient)."""
    settings: dict[str, Any] = {k: (v if isinstance(v, (int, float)) else str(v)) for k, v in asdict(cfg).items()}
    for name in ("prompt", "negative_prompt", "finding_prompt"):
        settings[f"{name}_sha256"] = _sha(str(settings.pop(name)))
    settings["reference"] = cfg.resolved_reference.value
    settings["seeds"] = [cfg.seed + k for k in range(cfg.average)]
    return settings


def _result(
    cfg: RunConfig,
    digest: str,
    shape: tuple[int, ...],
    engines: Engines,
    description: str,
    stages: dict[str, float],
    started: float,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``result.json``: what was run, on what, with which engines, how long it took."""
    return {
        "caution": CAUTION,
        "input": {"sha256": digest, "shape": list(shape), "model_size": engines.model.image_size},
        "settings": _settings(cfg),
        "attribution": description,
        "timings_s": {**stages, "total": time.perf_counter() - started},
        "versions": versions(),
        **provenance,
    }


def run_one(
    image_path: Path,
    out_root: Path,
    engines: Engines,
    provenance: dict[str, Any],
    cfg: RunConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Counterfactual and attribution map of one image, written under ``out_root/<input hash>/``."""
    started = time.perf_counter()
    native = read_image(image_path)
    digest = hashlib.sha256(image_path.read_bytes()).hexdigest()
    box = Letterbox.fit(native.shape, engines.model.image_size)
    model_input = box.to_model(native)
    result_m = attribute(engines, model_input, cfg, on_step=on_step)
    signed_map = box.to_native(result_m.signed_map)
    cf_native = box.to_native(result_m.counterfactual)
    description = (
        f"signed map M = {cfg.resolved_reference.value} - counterfactual ({cfg.mode.value}), "
        "computed at model resolution, resized to native"
    )
    result = _result(cfg, digest, native.shape, engines, description, result_m.timings.stages, started, provenance)
    out_dir = out_root / digest[:16]
    titles = ("input", "normal counterfactual", f"{cfg.resolved_reference.value} - counterfactual")
    write_outputs(out_dir, native, cf_native, signed_map.astype(np.float32), result, titles=titles)
    return out_dir


def induce_one(
    image_path: Path,
    mask_path: Path,
    out_root: Path,
    engines: Engines,
    provenance: dict[str, Any],
    cfg: RunConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Add ``cfg.prompt``'s finding inside the mask; outputs as ``run_one`` (the map is induced - input)."""
    started = time.perf_counter()
    native, mask_native = read_image(image_path), read_image(mask_path)
    if mask_native.shape != native.shape:
        raise InputError(
            f"mask is {mask_native.shape[1]}x{mask_native.shape[0]}, image is {native.shape[1]}x{native.shape[0]}"
        )
    digest = hashlib.sha256(image_path.read_bytes() + mask_path.read_bytes()).hexdigest()
    box = Letterbox.fit(native.shape, engines.model.image_size)
    induced = induce(engines, box.to_model(native), box.to_model(mask_native), cfg, on_step=on_step)
    change = box.to_native(induced.image) - box.to_native(box.to_model(native))
    out_native = np.clip(native + change, 0.0, 1.0).astype(np.float32)
    description = "signed map = induced - input (masked img2img toward the finding prompt)"
    result = _result(cfg, digest, native.shape, engines, description, induced.timings.stages, started, provenance)
    result["settings"]["task"] = "induce"
    out_dir = out_root / digest[:16]
    change_map = (out_native - native).astype(np.float32)
    titles = ("input", "induced", "induced - input")
    write_outputs(out_dir, native, out_native, change_map, result, image_name=INDUCED, titles=titles)
    return out_dir

"""Use cases behind the CLI: open an engine folder, make one counterfactual and write its outputs."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald import __version__
from vald.attribution import attribute, check_against_model
from vald.config import DEFAULT_OUTPUTS, OutputOptions, RunConfig
from vald.errors import InputError
from vald.imageio import Letterbox, read_image
from vald.induce import induce
from vald.manifest import Manifest
from vald.outputs import INDUCED, OutputSet, output_files, publish_set
from vald.pipeline import Engines
from vald.render import CAUTION, symmetric_limit
from vald.schedules import NoiseSchedule
from vald.sessions import loop_ops, open_sessions, run_files
from vald.sources import Source, read_sha256
from vald.tokenizer import PromptTokenizer


def open_engines(engine_dir: Path, cfg: RunConfig, *, model_dir: Path | None = None) -> tuple[Engines, dict[str, Any]]:
    """Verify the engine folder against its manifest, open sessions; also return provenance for results."""
    manifest = Manifest.load(engine_dir)
    started = time.perf_counter()
    verified = manifest.verify_files(run_files(manifest, cfg))
    verify_s = time.perf_counter() - started
    info = manifest.model
    tokenizer = PromptTokenizer(engine_dir / "tokenizer", max_length=info.max_length, pad_id=info.pad_id)
    started = time.perf_counter()
    sessions = open_sessions(manifest, cfg, model_dir=model_dir)
    ops = loop_ops(cfg, sessions)
    engines = Engines(
        sessions=sessions,
        tokenizer=tokenizer,
        model=info,
        schedule=NoiseSchedule.for_pipeline(manifest.scheduler_config),
        ops=ops,
    )
    check_against_model(engines, cfg)  # once, as a settings error: not a failure of every input
    provenance = {
        **_identity(manifest, engines.schedule, verified.hashes, cfg),
        "sessions": {c.value: asdict(s.info) for c, s in sessions.items()},
        "loop": ops.name,  # where the sampler's arithmetic ran (host float64, or device arrays in float32)
        "startup": {
            "verify_s": verify_s,
            "files_hashed": verified.hashed,
            "files_trusted_by_stamp": verified.stamped,
            "cache_writable": verified.cache_writable,
            "open_sessions_s": time.perf_counter() - started,
        },
    }
    return engines, provenance


def _identity(manifest: Manifest, schedule: NoiseSchedule, hashes: dict[str, str], cfg: RunConfig) -> dict[str, Any]:
    """What of an engine folder enters the settings hash: model hash, schedule, model facts, file hashes."""
    return {
        "model_sha256": manifest.model_sha256,
        # everything about the model that decides the pixels besides its weights (in the settings hash too)
        "schedule": schedule.describe(cfg.scheduler.value),
        "model": asdict(manifest.model),
        "engine_files_sha256": hashes,
    }


def describe_engines(engine_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """The settings-hash part of ``open_engines``'s provenance, verified against the manifest, no session opened.

    A driver that only publishes (the cluster executor's) needs the settings hash, not the engines.
    """
    manifest = Manifest.load(engine_dir)
    verified = manifest.verify_files(run_files(manifest, cfg))
    return _identity(manifest, NoiseSchedule.for_pipeline(manifest.scheduler_config), verified.hashes, cfg)


RUNTIME_PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "pillow",
    "torch",
    "diffusers",
    "pydicom",
    "highdicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "python-gdcm",
    "pyjpegls",
)


@functools.cache
def _installed(packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of those of ``packages`` that are installed (looked up once per process: ~5 ms a time)."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def versions(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Versions of vald, Python, the platform and those of ``packages`` that are installed."""
    found = {"vald": __version__, "python": platform.python_version(), "platform": platform.platform()}
    return {**found, **_installed(packages)}


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


def settings_sha256(cfg: RunConfig, provenance: dict[str, Any], task: str, options: OutputOptions) -> str:
    """Hash of everything that decides a result: settings, model, engines, task, outputs, versions.

    The versions are vald's and its libraries' (not the platform's).
    A finished output with the same hash is skipped on re-run; the derived DICOM UIDs include it, so an
    upgrade that may change the pixels never reuses a UID for other content.
    """
    blob = {
        "settings": _settings(cfg),
        "model_sha256": provenance.get("model_sha256"),
        "schedule": provenance.get("schedule"),
        "model": provenance.get("model"),
        "engines": provenance.get("engine_files_sha256"),
        "task": task,
        "outputs": asdict(options),
        "versions": {k: v for k, v in versions().items() if k != "platform"},
    }
    return _sha(json.dumps(blob, sort_keys=True, default=str))


def _result(
    cfg: RunConfig,
    source: Source,
    engines: Engines,
    description: str,
    stages: dict[str, float],
    started: float,
    provenance: dict[str, Any],
    settings_sha: str,
) -> dict[str, Any]:
    """The content of ``result.json``: what was run, on what, with which engines, how long it took."""
    return {
        "caution": CAUTION,
        "input": {
            "sha256": source.sha256,
            "key": source.key,
            "shape": list(source.image.shape),
            "model_size": engines.model.image_size,
            **({"dicom": source.info} if source.is_dicom else {}),
        },
        "settings": _settings(cfg),
        "settings_sha256": settings_sha,
        "attribution": description,
        "timings_s": {**stages, "total": time.perf_counter() - started},
        "versions": versions(),
        **provenance,
    }


def _algorithm(result: dict[str, Any], provenance: dict[str, Any]) -> Any:
    """What the SR names as the algorithm: version, engine set and settings hashes, seed, backend, precision."""
    from vald.dicom.report import Algorithm

    unet = provenance["sessions"].get("unet", {})
    return Algorithm(
        version=__version__,
        engines_sha256=_sha(json.dumps(provenance["engine_files_sha256"], sort_keys=True)),
        settings_sha256=result["settings_sha256"],
        seed=int(result["settings"].get("seed", 0)),
        backend=str(unet.get("backend", "")),
        precision=str(unet.get("precision", "")),
    )


def _display(result: dict[str, Any], signed_map: NDArray[np.float32]) -> float:
    """The input's colour limit, recorded in ``result``: heat maps, overlays and the SEG all saturate there."""
    vmax = symmetric_limit(signed_map)
    result["display"] = {"colour_limit": vmax, "rule": "99.5th percentile of |M| at native resolution"}
    return vmax


def _dicom_extra(
    source: Source,
    generated: NDArray[np.float32],
    signed_map: NDArray[np.float32],
    provenance: dict[str, Any],
    result: dict[str, Any],
    task: str,
    options: OutputOptions,
    vmax: float,
) -> dict[str, bytes]:
    """The derived DICOM files (none for non-DICOM inputs or --no-dicom-out); their UIDs and time go in result."""
    if not (options.dicom and source.is_dicom):
        return {}
    from vald.dicom.derive import derived_files
    from vald.dicom.writer import Provenance

    started = time.perf_counter()
    prov = Provenance(result["settings_sha256"], str(provenance.get("model_sha256")), __version__, task)
    files, uids = derived_files(
        source.header,
        source.image,
        generated,
        signed_map,
        vmax,
        prov,
        segmentation=options.segmentation,
        seg_type=options.seg_type,
        algorithm=_algorithm(result, provenance) if options.report else None,
        parametric_map=options.parametric_map,
    )
    result["dicom_outputs"] = uids
    if options.segmentation:
        from vald.dicom.writer import SEG_THRESHOLD

        binary = options.seg_type == "binary"
        result["dicom_segmentation"] = {
            "type": options.seg_type,
            "rule": "|M| >= threshold" if binary else "|M| / colour_limit, clipped to 1",
            "threshold_fraction_of_colour_limit": SEG_THRESHOLD if binary else None,
            "threshold": SEG_THRESHOLD * vmax if binary else None,
        }
    result["timings_s"]["dicom_outputs"] = time.perf_counter() - started
    result["timings_s"]["total"] += result["timings_s"]["dicom_outputs"]
    return files


def attribution_settings_sha256(
    cfg: RunConfig, provenance: dict[str, Any], options: OutputOptions, keep_mask_sha256: str | None = None
) -> str:
    """The settings hash of an attribution run (a keep mask's content is part of the settings)."""
    settings_sha = settings_sha256(cfg, provenance, "attribution", options)
    return _sha(settings_sha + keep_mask_sha256) if keep_mask_sha256 else settings_sha


def _read_mask(path: Path, native: NDArray[np.float32], what: str) -> tuple[NDArray[np.float32], str]:
    """A mask that must have the input's size, and its hash; InputError naming the cause."""
    mask_sha = read_sha256(path)  # InputError naming the cause when the mask cannot be read
    mask = read_image(path)
    if mask.shape != native.shape:
        raise InputError(f"{what} is {mask.shape[1]}x{mask.shape[0]}, image is {native.shape[1]}x{native.shape[0]}")
    return mask, mask_sha


def check_keep_mask(path: Path, source: Source) -> str:
    """Before a run: the keep mask is readable, has the input's size and a region; its sha256.

    InputError starting "--keep-mask:" otherwise (exit 2, as ``vald induce`` refuses a bad mask).
    """
    from vald.induce import check_region

    try:
        mask, sha = _read_mask(path, source.image, "keep mask")
        check_region(mask, source.image, "keep mask", "keep")
    except InputError as exc:
        raise InputError(f"--keep-mask: {exc}") from None
    return sha


def run_one(
    source: Source,
    out_root: Path,
    engines: Engines,
    provenance: dict[str, Any],
    cfg: RunConfig,
    *,
    options: OutputOptions = DEFAULT_OUTPUTS,
    on_step: Callable[[int, int], None] | None = None,
    keep_mask: Path | None = None,
) -> Path:
    """Counterfactual and attribution map of one input, published under ``out_root/<source.key>/``."""
    outputs = compute_one(source, engines, provenance, cfg, options=options, on_step=on_step, keep_mask=keep_mask)
    return outputs.publish(out_root)


def compute_one(
    source: Source,
    engines: Engines,
    provenance: dict[str, Any],
    cfg: RunConfig,
    *,
    options: OutputOptions = DEFAULT_OUTPUTS,
    on_step: Callable[[int, int], None] | None = None,
    keep_mask: Path | None = None,
) -> OutputSet:
    """Counterfactual and attribution map of one input, as an output set not yet written.

    The one function every executor runs: in this process, or in a cluster worker whose set the driver
    publishes.

    ``keep_mask``: a mask at the input's size whose white region is held unchanged (tubes, lines, devices).
    """
    started = time.perf_counter()
    native = source.image
    box = Letterbox.fit(native.shape, engines.model.image_size)
    keep, keep_sha = _read_mask(keep_mask, native, "keep mask") if keep_mask else (None, None)
    keep_model = None if keep is None else box.to_model(keep)
    result_m = attribute(engines, box.to_model(native), cfg, on_step=on_step, keep=keep_model)
    signed_map = box.to_native(result_m.signed_map).astype(np.float32)
    cf_native = box.to_native(result_m.counterfactual)
    uncertainty = None if result_m.uncertainty is None else box.to_native(result_m.uncertainty).astype(np.float32)
    description = (
        f"signed map M = {cfg.resolved_reference.value} - counterfactual ({cfg.mode.value}), "
        "computed at model resolution, resized to native"
    )
    if keep is not None:
        description += "; the keep mask's region is held unchanged (M = 0 there)"
    settings_sha = attribution_settings_sha256(cfg, provenance, options, keep_sha)
    result = _result(cfg, source, engines, description, result_m.timings.stages, started, provenance, settings_sha)
    if keep_sha:
        result["input"]["keep_mask_sha256"] = keep_sha
    vmax = _display(result, signed_map)
    extra = _dicom_extra(source, cf_native, signed_map, provenance, result, "attribution", options, vmax)
    titles = ("input", "normal counterfactual", f"{cfg.resolved_reference.value} - counterfactual")
    if uncertainty is not None:
        result["uncertainty"] = {
            "file": "uncertainty.npy",
            "what": f"per-pixel standard deviation of the {cfg.average} per-seed maps (model resolution, resized)",
            "mean": float(uncertainty.mean()),
        }
    files, body = output_files(
        native, cf_native, signed_map, vmax, result, titles=titles, extra=extra, uncertainty=uncertainty
    )
    return OutputSet(source.key, files, body)


def induce_one(
    source: Source,
    mask_path: Path,
    out_root: Path,
    engines: Engines,
    provenance: dict[str, Any],
    cfg: RunConfig,
    *,
    options: OutputOptions = DEFAULT_OUTPUTS,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Add ``cfg.prompt``'s finding inside the mask; outputs as ``run_one`` (the map is induced - input)."""
    started = time.perf_counter()
    native = source.image
    mask_native, mask_sha = _read_mask(mask_path, native, "mask")
    box = Letterbox.fit(native.shape, engines.model.image_size)
    induced = induce(engines, box.to_model(native), box.to_model(mask_native), cfg, on_step=on_step)
    change = box.to_native(induced.image) - box.to_native(box.to_model(native))
    out_native = np.clip(native + change, 0.0, 1.0).astype(np.float32)
    description = "signed map = induced - input (masked img2img toward the finding prompt)"
    settings_sha = _sha(settings_sha256(cfg, provenance, "induction", options) + mask_sha)
    result = _result(cfg, source, engines, description, induced.timings.stages, started, provenance, settings_sha)
    result["settings"]["task"] = "induce"
    result["input"]["mask_sha256"] = mask_sha
    change_map = (out_native - native).astype(np.float32)
    vmax = _display(result, change_map)
    extra = _dicom_extra(source, out_native, change_map, provenance, result, "induction", options, vmax)
    out_dir = out_root / _sha(source.key + mask_sha)[:16]
    titles = ("input", "induced", "induced - input")
    publish_set(
        out_dir,
        *output_files(native, out_native, change_map, vmax, result, image_name=INDUCED, titles=titles, extra=extra),
    )
    return out_dir

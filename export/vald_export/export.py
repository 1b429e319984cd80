"""``vald export``: a diffusers folder -> ONNX graphs per component and precision, checked, with a manifest."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vald import strictjson
from vald.app import versions
from vald.config import Precision
from vald.errors import ConfigError, ExportError, ModelError, ValdError
from vald.manifest import FORMAT_VERSION, MANIFEST_NAME, sha256_file
from vald.schedules import NoiseSchedule
from vald.sessions.torch_ref import load_modules
from vald.spec import Component, ComponentSpec, specs
from vald_export.model_folder import ModelFolder
from vald_export.onnx_export import EXTERNAL_DATA_THRESHOLD, convert_fp16, export_fp32
from vald_export.verify import check_graph

Log = Callable[[str], None]


def _example_inputs(
    spec: ComponentSpec, batch: int, sizes: dict[str, int], vocab: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the spec's shapes; symbolic dims from ``sizes`` (``B`` = ``batch``)."""
    tensors = []
    for t in spec.inputs:
        shape = [batch if d == "B" else sizes[d] if isinstance(d, str) else d for d in t.shape]
        if t.name == "attention_mask":  # tokens then padding, of random lengths
            lengths = torch.randint(1, shape[1] + 1, (shape[0], 1), generator=gen)
            tensors.append((torch.arange(shape[1])[None, :] < lengths).long())
        elif t.dtype == "int64":
            tensors.append(torch.randint(0, vocab, shape, generator=gen))
        elif t.name == "timestep":
            tensors.append(torch.randint(0, 1000, shape, generator=gen).float())
        else:
            tensors.append(torch.randn(shape, generator=gen))
    return tuple(tensors)


SANE_MAX_LENGTH = 512  # tokenizers without a limit report a huge model_max_length (int(1e30))
DEFAULT_MAX_LENGTH = 77  # Stable Diffusion's, for tokenizers that say nothing sane


def _save_tokenizer(folder: ModelFolder, out: Path, max_length: int | None) -> tuple[dict[str, str], int, int]:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder.root / "tokenizer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"tokenizer/ cannot be loaded: {exc}") from None
    tok.save_pretrained(out / "tokenizer")
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        raise ModelError("tokenizer/ is not a fast tokenizer (no tokenizer.json could be written)")
    if tok.pad_token_id is None:
        raise ModelError("tokenizer has no pad token; prompts are padded to a fixed length")
    own = int(min(tok.model_max_length, 1 << 30))
    length = max_length or (own if own <= SANE_MAX_LENGTH else DEFAULT_MAX_LENGTH)
    positions = folder.text_config.get("max_position_embeddings")
    if isinstance(positions, int) and length > positions:
        raise ModelError(f"prompt length {length} exceeds the text encoder's max_position_embeddings={positions}")
    files = {f"tokenizer/{p.name}": sha256_file(p) for p in sorted((out / "tokenizer").iterdir())}
    return files, int(tok.pad_token_id), length


def export_model(
    model_dir: Path,
    out: Path,
    *,
    opset: int = 17,
    max_length: int | None = None,
    precisions: Sequence[Precision] = (Precision.FP32, Precision.FP16),
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    log: Log = print,
) -> Path:
    """Export, verify and write ``out/manifest.json``; the folder appears only when all succeeded.

    Work happens in a staging folder beside ``out`` that is removed on any failure (and on Ctrl-C);
    an unexpected failure of a library is raised as one :class:`ExportError` line naming the step.
    """
    folder = ModelFolder.open(model_dir)
    stage = out.parent / f".{out.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    step = ["reading the model folder"]
    try:
        manifest = _export(folder, stage, opset, max_length, precisions, external_data_threshold, log, step)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, ValdError) or not isinstance(exc, Exception):
            raise
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ExportError(f"export failed while {step[0]}: {type(exc).__name__}: {detail}") from None
    (stage / MANIFEST_NAME).write_text(strictjson.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return out / MANIFEST_NAME


def _export(
    folder: ModelFolder,
    stage: Path,
    opset: int,
    max_length: int | None,
    precisions: Sequence[Precision],
    threshold: int,
    log: Log,
    step: list[str],
) -> dict[str, Any]:
    """Write every graph and the tokenizer into ``stage``; return the manifest. ``step[0]`` names the work."""
    step[0] = "reading the scheduler"
    try:
        schedule = NoiseSchedule.for_pipeline(folder.scheduler_config)
    except ConfigError as exc:
        raise ModelError(f"scheduler/scheduler_config.json: {exc}") from None
    if note := schedule.substitution("ddim"):
        log(f"scheduler: {note} (vald's default sampler; recorded in the manifest and every result.json)")
    step[0] = "saving the tokenizer"
    tok_files, pad_id, length = _save_tokenizer(folder, stage, max_length)
    step[0] = "loading the PyTorch modules"
    modules = load_modules(folder.root)
    f = folder.vae_scale_factor
    model: dict[str, Any] = {
        "image_channels": int(folder.vae_config.get("in_channels", 3)),
        "latent_channels": int(folder.vae_config.get("latent_channels", 4)),
        "hidden_size": int(folder.text_config["hidden_size"]),
        "image_size": int(folder.unet_config["sample_size"]) * f,
        "vae_scale_factor": f,
        "scaling_factor": float(folder.vae_config.get("scaling_factor", 0.18215)),
        "shift_factor": float(folder.vae_config.get("shift_factor") or 0.0),
        "max_length": length,
        "pad_id": pad_id,
        "attention_mask": bool(folder.text_config.get("use_attention_mask", False)),
    }
    component_specs = specs(
        image_channels=model["image_channels"],
        latent_channels=model["latent_channels"],
        hidden_size=model["hidden_size"],
        attention_mask=model["attention_mask"],
    )
    sizes: dict[str, int] = {"S": length, "H": model["image_size"], "W": model["image_size"]}
    sizes |= {"h": model["image_size"] // f, "w": model["image_size"] // f}
    vocab = int(folder.text_config.get("vocab_size", 100))
    gen = torch.Generator().manual_seed(0)
    components: dict[str, Any] = {}
    for component in Component:
        spec, module = component_specs[component], modules.pop(component)
        entry: dict[str, Any] = {
            "inputs": [t.to_json() for t in spec.inputs],
            "outputs": [t.to_json() for t in spec.outputs],
            "opset": opset,
            "precisions": {},
        }
        fp32_path = stage / "fp32" / f"{component}.onnx"
        check_inputs = _example_inputs(spec, 2, sizes, vocab, gen)  # batch 2: exercises the dynamic axis
        for precision in precisions:
            started = time.perf_counter()
            path = stage / precision.value / f"{component}.onnx"
            if precision is Precision.FP32 or not fp32_path.exists():
                step[0] = f"exporting {component} to ONNX"
                example = _example_inputs(spec, 1, sizes, vocab, gen)
                files = export_fp32(module, example, spec, fp32_path, opset, threshold)
            if precision is Precision.FP16:
                step[0] = f"converting {component} to FP16"
                files = convert_fp16(fp32_path, path, threshold)
            step[0] = f"checking {component} {precision} against PyTorch"
            report = check_graph(module, check_inputs, spec, path, precision)
            entry["precisions"][precision.value] = {
                "files": {str(p.relative_to(stage)): sha256_file(p) for p in files},
                "parity_vs_torch": {"max_abs_error": report.max_abs_error, "relative_error": report.relative_error},
            }
            log(
                f"{component} {precision}: exported and checked in {time.perf_counter() - started:.1f}s "
                f"(max abs error vs torch {report.max_abs_error:.2e})"
            )
        del module  # one component's torch weights in memory at a time from here on
        if Precision.FP32 not in precisions:
            shutil.rmtree(stage / "fp32", ignore_errors=True)  # only used as the FP16 source
            entry["precisions"].pop(Precision.FP32.value, None)
        components[component.value] = entry
    return {
        "format_version": FORMAT_VERSION,
        "created_unix": int(time.time()),
        "source": {"path": str(folder.root.resolve()), "sha256": folder.sha256()},
        "model": model,
        "scheduler": folder.scheduler_config,
        "schedule": {
            "ddim": schedule.describe("ddim"),
            "dpmpp-2m": {"refused": schedule.dpm_refusal} if schedule.dpm_refusal else schedule.describe("dpmpp-2m"),
        },
        "tokenizer": {"files": tok_files},
        "components": components,
        "versions": versions(("torch", "diffusers", "transformers", "onnx", "onnxruntime", "tokenizers")),
        "exported_on": {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }

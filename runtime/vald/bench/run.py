"""Drive the contenders one process each, compare their outputs, write JSON and a markdown table.

Every contender gets the same image, settings, seed and thread count, one after the other in one run.
Times are wall-clock seconds: p50/p95 over the warm repeats (the first, cold run is reported apart as
part of the cold start).  Accuracy is against the PyTorch fp32 reference's outputs from the same run:
max abs error of the counterfactual (images in [0, 1]) and Pearson correlation of the attribution maps.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from vald.bench.contenders import REFERENCE, Contender
from vald.bench.environment import environment
from vald.config import RunConfig
from vald.errors import ConfigError, InputError
from vald.manifest import Manifest, sha256_file
from vald.outputs import write_atomic

STAGES = ("text_encoder", "vae_encoder", "unet", "vae_decoder")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Subject:
    """A model to benchmark: engine folder, its diffusers folder (torch/diffusers), resolutions."""

    name: str
    engines: Path
    model_dir: Path | None
    sizes: tuple[int, ...]


def _spawn(spec: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    path = tmp / "spec.json"
    path.write_text(json.dumps({**spec, "spawned": time.time()}), encoding="utf-8")  # cold start counts from here
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vald.bench.worker", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"ran past the bench's time limit of {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"error": f"worker exited {done.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)), "n": len(values)}


def summarise(raw: Mapping[str, Any]) -> dict[str, Any]:
    """p50/p95 of the warm runs (the cold run alone if there is no warm one), per stage and end to end."""
    runs = raw["runs"][1:] or raw["runs"][:1]
    keys = [k for k in runs[0] if k != "unet_calls"]
    summary = {k: _stats([r[k] for r in runs if k in r]) for k in keys}
    return {
        "end_to_end_s": summary.pop("total"),
        "stages_s": summary,
        "unet_calls": runs[0].get("unet_calls"),
        "cold_start_s": raw["cold_start_s"],
        "cold_run_s": raw["runs"][0]["total"],
        "peak_rss_mib": raw["peak_rss_mib"],
        "warm_runs": len(raw["runs"]) - 1,
    }


def _accuracy(out: Path, name: str, reference: str) -> dict[str, float]:
    def load(who: str, what: str) -> np.ndarray:
        array: np.ndarray = np.load(out / f"{_slug(who)}.{what}.npy")
        return array

    cf, ref_cf = load(name, "counterfactual"), load(reference, "counterfactual")
    m, ref_m = load(name, "map"), load(reference, "map")
    corr = float(np.corrcoef(m.ravel(), ref_m.ravel())[0, 1]) if m.std() > 0 and ref_m.std() > 0 else float("nan")
    return {"counterfactual_max_abs_error": float(np.abs(cf - ref_cf).max()), "map_correlation": corr}


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def bench_subject(
    subject: Subject,
    contenders: Sequence[Contender],
    cfg: RunConfig,
    *,
    image: Path,
    repeats: int,
    timeout: float,
    log: Log,
) -> list[dict[str, Any]]:
    """Every contender at every size of ``subject``; rows with summary, accuracy or the reason skipped."""
    import importlib.util

    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
    rows = []
    settings = _settings(cfg)
    for size in subject.sizes:
        with tempfile.TemporaryDirectory(prefix="vald-bench-") as tmp_name:
            tmp = Path(tmp_name)
            done: list[str] = []
            size_rows = []
            for c in contenders:
                row: dict[str, Any] = {"model": subject.name, "size": size, "contender": c.name}
                reason = c.unavailable(cfg, cuda=cuda)
                if reason is None and c.kind == "vald" and c.backend.value != "torch":
                    manifest = Manifest.load(subject.engines)
                    if c.precision.value == "fp16" and "fp16" not in {p.value for p in manifest.precisions}:
                        reason = "the engine folder has no FP16 graphs"
                    if c.precision.value == "int8" and not manifest.quantised:
                        reason = "the engine folder has no int8 UNet (run `vald quantize` on it)"
                    if c.backend.value == "tensorrt" and size != manifest.model.image_size:
                        reason = f"native TensorRT engines run at the model's own size ({manifest.model.image_size}²)"
                if reason is not None:
                    size_rows.append({**row, "skipped": reason})
                    log(f"{subject.name} {size}²: {c.name}: skipped ({reason})")
                    continue
                spec = {
                    "kind": c.kind,
                    "engines": str(subject.engines),
                    "model_dir": str(subject.model_dir) if subject.model_dir else None,
                    "settings": {**settings, "backend": c.backend.value, "precision": c.precision.value}
                    | {"provider": c.provider, "threads": cfg.resolved_threads}
                    | {"loop": c.loop.value, "cuda_graph": c.cuda_graph, "unet_batch": c.unet_batch},
                    "image": str(image),
                    "size": size,
                    "repeats": repeats,
                    "out": str(tmp / _slug(c.name)),
                }
                log(f"{subject.name} {size}²: {c.name} ...")
                raw = _spawn(spec, tmp, timeout)
                if "error" in raw:
                    size_rows.append({**row, "failed": raw["error"]})
                    log(f"  failed: {raw['error']}")
                    continue
                summary = summarise(raw)
                extra = {k: raw.get(k) for k in ("sessions", "startup", "engine_files_sha256", "loop")}
                size_rows.append({**row, **summary, **extra})
                done.append(c.name)
                p50, cold = summary["end_to_end_s"]["p50"], summary["cold_start_s"]
                log(f"  end to end p50 {p50:.2f} s, cold start {cold:.1f} s")
            reference = REFERENCE if REFERENCE in done else (done[0] if done else None)
            for r in size_rows:
                if reference and r["contender"] in done:
                    r["accuracy_vs"] = reference
                    r["accuracy"] = _accuracy(tmp, r["contender"], reference)
            _ratios(size_rows)
            rows.extend(size_rows)
    return rows


RATIO_BASES = ("torch fp32", "torch bf16", "torch fp32 cuda", "torch fp16 cuda")


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-ups of every row against the torch fp32 and torch bf16 rows (p50 end to end), when present."""
    p50 = {r["contender"]: r["end_to_end_s"]["p50"] for r in rows if "end_to_end_s" in r}
    for r in rows:
        if r["contender"] in p50:
            r["speedup"] = {f"vs {b}": p50[b] / p50[r["contender"]] for b in RATIO_BASES if b in p50}


def _settings(cfg: RunConfig) -> dict[str, Any]:
    """The shared settings as RunConfig keys (backend, precision and provider are each contender's)."""
    return {
        k: (v.value if isinstance(v, Enum) else v)
        for k, v in asdict(cfg).items()
        if k not in ("backend", "precision", "provider")
    }


def _warm_disk_cache(contenders: Sequence[Contender]) -> None:
    """Import every library the contenders load, once, in a throwaway process.

    Cold start is measured as a new process on a machine that has run it before (libraries in the page
    cache), not as the first start after boot; without this the first contender alone pays for the disk.
    """
    modules = {"numpy", "onnxruntime", "tokenizers", "PIL.Image"}
    modules |= {{"openvino": "openvino", "torch": "torch"}.get(c.backend.value, "onnxruntime") for c in contenders}
    if any(c.kind == "diffusers" or c.backend.value == "torch" for c in contenders):
        modules |= {"diffusers", "transformers"}
    code = "import vald\n"  # its telemetry switches (vald.privacy) hold in this process too
    code += "\n".join(f"try:\n    import {m}\nexcept Exception:\n    pass" for m in sorted(modules))
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)


def check_bench_arguments(
    *, image: Path, repeats: int, sizes: Sequence[int], timeout: float, scale: int, max_size: int = 4096
) -> None:
    """The bench's own arguments, checked before anything runs: one-line ConfigError / InputError each.

    ``scale`` is the model's VAE scale factor: every size must be a multiple of it (the latent's side).
    """
    if not 0 <= repeats <= 1000:
        raise ConfigError(f"--repeats {repeats} must be between 0 and 1000 (warm runs after the cold one)")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout {timeout} must be a positive number of seconds")
    for size in sizes:
        if not scale <= size <= max_size or size % scale:
            raise ConfigError(
                f"--size {size} must be a multiple of the model's VAE factor {scale} between {scale} and {max_size}"
            )
    if not image.is_file():
        raise InputError("--image: no such file (or not a regular file)")


def run_bench(
    subjects: Sequence[Subject],
    contenders: Sequence[Contender],
    cfg: RunConfig,
    *,
    image: Path,
    repeats: int,
    out: Path,
    timeout: float = 3600.0,
    log: Log = print,
) -> Path:
    """Benchmark every subject; write ``out/latency-<date>.json`` and ``.md``; return the JSON path."""
    started = time.time()
    env = environment()
    _warm_disk_cache(contenders)
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        rows.extend(bench_subject(subject, contenders, cfg, image=image, repeats=repeats, timeout=timeout, log=log))
    stamp = time.strftime("%Y-%m-%d", time.gmtime(started))
    payload = {
        "date": stamp,
        "settings": _settings(cfg),
        "threads": cfg.resolved_threads,
        "image_sha256": sha256_file(image),  # never its name: a file name may carry patient data
        "repeats": repeats,
        "environment": env,
        "engines": {
            s.name: {"folder": str(s.engines), "model_sha256": Manifest.load(s.engines).model_sha256} for s in subjects
        },
        "rows": rows,
        "wall_s": time.time() - started,
    }
    threads = f"-{cfg.threads}threads" if cfg.threads else ""
    preset = f"-{cfg.preset}" if cfg.preset else ""
    path = out / f"latency-{'+'.join(s.name for s in subjects)}-{cfg.mode.value}{preset}{threads}.json"
    write_atomic(path, (json.dumps(_strict(payload), indent=1, allow_nan=False) + "\n").encode())
    write_atomic(path.with_suffix(".md"), table(payload).encode())
    return path


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def table(payload: Mapping[str, Any]) -> str:
    """A markdown table of the rows, with the machine and settings above it."""
    env, s = payload["environment"], payload["settings"]
    cpu = env["cpu"]
    lines = [
        f"Benchmark {payload['date']}: {cpu['model']} ({cpu['cpus_available']} CPUs, {', '.join(cpu['flags'])}), "
        f"{payload['threads']} threads; mode {s['mode']}, strength {s['strength']}, {s['steps']} steps, "
        f"guidance {s['guidance']} (at t >= {s.get('guidance_min_t', 0)}), seed {s['seed']}; "
        f"{payload['repeats']} warm repeat(s).",
        "",
        "| model | size | contender | end to end p50 (s) | UNet call (s) | cold start (s) | peak RSS (MiB) "
        "| vs torch fp32 | vs torch bf16 | cf max err | map corr |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        head = f"| {r['model']} | {r['size']}² | {r['contender']} "
        if "end_to_end_s" not in r:
            lines.append(head + f"| {r.get('skipped') or r.get('failed')} | | | | | | | |")
            continue
        calls = ", ".join(
            f"b{k[len('unet_call_b') :]} {v['p50']:.3g}"
            for k, v in r["stages_s"].items()
            if k.startswith("unet_call_b")
        )
        speed = r.get("speedup", {})
        acc = r.get("accuracy", {})
        corr = acc.get("map_correlation")
        lines.append(
            head + f"| {r['end_to_end_s']['p50']:.3g} | {calls} | {r['cold_start_s']:.3g} | {r['peak_rss_mib']:.0f} "
            f"| {_x(speed.get('vs torch fp32'))} | {_x(speed.get('vs torch bf16'))} "
            f"| {acc.get('counterfactual_max_abs_error', float('nan')):.2g} | "
            f"{'n/a' if corr is None or corr != corr else f'{corr:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}×"

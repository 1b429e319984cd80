"""The machine and software a benchmark ran on: CPU model and flags, cores, memory, versions, install sizes."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from vald.app import versions
from vald.config import available_cpus

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "avx512_fp16")
# Top-level packages of each install; their sizes include every dependency they pull (not shared ones twice).
STACKS = {
    "runtime": ("onnxruntime", "numpy", "tokenizers", "pillow"),
    "runtime + openvino": ("onnxruntime", "numpy", "tokenizers", "pillow", "openvino"),
    "torch stack": ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow"),
}


def cpu() -> dict[str, Any]:
    """CPU model, the instruction-set flags that decide bf16/int8 speed, CPUs available, memory."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory = 0
    with contextlib.suppress(ValueError, OSError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "model": model,
        "flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
        "logical_cpus": os.cpu_count(),
        "cpus_available": available_cpus(),
        "memory_gib": round(memory / 2**30, 1),
        "machine": platform.machine(),
    }


def closure(packages: tuple[str, ...]) -> set[str]:
    """``packages`` and every installed distribution they require, transitively (extras not followed)."""
    seen: set[str] = set()
    pending = [p.lower() for p in packages]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in requires:
            if "extra ==" in req.replace('"', "").replace("'", ""):
                continue
            dep = re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")
            pending.append(dep)
    return seen


def installed_mib(packages: tuple[str, ...]) -> float:
    """Disk size of ``packages`` and their installed dependencies (MiB)."""
    total = 0
    for name in sorted(closure(packages)):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
    return round(total / 2**20, 1)


def gpu() -> dict[str, Any] | None:
    """The CUDA device torch sees, if torch is installed and sees one (torch is imported only if present)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def environment() -> dict[str, Any]:
    """Everything a reader needs to place the numbers."""
    packages = (*STACKS["runtime + openvino"], *STACKS["torch stack"], "onnx", "onnxruntime-gpu", "openvino-telemetry")
    return {
        "cpu": cpu(),
        "gpu": gpu(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions(packages),
        "install_mib": {stack: installed_mib(names) for stack, names in STACKS.items()},
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }

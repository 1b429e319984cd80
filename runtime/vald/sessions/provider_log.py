"""What ONNX Runtime says when a GPU provider does not start, turned into one vald line.

ONNX Runtime's C++ logger writes straight to file descriptor 2 when the CUDA or TensorRT provider cannot be
loaded (e.g. ``libcublasLt.so.13: cannot open shared object file`` and ``Require cuDNN 9.* and CUDA 13.*``),
then quietly runs on the CPU.  vald refuses that fallback; :func:`native_stderr` keeps those raw lines out of
the terminal while a GPU session is created, :func:`reason` condenses them for vald's one error line, and a
session that did start gets them written back, once.  :func:`competing_distributions` names the case where
the CPU and GPU builds of ONNX Runtime are both installed (they overwrite each other's files).
"""

from __future__ import annotations

import functools
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from importlib import metadata

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


@dataclass
class Captured:
    """The text written to file descriptor 2 inside :func:`native_stderr` (set when it exits)."""

    text: str = ""


@contextmanager
def native_stderr() -> Iterator[Captured]:
    """Redirect file descriptor 2 (C++ libraries' writes included) to a temporary file for the block."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def reason(text: str) -> str:
    """The gist of ONNX Runtime's provider-loading errors: the missing library and the CUDA it requires."""
    parts = []
    missing = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    driver = missing is not None and missing.group(1).startswith("libcuda.so")
    if missing:
        parts.append(f"{missing.group(1)} cannot be loaded" + (" (no NVIDIA driver on this machine)" if driver else ""))
    requires = re.search(r"Require cuDNN (\d+)\S* and CUDA (\d+)", text)
    if requires and not driver:  # the CUDA libraries were found; what is missing is the driver
        parts.append(f"this onnxruntime build needs CUDA {requires.group(2)} and cuDNN {requires.group(1)}")
    if not parts:
        errors = [ln for ln in text.splitlines() if "[E:" in ln or "rror" in ln]
        if errors:
            parts.append(re.sub(r"^.*?\] ", "", errors[0]).strip()[:160])
    return "; ".join(parts)


@functools.cache
def preload_cuda_libraries() -> str:
    """Load CUDA and cuDNN from NVIDIA's pip packages into this process, once; return what onnxruntime said.

    ``onnxruntime.preload_dlls`` (1.21+) looks in the ``nvidia/*/lib`` folders of site-packages, where CUDA
    torch's wheels put cuBLAS, cuDNN and the CUDA runtime (torch cu130: CUDA 13, cuDNN 9, as onnxruntime-gpu
    1.31 needs), then on the default library path.  So a machine with CUDA torch needs no separate CUDA
    install or LD_LIBRARY_PATH for ONNX Runtime's CUDA provider.  Its messages about libraries it did not find
    are kept for :func:`reason`, not printed.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    with redirect_stdout(printed), native_stderr() as said:
        try:
            preload(cuda=True, cudnn=True, msvc=False)
        except (OSError, RuntimeError) as exc:
            print(f"onnxruntime.preload_dlls failed: {exc}")
    return printed.getvalue() + said.text


def competing_distributions() -> list[str]:
    """The ONNX Runtime distributions installed side by side (more than one means broken files)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found if len(found) > 1 else []

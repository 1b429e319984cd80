"""ONNX Runtime sessions (CPU, CUDA and TensorRT execution providers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import Precision, Provider, RunConfig
from vald.errors import BackendUnavailableError
from vald.manifest import Manifest
from vald.spec import Component, ComponentSpec, TensorSpec

_EP = {
    Provider.CPU: "CPUExecutionProvider",
    Provider.CUDA: "CUDAExecutionProvider",
    Provider.TENSORRT: "TensorrtExecutionProvider",
}


class OrtSession:
    """One ONNX graph in an ``onnxruntime.InferenceSession``."""

    def __init__(self, path: Path, spec: ComponentSpec, providers: list[Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._spec = spec
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self._session.get_providers()[0] != wanted:
            raise BackendUnavailableError(
                f"onnxruntime did not start {wanted} for {spec.component} (got {self._session.get_providers()})"
            )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input bindings."""
        return self._spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output bindings."""
        return self._spec.outputs

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run the graph; outputs as float32."""
        names = [t.name for t in self._spec.outputs]
        values = self._session.run(names, {t.name: np.ascontiguousarray(feeds[t.name]) for t in self._spec.inputs})
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}


def _providers(cfg: RunConfig, cache_dir: Path) -> list[Any]:
    import onnxruntime as ort

    ep = _EP[cfg.provider]
    available = ort.get_available_providers()
    if ep not in available:
        raise BackendUnavailableError(
            f"provider={cfg.provider} needs {ep}, which this onnxruntime does not have (available: "
            f"{', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt"
        )
    if cfg.provider is Provider.TENSORRT:
        options = {
            "trt_fp16_enable": cfg.precision is Precision.FP16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
        }
        return [(ep, options)]
    return [ep]


def open_ort_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, OrtSession]:
    """Open the manifest's graphs of ``cfg.precision`` (TensorRT EP builds FP16 from the FP32 graphs)."""
    precision = Precision.FP32 if cfg.provider is Provider.TENSORRT else cfg.precision
    providers = _providers(cfg, manifest.root / "trt_cache")
    return {c: OrtSession(manifest.graph_path(c, precision), manifest.specs[c], providers) for c in Component}

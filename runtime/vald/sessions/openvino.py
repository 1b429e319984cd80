"""OpenVINO sessions: the exported FP32 ONNX graphs compiled by OpenVINO's CPU plugin.

OpenVINO reads ONNX directly (``Core.read_model``).  Precision ``bf16`` sets the inference precision
hint to bf16 (AVX512-BF16 or AMX matrix units); ``fp32`` sets f32 explicitly, because OpenVINO's own
default on such CPUs is bf16.  After compiling, the precision the plugin reports is checked against
the one asked for: a CPU that cannot run bf16 is an error, never a silent f32 run.  Compiled models
are cached in the engine folder's ``.vald-cache/openvino`` (OpenVINO's ``CACHE_DIR``), which OpenVINO
keys by graph, device, its version and the compile options.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.cache import cache_dir
from vald.config import Precision, Provider, RunConfig
from vald.errors import BackendUnavailableError
from vald.manifest import Manifest
from vald.privacy import quiet_dependencies
from vald.sessions import BoundSession, SessionInfo, check_bindings, graph_precision
from vald.spec import Component, ComponentSpec

_HINT = {Precision.FP32: "f32", Precision.BF16: "bf16"}
_REPORTED = {"float32": Precision.FP32, "f32": Precision.FP32, "bfloat16": Precision.BF16, "bf16": Precision.BF16}


def _core(cache: Path | None) -> Any:
    quiet_dependencies()  # again: a host program may have reset it; before the first import openvino
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailableError("backend=openvino needs OpenVINO: pip install 'vald[openvino]'") from None
    core = ov.Core()
    if cache is not None:
        core.set_property({"CACHE_DIR": str(cache)})
    return core


class OpenVinoSession(BoundSession):
    """One ONNX graph compiled for OpenVINO's CPU device, with one infer request reused across calls."""

    def __init__(
        self,
        core: Any,
        path: Path,
        spec: ComponentSpec,
        *,
        precision: Precision,
        threads: int,
        graph: str = "",
        cache: Path | None = None,
    ) -> None:
        self._spec = spec
        blobs = set(cache.iterdir()) if cache is not None else set()
        config = {
            "INFERENCE_PRECISION_HINT": _HINT[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        try:
            compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailableError(f"OpenVINO cannot compile {spec.component} ({precision}): {first}") from None
        check_bindings(
            graph or path.name,
            spec,
            (next(iter(port.get_names())) for port in compiled.inputs),
            (next(iter(port.get_names())) for port in compiled.outputs),
        )
        actual = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        used = next((p for name, p in _REPORTED.items() if name in actual), None)
        if used is None or used is not precision:
            raise BackendUnavailableError(
                f"OpenVINO compiled {spec.component} with inference precision {actual}, not {precision} "
                "(bf16 needs a CPU with AVX512-BF16 or AMX)"
            )
        self._request = compiled.create_infer_request()
        self._names = [t.name for t in spec.outputs]
        threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        # from OpenVINO's cache when it had blobs and wrote no new one
        cached = cache is not None and bool(blobs) and not (set(cache.iterdir()) - blobs)
        self._info = SessionInfo("openvino", "CPU", used.value, threads_used, graph=graph, cached=cached)

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run the compiled model; outputs as float32 copies (the request's buffers are reused)."""
        results = self._request.infer({t.name: np.ascontiguousarray(feeds[t.name]) for t in self._spec.inputs})
        by_name = {next(iter(port.get_names())): value for port, value in results.items()}
        return {n: np.array(by_name[n], dtype=np.float32) for n in self._names}


def open_openvino_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, OpenVinoSession]:
    """Compile the four FP32 graphs on the CPU at ``cfg.precision`` with ``cfg``'s threads."""
    if cfg.provider is not Provider.CPU:
        raise BackendUnavailableError(f"backend=openvino runs on provider cpu here, not {cfg.provider}")
    cache = cache_dir(manifest.root, "openvino")
    core = _core(cache)
    graphs = graph_precision(cfg) or Precision.FP32
    sessions = {}
    for component in Component:
        path = manifest.graph_path(component, graphs)
        sessions[component] = OpenVinoSession(
            core,
            path,
            manifest.specs[component],
            precision=cfg.precision,
            threads=cfg.resolved_threads,
            graph=str(path.relative_to(manifest.root)),
            cache=cache,
        )
    return sessions

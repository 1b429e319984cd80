"""OpenVINO sessions: the exported FP32 ONNX graphs compiled by OpenVINO's CPU plugin.

OpenVINO reads ONNX directly (``Core.read_model``).  Precision ``bf16`` sets the inference precision
hint to bf16 (AVX512-BF16 or AMX matrix units); ``fp32`` sets f32 explicitly, because OpenVINO's own
default on such CPUs is bf16.  After compiling, the precision the plugin reports is checked against
the one asked for: a CPU that cannot run bf16 is an error, never a silent f32 run.  Precision ``int8`` loads
the UNet ``vald quantize`` wrote (NNCF's int8 quantise/dequantise pairs) and the other FP32 graphs; it needs
a CPU with int8 dot-product units (VNNI or AMX), runs the float remainder at bf16 where the CPU has it (else
f32), and is checked the same way: the compiled UNet must run int8 convolutions or matrix products, and
its info says ``int8+bf16`` (or ``int8+fp32``).  Compiled models
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
from vald.cpu import cpu_flags
from vald.errors import BackendUnavailableError
from vald.manifest import QUANTISED, Manifest
from vald.privacy import quiet_dependencies
from vald.sessions import BoundSession, SessionInfo, check_bindings, graph_precision
from vald.spec import Component, ComponentSpec

_HINT = {Precision.FP32: "f32", Precision.BF16: "bf16"}
_REPORTED = {"float32": Precision.FP32, "f32": Precision.FP32, "bfloat16": Precision.BF16, "bf16": Precision.BF16}
INT8_UNITS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of int8 dot-product units
_MATRIX_OPS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution")


def check_int8_cpu() -> None:
    """BackendUnavailableError unless this CPU has VNNI or AMX int8 units (int8 without them is slower than bf16)."""
    if not cpu_flags() & set(INT8_UNITS):
        raise BackendUnavailableError(
            "precision int8 needs a CPU with int8 dot-product units (VNNI or AMX: cpu flags "
            + ", ".join(INT8_UNITS)
            + "), and this one reports none; run --precision bf16 or fp32"
        )


def int8_kernels(compiled: Any) -> int:
    """How many convolutions and matrix products the compiled model runs in int8 (u8/i8)."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        runs = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        count += kind in _MATRIX_OPS and runs.lower() in ("u8", "i8")
    return count


def float_precision(core: Any, precision: Precision) -> Precision:
    """The float precision OpenVINO is told to use: ``precision`` itself, or for int8 the CPU's best (bf16, f32)."""
    if precision is not Precision.INT8:
        return precision
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return Precision.BF16 if "BF16" in capabilities else Precision.FP32


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
        quantised: bool = False,
        release: bool = False,
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
        label = used.value
        if quantised:
            if not int8_kernels(compiled):
                raise BackendUnavailableError(f"OpenVINO compiled the int8 {spec.component} without int8 kernels")
            label = f"int8+{used.value}"
        self._compiled = compiled
        self._release = release
        self._request = compiled.create_infer_request()
        self._names = [t.name for t in spec.outputs]
        threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        # from OpenVINO's cache when it had blobs and wrote no new one
        cached = cache is not None and bool(blobs) and not (set(cache.iterdir()) - blobs)
        self._info = SessionInfo("openvino", "CPU", label, threads_used, graph=graph, cached=cached)

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run the compiled model; outputs as float32 copies (the request's buffers are reused)."""
        results = self._request.infer({t.name: np.ascontiguousarray(feeds[t.name]) for t in self._spec.inputs})
        by_name = {next(iter(port.get_names())): value for port, value in results.items()}
        outputs = {n: np.array(by_name[n], dtype=np.float32) for n in self._names}
        if self._release:  # a network run once per image: its intermediate buffers are not kept between images
            self._compiled.release_memory()
        return outputs


def open_openvino_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, OpenVinoSession]:
    """Compile the four graphs (FP32, or int8 for what `vald quantize` quantised) at ``cfg.precision``."""
    if cfg.provider is not Provider.CPU:
        raise BackendUnavailableError(f"backend=openvino runs on provider cpu here, not {cfg.provider}")
    if cfg.precision is Precision.INT8:
        check_int8_cpu()
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
            precision=float_precision(core, cfg.precision),
            threads=cfg.resolved_threads,
            graph=str(path.relative_to(manifest.root)),
            cache=cache,
            quantised=cfg.precision is Precision.INT8 and component in QUANTISED,
            release=component is not Component.UNET,
        )
    return sessions

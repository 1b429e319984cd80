"""ONNX Runtime sessions (CPU, CUDA and TensorRT execution providers).

On the CPU provider, the graph ONNX Runtime optimises on the first start is saved in the engine cache,
keyed by the source graph's sha256, the onnxruntime version and this CPU's instruction-set flags, and is
loaded with optimisation off on later starts: start-up does not redo the graph rewriting every time.

On the CUDA provider every run goes through **IO binding** (:class:`BoundRunner`): per input shape, input and
output buffers are allocated on the device once and kept, inputs are copied into them in place, and outputs
stay there until copied back, so repeated shapes (every UNet step) allocate nothing.  Fixed buffers are
what the CUDA EP's **CUDA graphs** need: with ``cuda_graph`` (``--cuda-graph``) the UNet's session is opened
with ``enable_cuda_graph`` and each input shape gets its own captured graph (``gpu_graph_id``).  The binding
logic runs on the CPU provider in the tests; the CUDA paths are written against the documented onnxruntime
API and have not been run here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import Precision, Provider, RunConfig
from vald.errors import BackendUnavailableError, EngineMismatchError
from vald.manifest import Manifest
from vald.privacy import quiet_dependencies
from vald.sessions import BoundSession, SessionInfo, check_bindings, graph_precision
from vald.sessions.ort_cache import cached_graph, discard_cache, publish_graph
from vald.sessions.provider_log import (
    Captured,
    competing_distributions,
    native_stderr,
    preload_cuda_libraries,
    reason,
)
from vald.spec import Component, ComponentSpec

_EP = {
    Provider.CPU: "CPUExecutionProvider",
    Provider.CUDA: "CUDAExecutionProvider",
    Provider.TENSORRT: "TensorrtExecutionProvider",
}


def _options(threads: int, *, optimize: bool, save_to: Path | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No CPU memory arena: with one, each session keeps the peak of its largest call (the UNet's attention
    # at 512²) for good.  Measured on the SD1.5-size UNet at 512² (2 cores): peak RSS 11.1 -> 7.3 GiB, the
    # call's time unchanged within noise (21.8 s -> 21.0 s); see docs/benchmarks.md.  Pixels are unaffected.
    options.enable_cpu_mem_arena = False
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        entry = options.add_session_config_entry
        entry("session.optimized_model_external_initializers_file_name", f"{save_to.name}.data")
        entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return options


class BoundRunner:
    """IO binding with buffers kept per input shape on ``device`` ('cuda' on GPUs, 'cpu' in the tests)."""

    def __init__(self, session: Any, inputs: list[str], outputs: list[str], device: str, *, graphs: bool) -> None:
        self._session, self._inputs, self._outputs, self._device = session, inputs, outputs, device
        self._graphs = graphs
        self._bound: dict[tuple[Any, ...], tuple[dict[str, Any], Any, Any]] = {}

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Copy inputs into this shape's buffers, run, copy outputs back (as float32)."""
        import onnxruntime as ort

        arrays = {n: np.ascontiguousarray(feeds[n]) for n in self._inputs}
        key = tuple((n, a.shape, a.dtype.str) for n, a in arrays.items())
        entry = self._bound.get(key)
        if entry is None:
            values = {n: ort.OrtValue.ortvalue_from_numpy(a, self._device, 0) for n, a in arrays.items()}
            binding = self._session.io_binding()
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._outputs:
                binding.bind_output(name, self._device)
            options = ort.RunOptions()
            if self._graphs:  # one captured graph per input shape; ids from 1 (-1 would mean: do not capture)
                options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
            self._session.run_with_iobinding(binding, options)
            for name, value in zip(self._outputs, binding.get_outputs(), strict=True):
                binding.bind_ortvalue_output(name, value)  # the same buffers, at the same addresses, from now on
            entry = self._bound[key] = (values, binding, options)
        else:
            values, binding, options = entry
            for name, array in arrays.items():
                values[name].update_inplace(array)
            self._session.run_with_iobinding(binding, options)
        _, binding, _ = entry
        copies = binding.copy_outputs_to_cpu()
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self._outputs, copies, strict=True)}

    @property
    def shapes(self) -> int:
        """How many input shapes have buffers (and, with CUDA graphs, a captured graph)."""
        return len(self._bound)


ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


class DeviceRunner:
    """IO binding on device arrays (``--loop cupy|torch``).

    The buffers of each input shape are allocated once as arrays of ``ops``' kind and bound by address; a run
    copies the inputs in on the device, runs, and returns copies of the outputs (float32, on the device).
    With ``graphs`` the CUDA EP captures one CUDA graph per shape, which needs exactly these fixed addresses.
    """

    def __init__(self, session: Any, spec: ComponentSpec, ops: Any, *, graphs: bool) -> None:
        self._session, self._spec, self._ops, self._graphs = session, spec, ops, graphs
        values = [*session.get_inputs(), *session.get_outputs()]
        self._types = {v.name: ORT_TYPES.get(v.type, "float32") for v in values}
        self._device = str(ops.device).split(":")[0]
        self._bound: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any], Any, Any]] = {}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Copy the inputs into this shape's buffers, run, return the outputs."""
        import onnxruntime as ort

        from vald.sessions.device import output_shapes

        ops = self._ops
        shapes = {t.name: tuple(int(d) for d in feeds[t.name].shape) for t in self._spec.inputs}
        key = tuple(sorted(shapes.items()))
        entry = self._bound.get(key)
        if entry is None:
            binding = self._session.io_binding()
            ins = {n: ops.empty(shape, self._types[n]) for n, shape in shapes.items()}
            outs = {
                n: ops.empty(shape, self._types[n])
                for n, shape in output_shapes(self._spec.inputs, self._spec.outputs, shapes).items()
            }
            for bind, arrays in ((binding.bind_input, ins), (binding.bind_output, outs)):
                for n, a in arrays.items():
                    bind(n, self._device, 0, np.dtype(self._types[n]), tuple(a.shape), ops.pointer(a))
            options = ort.RunOptions()
            if self._graphs:
                options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
            entry = self._bound[key] = (ins, outs, binding, options)
        ins, outs, binding, options = entry
        for name, buffer in ins.items():
            ops.copy_into(buffer, ops.cast(feeds[name], self._types[name]))
        ops.synchronize()  # ONNX Runtime reads the buffers on its own stream
        self._session.run_with_iobinding(binding, options)
        return {n: ops.copy(ops.cast(a, "float32")) for n, a in outs.items()}

    @property
    def shapes(self) -> int:
        """How many input shapes have buffers (and, with CUDA graphs, a captured graph)."""
        return len(self._bound)


class OrtSession(BoundSession):
    """One ONNX graph in an ``onnxruntime.InferenceSession``.

    ``threads``: intra-op threads (0: onnxruntime's default).  ``optimized``: ``path`` is a graph this
    provider already optimised (loaded with optimisation off).  ``save_optimized``: write the
    optimised graph there.  ``precision``: the compute precision the provider was given (recorded).
    """

    def __init__(
        self,
        path: Path,
        spec: ComponentSpec,
        providers: list[Any],
        *,
        threads: int = 0,
        precision: Precision = Precision.FP32,
        optimized: bool = False,
        save_optimized: Path | None = None,
        graph: str = "",
        bind: str | None = None,
        cuda_graph: bool = False,
        cache_sha256: str = "",
    ) -> None:
        import onnxruntime as ort

        quiet_dependencies()  # no-op after ``import vald``; the switch must precede ORT's first session
        self._spec = spec
        options = _options(threads, optimize=not optimized, save_to=save_optimized)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        gpu = wanted != _EP[Provider.CPU]
        preloaded = preload_cuda_libraries() if gpu else ""
        with native_stderr() if gpu else nullcontext(Captured()) as said:
            try:
                self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, InvalidGraph, Fail, ...)
                error: Exception | None = exc
            else:
                error = None
        if error is not None:
            raise EngineMismatchError(
                f"engine file {graph or path.name} cannot be loaded by onnxruntime ({type(error).__name__})"
            ) from None
        check_bindings(
            graph or path.name,
            spec,
            (i.name for i in self._session.get_inputs()),
            (o.name for o in self._session.get_outputs()),
        )
        if self._session.get_providers()[0] != wanted:
            why = reason(preloaded + said.text) or f"it offered {self._session.get_providers()}"
            both = competing_distributions()
            if both:
                why += f"; {' and '.join(both)} are both installed and overwrite each other (install only vald-gpu)"
            raise BackendUnavailableError(f"onnxruntime did not start {wanted} for {spec.component}: {why}")
        if said.text:
            sys.stderr.write(said.text)  # the provider started: what onnxruntime said is shown, once
        device = wanted + ("+cuda-graph" if cuda_graph else "") + ("+io-binding" if bind else "")
        self._info = SessionInfo(
            "onnxruntime", device, precision.value, threads, graph=graph, cached=optimized, cache_sha256=cache_sha256
        )
        self._runner = None
        self._cuda_graph = cuda_graph
        self._device_runner: DeviceRunner | None = None
        if bind is not None:
            names = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
            self._runner = BoundRunner(self._session, *names, bind, graphs=cuda_graph)

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run the graph; outputs as float32."""
        if self._runner is not None:
            return self._runner.run(feeds)
        names = [t.name for t in self._spec.outputs]
        values = self._session.run(names, {t.name: np.ascontiguousarray(feeds[t.name]) for t in self._spec.inputs})
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}

    def run_device(self, feeds: Mapping[str, Any], ops: Any) -> dict[str, Any]:
        """Device arrays of ``ops``' kind in and out (``--loop``); see :class:`DeviceRunner`."""
        if self._device_runner is None:
            self._device_runner = DeviceRunner(self._session, self._spec, ops, graphs=self._cuda_graph)
        return self._device_runner.run(feeds)


def _providers(cfg: RunConfig, cache: Path) -> list[Any]:
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
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
        }
        return [(ep, options)]
    return [ep]


def open_ort_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, OrtSession]:
    """Open the manifest's graphs (TensorRT EP builds FP16 from the FP32 graphs) with ``cfg``'s threads."""
    precision = graph_precision(cfg) or Precision.FP32
    providers = _providers(cfg, manifest.root / "trt_cache")
    hashes = manifest.engine_hashes(precision)
    sessions = {}
    for component in Component:
        source = manifest.graph_path(component, precision)
        rel = str(source.relative_to(manifest.root))
        graphs = cfg.cuda_graph and component is Component.UNET  # the network called with static shapes
        component_providers = [(providers[0], {"enable_cuda_graph": "1"})] if graphs else providers
        for last_try in (False, True):
            if cfg.provider is Provider.CPU:
                path, cached, publish = cached_graph(manifest, rel, hashes[rel])
            else:
                path, cached, publish = source, "", None  # GPU providers keep their own caches
            try:
                sessions[component] = OrtSession(
                    path,
                    manifest.specs[component],
                    component_providers,
                    threads=cfg.resolved_threads,
                    precision=cfg.precision,
                    optimized=bool(cached),
                    save_optimized=publish[0] if publish else None,
                    graph=rel,
                    bind="cuda" if cfg.provider is Provider.CUDA else None,
                    cuda_graph=graphs,
                    cache_sha256=cached,
                )
            except EngineMismatchError:
                if not cached or last_try:
                    raise  # the engine file itself (verified against the manifest) does not load
                discard_cache(manifest.root, path.parent, rel, "onnxruntime cannot load it")
                continue
            break
        if publish is not None:
            publish_graph(manifest, *publish)
    return sessions

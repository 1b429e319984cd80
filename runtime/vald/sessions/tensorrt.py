"""Native TensorRT engines behind the :class:`~vald.sessions.Session` protocol (engines built by ``vald build``).

One engine per component, one execution context, one CUDA stream; device buffers are allocated once and
grown only when a larger shape arrives; an engine with several optimisation profiles (one per input shape
the run uses, ``--profile static``) switches to the profile that holds the shape.  ``run`` copies inputs to
the device, ``execute_async_v3``, and copies outputs back.

Written against TensorRT's documented Python API (10.x, 11.x) and cuda-python; **not run** on this
project's machines (no GPU, no TensorRT).  Device-resident latents and CUDA-graph capture are not done yet.

:func:`open_tensorrt_sessions` picks the engine set (:mod:`vald.sessions.tensorrt_set`), compares the build
machine's identity with this one before any engine is deserialised, and opens one session per component.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import Provider, RunConfig
from vald.errors import BackendUnavailableError, EngineMismatchError
from vald.manifest import Manifest
from vald.sessions import BoundSession, SessionInfo, check_bindings
from vald.sessions.cuda import check, cudart
from vald.sessions.tensorrt_identity import check_identity, this_machine
from vald.sessions.tensorrt_set import select_engine_set
from vald.spec import Component, ComponentSpec

H2D, D2H = 1, 2  # cudaMemcpyKind: cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost


def _trt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailableError(
            "the TensorRT backend needs TensorRT and cuda-python: pip install 'vald[tensorrt]' (NVIDIA's index)"
        ) from None
    return trt


def run_onnx_cpu(graph: Path, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
    """The reference outputs of an ONNX graph on ONNX Runtime's CPU provider (for the FP16 build check)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, session.run(names, dict(feeds)), strict=True)}


class TensorRTSession(BoundSession):
    """One deserialized TensorRT engine."""

    def __init__(self, engine: Any, spec: ComponentSpec, *, graph: str = "", precision: str = "fp16") -> None:
        trt = _trt()
        self._trt, self._engine, self._spec = trt, engine, spec
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        check_bindings(graph, spec, [n for n in names if is_input[n]], [n for n in names if not is_input[n]])
        self._context = engine.create_execution_context()
        self._rt = cudart()
        self._stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._profile = 0
        self._info = SessionInfo("tensorrt", "cuda", precision, 0, graph=graph)

    @classmethod
    def from_bytes(
        cls, plan: bytes, spec: ComponentSpec, *, graph: str = "", precision: str = "fp16"
    ) -> TensorRTSession:
        """Deserialize an engine; EngineMismatchError when TensorRT refuses it."""
        trt = _trt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineMismatchError(f"TensorRT could not load engine {graph or spec.component.value}; rebuild it")
        return cls(engine, spec, graph=graph, precision=precision)

    def _device(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                check(self._rt.cudaFree(pointer), "cudaFree")
            pointer = int(check(self._rt.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _select_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        engine = self._engine
        for index in range(engine.num_optimization_profiles):
            fits = True
            for name, shape in shapes.items():
                low, _, high = engine.get_tensor_profile_shape(name, index)
                fits = fits and all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True))
            if fits:
                if index != self._profile:
                    self._context.set_optimization_profile_async(index, self._stream)
                    self._profile = index
                return
        raise EngineMismatchError(
            f"the {self._spec.component.value} engine has no profile for shapes {dict(shapes)}; "
            "rebuild it for these settings with vald build"
        )

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Copy in, execute on the stream, copy out; outputs as float32 on the host."""
        trt, context = self._trt, self._context
        arrays = {
            t.name: np.ascontiguousarray(feeds[t.name], dtype=trt.nptype(self._engine.get_tensor_dtype(t.name)))
            for t in self.inputs
        }
        self._select_profile({n: a.shape for n, a in arrays.items()})
        for name, array in arrays.items():
            context.set_input_shape(name, array.shape)
            pointer = self._device(name, array.nbytes)
            check(self._rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, H2D, self._stream), "H2D copy")
            context.set_tensor_address(name, pointer)
        results: dict[str, NDArray[Any]] = {}
        for tensor in self.outputs:
            shape = tuple(context.get_tensor_shape(tensor.name))
            host = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(tensor.name)))
            context.set_tensor_address(tensor.name, self._device(tensor.name, host.nbytes))
            results[tensor.name] = host
        if not context.execute_async_v3(self._stream):
            raise EngineMismatchError(f"TensorRT failed to run the {self._spec.component.value} engine")
        for name, host in results.items():
            pointer = self._buffers[name][0]
            check(self._rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, D2H, self._stream), "D2H copy")
        check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: host.astype(np.float32, copy=False) for name, host in results.items()}

    def __del__(self) -> None:
        for pointer, _ in getattr(self, "_buffers", {}).values():
            self._rt.cudaFree(pointer)


def open_tensorrt_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, TensorRTSession]:
    """Open the engine set built for ``cfg`` (its files were verified by the caller against the manifest).

    Order of checks: the set exists (EngineMismatchError with the build command), TensorRT and cuda-python
    import (BackendUnavailableError), the build machine's identity matches this one (EngineMismatchError
    naming each difference and the rebuild command); only then are engines deserialised.
    """
    if cfg.provider is not Provider.CUDA:
        raise BackendUnavailableError(f"backend=tensorrt runs on provider cuda, not {cfg.provider}")
    engine_set = select_engine_set(manifest, cfg)
    _trt()
    check_identity(engine_set.identity, this_machine(), engine_set.rebuild)
    sessions = {}
    for component, plan in engine_set.plans.items():
        sessions[component] = TensorRTSession.from_bytes(
            manifest.path(plan.file).read_bytes(), manifest.specs[component], graph=plan.file, precision=plan.precision
        )
    return sessions

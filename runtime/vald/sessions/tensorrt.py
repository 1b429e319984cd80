"""Native TensorRT engines behind the :class:`~vald.sessions.Session` protocol (engines built by ``vald build``).

One engine per component, one execution context, one CUDA stream; device buffers are allocated once per
input shape (fixed addresses, as a captured CUDA graph needs); an engine with several optimisation profiles
(one per input shape the run uses, ``--profile static``) switches to the profile that holds the shape.
``run`` copies inputs to the device, ``execute_async_v3``, and copies outputs back.

``run_device`` takes and returns device arrays (``--loop device``, :mod:`vald.sessions.device`); with
``--cuda-graph`` the UNet is captured into one CUDA graph per input shape.

Written against TensorRT's documented Python API (10.x, 11.x) and cuda-python; **not run** on this
project's machines (no GPU, no TensorRT).

:func:`open_tensorrt_sessions` picks the engine set (:mod:`vald.sessions.tensorrt_set`), compares the build
machine's identity with this one before any engine is deserialised, and opens one session per component.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # the types come from tensorrt-stubs (mypy_path build/typing); the module from NVIDIA's wheels
    import tensorrt as trt

H2D, D2H = 1, 2  # cudaMemcpyKind: cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost


NO_TENSORRT = "the TensorRT backend needs TensorRT and cuda-python: pip install 'vald[tensorrt]' (NVIDIA's index)"


def require_tensorrt(message: str = NO_TENSORRT) -> None:
    """BackendUnavailableError(``message``) unless TensorRT's bindings import (stubs alone are not enough)."""
    try:
        import tensorrt
    except ImportError:
        tensorrt = None  # type: ignore[assignment]
    if tensorrt is None or not hasattr(tensorrt, "Runtime"):
        raise BackendUnavailableError(message)


def run_onnx_cpu(graph: Path, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
    """The reference outputs of an ONNX graph on ONNX Runtime's CPU provider (for the FP16 build check)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, session.run(names, dict(feeds)), strict=True)}


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (it indexes and has a length; the stubs give it no ``__iter__``)."""
    return tuple(shape[i] for i in range(len(shape)))


@dataclass
class _Bound:
    """Device buffers of one input shape (their addresses are fixed: a captured CUDA graph refers to them)."""

    pointers: dict[str, int]  # every input and output -> device address
    arrays: dict[str, Any]  # the same buffers as device arrays (``run_device``); empty for cudaMalloc'ed ones
    outputs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]  # output -> (shape, dtype)
    profile: int
    runs: int = 0
    graph: Any = None  # the instantiated CUDA graph (cudaGraphExec_t), captured on the second run


class TensorRTSession(BoundSession):
    """One deserialized TensorRT engine.

    ``cuda_graph``: for each input shape, the first run executes normally (TensorRT finishes its lazy set-up),
    the second is captured into a CUDA graph on the session's stream, and every later run with that shape
    launches the graph (inputs are copied into the shape's fixed buffers first).
    """

    def __init__(
        self,
        engine: trt.ICudaEngine,
        spec: ComponentSpec,
        *,
        graph: str = "",
        precision: str = "fp16",
        cuda_graph: bool = False,
    ) -> None:
        require_tensorrt()
        import tensorrt as trt

        self._engine, self._spec = engine, spec
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        check_bindings(graph, spec, [n for n in names if is_input[n]], [n for n in names if not is_input[n]])
        self._context = engine.create_execution_context()
        self._rt = cudart()
        self._stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._bound: dict[tuple[Any, ...], _Bound] = {}
        self._current: tuple[Any, ...] | None = None  # the shape whose shapes/addresses the context holds
        self._profile = 0
        self._cuda_graph = cuda_graph
        self._info = SessionInfo("tensorrt", "cuda", precision, 0, graph=graph)

    @classmethod
    def from_bytes(
        cls, plan: bytes, spec: ComponentSpec, *, graph: str = "", precision: str = "fp16", cuda_graph: bool = False
    ) -> TensorRTSession:
        """Deserialize an engine; EngineMismatchError when TensorRT refuses it."""
        require_tensorrt()
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineMismatchError(f"TensorRT could not load engine {graph or spec.component.value}; rebuild it")
        return cls(engine, spec, graph=graph, precision=precision, cuda_graph=cuda_graph)

    @property
    def graphs(self) -> int:
        """How many input shapes have a captured CUDA graph."""
        return sum(b.graph is not None for b in self._bound.values())

    def _dtype(self, name: str) -> np.dtype[Any]:
        import tensorrt as trt

        nptype: Any = trt.nptype  # untyped in the stubs: DataType -> numpy type
        dtype: np.dtype[Any] = np.dtype(nptype(self._engine.get_tensor_dtype(name)))
        return dtype

    def _profile_for(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        engine = self._engine
        for index in range(engine.num_optimization_profiles):
            fits = True
            for name, shape in shapes.items():
                low, _, high = (dims(d) for d in engine.get_tensor_profile_shape(name, index))
                fits = fits and all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True))
            if fits:
                return index
        raise EngineMismatchError(
            f"the {self._spec.component.value} engine has no profile for shapes {dict(shapes)}; "
            "rebuild it for these settings with vald build"
        )

    def _use(self, profile: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Put the context on ``profile`` and these input shapes."""
        if profile != self._profile:
            self._context.set_optimization_profile_async(profile, self._stream)
            self._profile = profile
        for name, shape in shapes.items():
            self._context.set_input_shape(name, shape)

    def _bind(self, shapes: Mapping[str, tuple[int, ...]], ops: Any = None) -> _Bound:
        """The buffers of this input shape (allocated on first use) with the context set up for them."""
        key = (ops is not None, *sorted(shapes.items()))
        bound = self._bound.get(key)
        if bound is None:
            profile = self._profile_for(shapes)
            self._use(profile, shapes)  # the output shapes follow from the input shapes
            outputs = {
                t.name: (dims(self._context.get_tensor_shape(t.name)), self._dtype(t.name)) for t in self.outputs
            }
            sizes = {n: (shape, self._dtype(n)) for n, shape in shapes.items()} | outputs
            pointers, arrays = {}, {}
            for name, (shape, dtype) in sizes.items():
                if ops is None:
                    nbytes = int(np.prod(shape)) * dtype.itemsize
                    pointers[name] = int(check(self._rt.cudaMalloc(nbytes), "cudaMalloc"))
                else:
                    arrays[name] = ops.empty(shape, dtype.name)
                    pointers[name] = ops.pointer(arrays[name])
            bound = self._bound[key] = _Bound(pointers, arrays, outputs, profile)
        elif self._current != key:  # another shape ran last: its profile and shapes are in the context
            self._use(bound.profile, shapes)
        if self._current != key:
            for name, pointer in bound.pointers.items():
                self._context.set_tensor_address(name, pointer)
            self._current = key
        return bound

    def _execute(self, bound: _Bound) -> None:
        """Enqueue the engine on the session's stream: directly, by capturing a graph, or by launching one."""
        rt, stream = self._rt, self._stream
        if bound.graph is not None:
            check(rt.cudaGraphLaunch(bound.graph, stream), "cudaGraphLaunch")
        elif self._cuda_graph and bound.runs >= 1:
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            check(rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            enqueued = self._context.execute_async_v3(stream)
            graph = check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not enqueued:
                raise EngineMismatchError(f"TensorRT could not capture the {self._spec.component.value} engine")
            bound.graph = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the instantiated copy is what runs
            check(rt.cudaGraphLaunch(bound.graph, stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(stream):
            raise EngineMismatchError(f"TensorRT failed to run the {self._spec.component.value} engine")
        bound.runs += 1

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Copy in, execute on the stream, copy out; outputs as float32 on the host."""
        arrays = {t.name: np.ascontiguousarray(feeds[t.name], dtype=self._dtype(t.name)) for t in self.inputs}
        bound = self._bind({n: a.shape for n, a in arrays.items()})
        rt, stream = self._rt, self._stream
        for name, array in arrays.items():
            check(rt.cudaMemcpyAsync(bound.pointers[name], array.ctypes.data, array.nbytes, H2D, stream), "H2D copy")
        self._execute(bound)
        results = {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in bound.outputs.items()}
        for name, host in results.items():
            check(rt.cudaMemcpyAsync(host.ctypes.data, bound.pointers[name], host.nbytes, D2H, stream), "D2H copy")
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {name: host.astype(np.float32, copy=False) for name, host in results.items()}

    def run_device(self, feeds: Mapping[str, Any], ops: Any) -> dict[str, Any]:
        """Device arrays in and out (``ops``' kind, float32 out); nothing crosses to the host.

        The inputs are copied into this shape's fixed buffers on the arrays' stream, which is then waited for;
        the engine runs on the session's stream; the outputs are copied out of the fixed buffers (so a later
        run cannot overwrite what the caller holds).
        """
        bound = self._bind({t.name: tuple(feeds[t.name].shape) for t in self.inputs}, ops)
        for t in self.inputs:
            ops.copy_into(bound.arrays[t.name], feeds[t.name])
        ops.synchronize()
        self._execute(bound)
        check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {t.name: ops.copy(ops.cast(bound.arrays[t.name], "float32")) for t in self.outputs}

    def __del__(self) -> None:
        rt: Any = getattr(self, "_rt", None)
        for bound in getattr(self, "_bound", {}).values():
            if bound.graph is not None:
                rt.cudaGraphExecDestroy(bound.graph)
            if not bound.arrays:
                for pointer in bound.pointers.values():
                    rt.cudaFree(pointer)


def open_tensorrt_sessions(manifest: Manifest, cfg: RunConfig) -> dict[Component, TensorRTSession]:
    """Open the engine set built for ``cfg`` (its files were verified by the caller against the manifest).

    Order of checks: the set exists (EngineMismatchError with the build command), TensorRT and cuda-python
    import (BackendUnavailableError), the build machine's identity matches this one (EngineMismatchError
    naming each difference and the rebuild command); only then are engines deserialised.
    """
    if cfg.provider is not Provider.CUDA:
        raise BackendUnavailableError(f"backend=tensorrt runs on provider cuda, not {cfg.provider}")
    engine_set = select_engine_set(manifest, cfg)
    require_tensorrt()
    check_identity(engine_set.identity, this_machine(), engine_set.rebuild)
    sessions = {}
    for component, plan in engine_set.plans.items():
        sessions[component] = TensorRTSession.from_bytes(
            manifest.path(plan.file).read_bytes(),
            manifest.specs[component],
            graph=plan.file,
            precision=plan.precision,
            cuda_graph=cfg.cuda_graph and component is Component.UNET,
        )
    return sessions

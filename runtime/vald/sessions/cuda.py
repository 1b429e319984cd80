"""The few CUDA runtime calls the TensorRT path needs, through NVIDIA's cuda-python (no torch).

cuda-python's functions return ``(error, value...)`` tuples; :func:`check` turns a non-zero error into a
:class:`BackendUnavailableError` naming the call.  Written against cuda-python 12.x/13.x (``cuda.bindings``,
with the older ``cuda.cudart`` module as a fall-back import path); not run on this project's GPU-less machines.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from vald.errors import BackendUnavailableError


class CudaRuntime(Protocol):
    """The calls vald makes into cuda-python's runtime module, typed (``cuda.bindings`` ships no stubs).

    Each returns ``(error, value...)``; tests/test_gpu_api.py checks every name here against the installed
    ``cuda.bindings.runtime`` and that no other ``cudaX`` is used in vald's code.
    """

    cudaStreamCaptureMode: Any  # enum: cudaStreamCaptureModeThreadLocal

    def cudaStreamCreate(self) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaMalloc(self, size: int, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaFree(self, pointer: int, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaStreamSynchronize(self, stream: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaStreamBeginCapture(self, stream: Any, mode: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaStreamEndCapture(self, stream: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaGraphInstantiate(self, graph: Any, flags: int, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaGraphDestroy(self, graph: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaGraphLaunch(self, graph: Any, stream: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaGraphExecDestroy(self, graph: Any, /) -> tuple[Any, ...]: ...  # noqa: D102
    def cudaGetDeviceProperties(self, device: int, /) -> tuple[Any, ...]: ...  # noqa: D102


def cudart() -> CudaRuntime:
    """The CUDA runtime module of cuda-python; BackendUnavailableError when it is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError:
            raise BackendUnavailableError(
                "the TensorRT backend needs cuda-python: pip install 'vald[tensorrt]' (see the README, GPU engines)"
            ) from None
    return cast(CudaRuntime, runtime)


def check(result: Any, call: str) -> Any:
    """The value(s) of a cuda-python call; BackendUnavailableError when it returned an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise BackendUnavailableError(f"CUDA call {call} failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(device: int = 0) -> tuple[str, int, int]:
    """The GPU's name and compute capability (major, minor)."""
    props = check(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode("utf-8", "replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), int(props.major), int(props.minor)

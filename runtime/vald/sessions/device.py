"""Device-resident sampling (``--loop cupy|torch``): the latents stay on the device for the whole loop.

The text states and the UNet's output stay there too; only the start latents go up and the final latents
come down.

An :class:`~vald.sampling.ArrayOps` over a device array library is all the loop needs
(:mod:`vald.sampling`); a session that can run on such arrays has ``run_device(feeds, ops)`` and reads and
writes the arrays in place through their device pointers (``ops.pointer``) on ``ops.stream()``.

Two array libraries, chosen explicitly and recorded in every output (``loop``): CuPy (``pip install
cupy-cuda13x``: the runtime's own GPU install, no torch) and torch (CUDA torch where a machine has it; on the
CPU it runs the same code in the tests).  The state is float32 on the device (float64 on the host path):
results differ from the host loop by float32 rounding, which is why the loop is a setting and not a
silent choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.errors import BackendUnavailableError, ConfigError
from vald.spec import Component, TensorSpec


class TorchDeviceOps:
    """torch tensors on ``device`` ('cuda' or 'cpu'), state in float32."""

    def __init__(self, device: str = "cuda") -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError("--loop device with torch arrays needs torch installed") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("--loop device: torch sees no CUDA device")
        self._torch, self.device = torch, device
        self.name = f"device (torch {torch.__version__}, {device})"

    def state(self, x: Any) -> Any:
        """float32 tensor on the device (a host array is copied up once)."""
        t = self._torch
        if isinstance(x, t.Tensor):
            return x.to(device=self.device, dtype=t.float32)
        return t.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    net = state

    def clip(self, x: Any, limit: float) -> Any:
        """Clamp to ``[-limit, limit]``."""
        return x.clamp(-limit, limit)

    def result(self, x: Any) -> NDArray[np.float32]:
        """float32 numpy (the one copy down)."""
        out: NDArray[np.float32] = x.detach().to("cpu", self._torch.float32).numpy()
        return out

    def cat(self, xs: Sequence[Any]) -> Any:
        """torch.cat."""
        return self._torch.cat(list(xs))

    def split(self, x: Any, parts: int) -> list[Any]:
        """torch.chunk."""
        return list(self._torch.chunk(x, parts))

    def finite(self, x: Any) -> bool:
        """torch.isfinite (one scalar comes down)."""
        return bool(self._torch.isfinite(x).all())

    def run(self, session: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``session.run_device``."""
        out: dict[str, Any] = session.run_device(feeds, self)
        return out

    def empty(self, shape: Sequence[int], dtype: str) -> Any:
        """Uninitialised contiguous tensor."""
        return self._torch.empty(tuple(shape), dtype=getattr(self._torch, dtype), device=self.device)

    def cast(self, x: Any, dtype: str) -> Any:
        """Contiguous tensor of ``dtype`` (no copy when it already is)."""
        return x.to(getattr(self._torch, dtype)).contiguous()

    def pointer(self, x: Any) -> int:
        """Device address of the first element."""
        return int(x.data_ptr())

    def copy(self, x: Any) -> Any:
        """A new tensor with ``x``'s values."""
        return x.clone()

    def copy_into(self, dst: Any, src: Any) -> None:
        """``dst[...] = src`` on the device."""
        dst.copy_(src)

    def synchronize(self) -> None:
        """Wait for the device's queued work."""
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def stream(self) -> int:
        """The current CUDA stream's handle (0 on the CPU)."""
        if not self.device.startswith("cuda"):
            return 0
        return int(self._torch.cuda.current_stream().cuda_stream)


class CupyDeviceOps:
    """CuPy arrays on the current GPU, state in float32."""

    def __init__(self) -> None:
        try:
            import cupy  # type: ignore[import-not-found]
        except ImportError:
            raise BackendUnavailableError(
                "--loop device needs CuPy: pip install cupy-cuda13x (CUDA 13, as onnxruntime-gpu 1.31)"
            ) from None
        self._cp, self.device = cupy, "cuda"
        self.name = f"device (cupy {cupy.__version__}, cuda)"

    def state(self, x: Any) -> Any:
        """float32 array on the device (a host array is copied up once)."""
        return self._cp.asarray(x, dtype=self._cp.float32)

    net = state

    def clip(self, x: Any, limit: float) -> Any:
        """cupy.clip."""
        return self._cp.clip(x, -limit, limit)

    def result(self, x: Any) -> NDArray[np.float32]:
        """float32 numpy (the one copy down)."""
        out: NDArray[np.float32] = self._cp.asnumpy(x).astype(np.float32, copy=False)
        return out

    def cat(self, xs: Sequence[Any]) -> Any:
        """cupy.concatenate."""
        return self._cp.concatenate(list(xs))

    def split(self, x: Any, parts: int) -> list[Any]:
        """cupy.split."""
        return list(self._cp.split(x, parts))

    def finite(self, x: Any) -> bool:
        """cupy.isfinite (one scalar comes down)."""
        return bool(self._cp.isfinite(x).all())

    def run(self, session: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``session.run_device``."""
        out: dict[str, Any] = session.run_device(feeds, self)
        return out

    def empty(self, shape: Sequence[int], dtype: str) -> Any:
        """Uninitialised contiguous array."""
        return self._cp.empty(tuple(shape), dtype=dtype)

    def cast(self, x: Any, dtype: str) -> Any:
        """Contiguous array of ``dtype`` (no copy when it already is)."""
        return self._cp.ascontiguousarray(x, dtype=dtype)

    def pointer(self, x: Any) -> int:
        """Device address of the first element."""
        return int(x.data.ptr)

    def copy(self, x: Any) -> Any:
        """A new array with ``x``'s values."""
        return x.copy()

    def copy_into(self, dst: Any, src: Any) -> None:
        """``dst[...] = src`` on the device."""
        dst[...] = src

    def synchronize(self) -> None:
        """Wait for the current stream's queued work."""
        self._cp.cuda.get_current_stream().synchronize()

    def stream(self) -> int:
        """The current CUDA stream's handle."""
        return int(self._cp.cuda.get_current_stream().ptr)


DeviceOps = TorchDeviceOps | CupyDeviceOps
ARRAY_LIBRARIES = ("cupy", "torch")


def device_ops(library: str, device: str = "cuda") -> DeviceOps:
    """The device arrays of ``library`` (``cupy`` or ``torch``); BackendUnavailableError when it cannot start."""
    if library == "cupy":
        return CupyDeviceOps()
    if library == "torch":
        return TorchDeviceOps(device)
    raise ConfigError(f"device arrays: library {library!r} is not one of {', '.join(ARRAY_LIBRARIES)}")


def check_device_sessions(sessions: Mapping[Component, Any]) -> None:
    """ConfigError unless the UNet's session can run on device arrays (said once, at start-up)."""
    unet = sessions[Component.UNET]
    if not callable(getattr(unet, "run_device", None)):
        raise ConfigError(
            f"--loop device: the {unet.info.backend} backend cannot run on device arrays "
            "(backends that can: tensorrt, onnxruntime, torch)"
        )


def output_shapes(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Each output's concrete shape from the inputs' actual shapes, through the specs' symbolic dims.

    ConfigError when an output has a dimension no input names (its shape is known only after running).
    """
    sizes: dict[str | int, int] = {}
    for spec in inputs:
        for dim, size in zip(spec.shape, shapes[spec.name], strict=True):
            sizes[dim] = size
    out = {}
    for spec in outputs:
        try:
            out[spec.name] = tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)
        except KeyError:
            raise ConfigError(f"output {spec.name} has a size no input fixes; it cannot run on device arrays") from None
    return out

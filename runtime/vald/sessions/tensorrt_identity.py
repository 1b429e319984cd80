"""What a TensorRT engine is tied to, and the one-line error when it is loaded elsewhere.

A serialized TensorRT engine runs only with the TensorRT version that built it and on GPUs of the compute
capability it was built for (unless built version- or hardware-compatible, which vald does not do: those
modes give up speed).  Loading it elsewhere fails deep inside TensorRT ("version tag does not match",
"generated on an incompatible device").  ``vald build`` records the build machine's identity in the
manifest; :func:`check_identity` compares it with this machine's before any engine is deserialised and
names exactly what differs and the command that rebuilds.  No silent rebuild, no fallback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vald.errors import EngineMismatchError


@dataclass(frozen=True)
class EngineIdentity:
    """The build (or the running) machine's TensorRT version and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"

    def to_json(self) -> dict[str, str]:
        """Manifest form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EngineIdentity:
        """From the manifest; EngineMismatchError when a field is missing."""
        try:
            return cls(str(data["tensorrt_version"]), str(data["gpu_name"]), str(data["compute_capability"]))
        except (KeyError, TypeError):
            raise EngineMismatchError(
                "the manifest's TensorRT section lacks the build identity (TensorRT version, GPU, compute capability)"
            ) from None

    def describe(self) -> str:
        """E.g. 'TensorRT 10.7.0 on NVIDIA H200 (compute 9.0)'."""
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute {self.compute_capability})"


def differences(built: EngineIdentity, here: EngineIdentity) -> list[str]:
    """What differs between the build machine and this one, in words."""
    found = []
    if built.tensorrt_version != here.tensorrt_version:
        found.append(f"TensorRT version {built.tensorrt_version} != {here.tensorrt_version}")
    if built.compute_capability != here.compute_capability:
        found.append(f"compute capability {built.compute_capability} != {here.compute_capability}")
    if built.gpu_name != here.gpu_name:
        found.append(f"GPU {built.gpu_name} != {here.gpu_name}")
    return found


def check_identity(built: EngineIdentity, here: EngineIdentity, rebuild: str) -> None:
    """EngineMismatchError naming every difference and the rebuild command; nothing when they match."""
    found = differences(built, here)
    if found:
        raise EngineMismatchError(
            f"the TensorRT engines were built with {built.describe()}; this machine has {here.describe()} "
            f"({'; '.join(found)}); rebuild them here: {rebuild}"
        )


def this_machine(device: int = 0) -> EngineIdentity:
    """The running machine's TensorRT version and GPU (needs tensorrt and cuda-python)."""
    import tensorrt as trt

    from vald.sessions.cuda import device_properties

    name, major, minor = device_properties(device)
    return EngineIdentity(str(trt.__version__), name, f"{major}.{minor}")

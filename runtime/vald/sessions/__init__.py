"""The session protocol and the one place that knows which backend is which.

A :class:`Session` runs one network: ``run(feeds) -> outputs`` with numpy
arrays keyed by the binding names of :mod:`vald.spec`, and says in ``info`` what
actually runs it (backend, device, precision, threads).  :func:`open_sessions`
chooses the implementation once; nothing downstream branches on the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vald.config import Backend, Loop, Precision, Provider, RunConfig
from vald.errors import EngineMismatchError
from vald.manifest import Manifest
from vald.sampling import HOST, ArrayOps
from vald.spec import Component, ComponentSpec, TensorSpec


@dataclass(frozen=True)
class SessionInfo:
    """What runs a network, as established once the backend has loaded it.

    ``precision`` is the compute precision the backend reports after compiling (OpenVINO), the precision of
    the graph set it loaded (ONNX Runtime), or the module dtype / autocast in use (torch); ``graph`` the
    engine file it loaded (relative to the engine folder; empty for the torch reference); ``cached``
    whether a graph optimised or compiled on an earlier start was reused, and ``cache_sha256`` (ONNX
    Runtime) the hash of that cached graph's files, checked before it was loaded.
    """

    backend: str
    device: str
    precision: str
    threads: int
    graph: str = ""
    cached: bool = False
    cache_sha256: str = ""


class Session(Protocol):
    """One network behind any backend."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input bindings."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output bindings."""
        ...

    @property
    def info(self) -> SessionInfo:
        """What actually runs this network."""
        ...

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run once; every output is returned as float32 on the host."""
        ...


class BoundSession:
    """Base of the session classes: the bindings of their spec, and the info they set once opened."""

    _spec: ComponentSpec
    _info: SessionInfo

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input bindings."""
        return self._spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output bindings."""
        return self._spec.outputs

    @property
    def info(self) -> SessionInfo:
        """What actually runs this network."""
        return self._info


def check_bindings(graph: str, spec: ComponentSpec, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """EngineMismatchError unless a loaded graph's input and output names are the component's."""
    have_in, have_out = sorted(inputs), sorted(outputs)
    want_in, want_out = sorted(t.name for t in spec.inputs), sorted(t.name for t in spec.outputs)
    if (have_in, have_out) != (want_in, want_out):
        raise EngineMismatchError(
            f"engine file {graph} has inputs {have_in} and outputs {have_out}; "
            f"the {spec.component} expected inputs {want_in} and outputs {want_out}"
        )


def graph_precision(cfg: RunConfig) -> Precision | None:
    """Which exported graph set ``cfg``'s backend loads (None: it loads no graph, the torch reference).

    ONNX Runtime's TensorRT provider and OpenVINO build their reduced precision from the FP32 graphs (OpenVINO's
    int8 loads the UNet ``vald quantize`` wrote, and the FP32 graphs of the rest); native TensorRT loads the
    engines ``vald build`` made from them (see :func:`run_files`).
    """
    if cfg.backend in (Backend.TORCH, Backend.TENSORRT):
        return None
    if cfg.precision is Precision.INT8:
        return Precision.INT8
    if cfg.backend is Backend.OPENVINO or cfg.provider is Provider.TENSORRT:
        return Precision.FP32
    return cfg.precision


def run_files(manifest: Manifest, cfg: RunConfig) -> dict[str, str]:
    """Every file (relative path -> sha256) a run with ``cfg`` loads: checked before, recorded after."""
    hashes = manifest.engine_hashes(graph_precision(cfg))
    if cfg.backend is Backend.TENSORRT:
        from vald.sessions.tensorrt_set import select_engine_set

        hashes |= select_engine_set(manifest, cfg).hashes()
    return hashes


def open_sessions(manifest: Manifest, cfg: RunConfig, *, model_dir: Path | None = None) -> Mapping[Component, Session]:
    """Open all four networks on the backend, provider, precision and threads of ``cfg``.

    ``model_dir`` is the diffusers folder for the torch backend (default: the
    export's source folder recorded in the manifest).
    """
    if cfg.backend is Backend.TORCH:
        from vald.sessions.torch_ref import open_torch_sessions  # imports torch: only when chosen

        return open_torch_sessions(manifest, cfg, model_dir=model_dir)
    if cfg.backend is Backend.OPENVINO:
        from vald.sessions.openvino import open_openvino_sessions

        return open_openvino_sessions(manifest, cfg)
    if cfg.backend is Backend.TENSORRT:
        from vald.sessions.tensorrt import open_tensorrt_sessions  # imports cuda-python and TensorRT

        return open_tensorrt_sessions(manifest, cfg)
    from vald.sessions.ort import open_ort_sessions

    return open_ort_sessions(manifest, cfg)


def loop_ops(cfg: RunConfig, sessions: Mapping[Component, Session]) -> ArrayOps:
    """The arrays the sampling loop runs on for ``cfg.loop``; the UNet session must be able to take them."""
    if cfg.loop is Loop.HOST:
        return HOST
    from vald.sessions.device import check_device_sessions, device_ops

    ops = device_ops(cfg.loop.value, "cuda" if cfg.provider is not Provider.CPU else "cpu")
    check_device_sessions(sessions)
    return ops

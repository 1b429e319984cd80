"""The session protocol and the one place that knows which backend is which.

A :class:`Session` runs one network: ``run(feeds) -> outputs`` with numpy
arrays keyed by the binding names of :mod:`vald.spec`.  :func:`open_sessions`
chooses the implementation once; nothing downstream branches on the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vald.config import Backend, RunConfig
from vald.manifest import Manifest
from vald.spec import Component, TensorSpec


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

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run once; every output is returned as float32 on the host."""
        ...


def open_sessions(manifest: Manifest, cfg: RunConfig, *, model_dir: Path | None = None) -> Mapping[Component, Session]:
    """Open all four networks on the backend, provider and precision of ``cfg``.

    ``model_dir`` is the diffusers folder for the torch backend (default: the
    export's source folder recorded in the manifest).
    """
    if cfg.backend is Backend.TORCH:
        from vald.sessions.torch_ref import open_torch_sessions  # imports torch: only when chosen

        return open_torch_sessions(manifest, cfg, model_dir=model_dir)
    from vald.sessions.ort import open_ort_sessions

    return open_ort_sessions(manifest, cfg)

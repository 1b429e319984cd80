"""The worker every executor runs: it opens the engines once and computes one input's output set at a time.

A worker refuses to start when the engine folder it sees, or the libraries it runs with, would give another
settings hash than the driver's (``WorkerSpec.settings_sha256``): a worker node with a missing, altered or
other engine folder, or another onnxruntime, is turned away by the same manifest and hash checks as a local
run, before it computes anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import OutputOptions, RunConfig
from vald.errors import EngineMismatchError
from vald.outputs import OutputSet
from vald.sources import Source

METHODS = ("compute", "counterfactual")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs: the engine folder (the same path on every node), settings, outputs, the hash."""

    engines: Path
    run: RunConfig
    options: OutputOptions
    settings_sha256: str | None  # None: no check (a worker in the driver's own process)


class EngineWorker:
    """Opens ``spec.engines`` once (verified against its manifest) and computes output sets."""

    def __init__(self, spec: WorkerSpec) -> None:
        from vald.app import attribution_settings_sha256, open_engines

        self.spec = spec
        self.engines, self.provenance = open_engines(spec.engines, spec.run)
        expected = spec.settings_sha256
        if expected is not None and attribution_settings_sha256(spec.run, self.provenance, spec.options) != expected:
            raise EngineMismatchError(
                f"the worker on {node_name()} has another engine folder or other library versions than the "
                "driver (settings sha256 differs); give every node the same engines and the same vald install"
            )

    def compute(self, source: Source) -> OutputSet:
        """The output set of one input (:func:`vald.app.compute_one`)."""
        from vald.app import compute_one

        return compute_one(source, self.engines, self.provenance, self.spec.run, options=self.spec.options)

    def counterfactual(self, image: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Counterfactual and signed map of one image at model resolution (``vald eval``'s unit of work)."""
        from vald.attribution import attribute

        result = attribute(self.engines, image, self.spec.run)
        return result.counterfactual, result.signed_map

    def call(self, method: str, payload: Any) -> Any:
        """One of the worker's methods by name (``compute`` or ``counterfactual``), as a task names it."""
        if method not in METHODS:
            raise ValueError(f"no worker method {method!r}")
        return getattr(self, method)(payload)

    def ready(self) -> str:
        """Where this worker runs (answered once its engines are open)."""
        return node_name()


def node_name() -> str:
    """The name of the node running this for messages: its address in a Ray cluster, else "local"."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.util.get_node_ip_address())
    return "local"


def with_threads(cfg: RunConfig, threads: int) -> RunConfig:
    """``cfg`` with ``threads`` intra-op threads (a cluster worker gets a fixed number, 0 is not allowed)."""
    return replace(cfg, threads=threads)

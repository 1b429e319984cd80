"""The executor contract: tasks go in, outcomes come out, at most ``in_flight`` at a time.

Both executors run :func:`vald.app.compute_one` through :class:`vald.cluster.worker.EngineWorker`; the local
one in this process, one input after another, so a run with it is the same as ``vald run`` without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vald.cluster.worker import EngineWorker, WorkerSpec
from vald.outputs import OutputSet
from vald.sources import Source


@dataclass(frozen=True)
class Task:
    """One input to compute: its index in the batch and what the worker's ``method`` takes.

    ``method`` is ``compute`` (a loaded :class:`Source` -> its :class:`OutputSet`, for ``vald run``) or
    ``counterfactual`` (a ``[size, size]`` float32 image at model resolution -> counterfactual and signed map,
    for ``vald eval``).
    """

    index: int
    payload: Source | NDArray[np.float32]
    method: str = "compute"


@dataclass(frozen=True)
class Outcome:
    """What came back for a task: the method's value (an output set, or arrays), or a one-line error."""

    index: int
    value: OutputSet | tuple[NDArray[np.float32], NDArray[np.float32]] | None
    error: str = ""
    worker: str = ""  # where it ran: "local", or the Ray node's address
    attempts: int = 1


class Executor(Protocol):
    """Computes output sets; the caller publishes them."""

    name: str

    def map(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Outcomes of ``tasks`` (in completion order), pulling tasks only as workers become free."""
        ...

    def close(self) -> None:
        """Release the workers (and, for Ray, every process this executor started)."""
        ...


class LocalExecutor:
    """One worker in this process: tasks are computed one after another, as they are pulled."""

    name = "local"

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker = EngineWorker(spec)

    def map(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Compute each task as it is pulled (exceptions propagate, as in a run without an executor)."""
        for task in tasks:
            yield Outcome(task.index, self.worker.call(task.method, task.payload), worker="local")

    def close(self) -> None:
        """Nothing to release: the engines go with the process."""

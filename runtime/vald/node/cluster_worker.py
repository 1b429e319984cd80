"""The node on a Ray cluster (``[cluster]``): received instances are computed by Ray workers, several at a time.

The node keeps receiving and spooling on its own machine, and alone publishes and delivers, as without a
cluster (:class:`vald.node.worker.Worker`); only the computing moves.  An instance leaves the spool only
after its output set is published and queued for delivery, so a node killed with instances in flight
computes them again at its next start, and a set published before the kill is found finished, not
computed again: each acknowledged instance is delivered once.  A worker node that dies mid-instance is
replaced and the instance retried (see :mod:`vald.cluster.ray_executor`); a lost head stops the node with
an error (the spool keeps everything for its next start).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vald.batch import Entry, Status, prepare_one, recorded
from vald.cluster.executor import Outcome, Task
from vald.cluster.ray_executor import RayExecutor
from vald.cluster.run import open_cluster
from vald.cluster.worker import with_threads
from vald.errors import OutputError
from vald.node.config import NodeConfig
from vald.node.spool import Spool
from vald.node.worker import OUTPUT_ERROR_PAUSE_S, Job, Worker, node_options
from vald.outputs import OutputSet
from vald.signals import interruptible

LOG = logging.getLogger("vald.node")
POLL_S = 0.5  # how long a step waits for a worker when instances are in flight


class ClusterWorker(Worker):
    """Submits spooled instances to Ray workers (one each) and publishes what comes back."""

    def __init__(self, cfg: NodeConfig, spool: Spool, job: Job, executor: RayExecutor) -> None:
        super().__init__(cfg, spool, job)
        self.executor = executor
        self.in_flight: dict[int, tuple[Path, int, Entry, float]] = {}  # task index -> path, inode, entry, start

    @classmethod
    def open(cls, cfg: NodeConfig, spool: Spool) -> ClusterWorker:
        """Join the cluster and start its workers (one line, exit 2, if it cannot be reached)."""
        assert cfg.cluster is not None
        run, options = with_threads(cfg.run, cfg.cluster.threads), node_options(cfg)
        executor, settings_sha, _ = open_cluster(cfg.engines, run, options, cfg.cluster)
        return cls(cfg, spool, Job(cfg.out, run, options, None, {}, settings_sha), executor)

    def step(self) -> bool:
        """Deliver what is due, hand waiting instances to free workers, publish what came back."""
        worked = self.deliver_due(time.time())
        busy = {p.stem for p, _, _, _ in self.in_flight.values()}
        for path in self.spool.incoming():
            if not self.executor.free():
                break
            if path.stem not in busy:
                self._submit(path)
                worked = True
        if not self.in_flight:
            return worked
        with interruptible():
            outcomes = self.executor.poll(POLL_S)
        try:
            for outcome in outcomes:
                self._done(outcome)
        except OutputError as exc:
            LOG.error("cannot write results: %s; retrying in %.0f s", exc, OUTPUT_ERROR_PAUSE_S)
            with interruptible():
                time.sleep(OUTPUT_ERROR_PAUSE_S)
        return True

    def _submit(self, path: Path) -> None:
        inode, key = path.stat().st_ino, path.stem
        self.count += 1
        entry, started = Entry(self.count), time.perf_counter()
        LOG.info("instance %s: processing on the cluster", key)
        source = None
        with recorded(entry):
            source = prepare_one(path, entry, self.job.out, self.job.settings_sha, self.job.load)
        if source is None:  # failed to load, or found finished: as without a cluster
            entry.seconds = round(time.perf_counter() - started, 3)
            self.after(path, inode, key, entry)
            return
        self.in_flight[entry.index] = (path, inode, entry, started)
        self.executor.submit(Task(entry.index, source))

    def _done(self, outcome: Outcome) -> None:
        path, inode, entry, started = self.in_flight.pop(outcome.index)
        with recorded(entry):  # an OutputError is raised on: the instance stays spooled and is computed again
            if isinstance(outcome.value, OutputSet):
                outcome.value.publish(self.job.out)
                entry.status = Status.DONE
            else:
                entry.status, entry.error = Status.FAILED, outcome.error
        entry.seconds = round(time.perf_counter() - started, 3)
        self.after(path, inode, path.stem, entry)

    def close(self) -> None:
        """End the workers and leave the cluster."""
        self.executor.close()

"""The Ray executor: ``workers`` actors, each an :class:`EngineWorker` on its own CPUs (or one GPU), one input each.

Joining: only a running cluster (``ray start`` on each node), at a ``host:port`` or ``auto`` (the cluster of
this machine), with token authentication (``RAY_AUTH_MODE=token``; the token from ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``) and usage statistics off.  A cluster that cannot be reached, or whose workers cannot
all start (resources, another engine folder), is one :class:`ClusterError` line before any input is read.

Feeding: each actor gets one input at a time (``in flight`` = ``workers``); sources go through the object
store as pickled arrays and headers, output sets come back as bytes.  A worker process or node that dies
mid-input is replaced by a new actor and the input is retried elsewhere, at most ``retries`` times; then
that input fails with one line and the batch goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from vald.batch import internal_error
from vald.cluster.bind import active, check_address
from vald.cluster.executor import Outcome, Task
from vald.cluster.worker import EngineWorker, WorkerSpec, node_name
from vald.errors import BackendUnavailableError, ClusterError, ConfigError, ValdError, ValdWarning

MAX_WORKERS = 256
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where the cluster is and how many workers to run on it."""

    address: str  # "auto" (the cluster this machine belongs to) or the head's "host:port"
    workers: int = 1
    threads: int = 1  # intra-op threads of each worker = the CPUs it reserves
    gpu: bool = False  # one GPU per worker (provider cuda / tensorrt)
    retries: int = 2  # a dead worker's input is tried this many more times
    start_timeout_s: float = 300.0  # to place and open every worker
    bind: str | None = None  # this process's IPv4 address: Ray's listeners here bind to it alone (vald.cluster.bind)

    def __post_init__(self) -> None:
        if self.address != "auto":
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--cluster {self.address!r}: expected 'auto' or the head's HOST:PORT")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers {self.workers}: expected 1 to {MAX_WORKERS}")
        if self.threads < 1:
            raise ConfigError(f"threads={self.threads}: a cluster worker needs a fixed number of threads (>= 1)")
        if self.bind is not None:
            check_address(self.bind)


def connect(cluster: ClusterConfig) -> Any:
    """Join the cluster (token auth, no usage stats, no worker logs on this terminal); the ``ray`` module."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise ConfigError(f"RAY_AUTH_MODE={mode!r}: vald joins only clusters with token authentication ('token')")
    if cluster.bind is not None and not active(cluster.bind):
        raise ClusterError(f"bind address {cluster.bind}: this process is not running under libvald_bind")
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--cluster needs Ray: pip install 'vald[cluster]'") from None
    where = "this machine's Ray cluster" if cluster.address == "auto" else f"the Ray cluster at {cluster.address}"
    if cluster.address != "auto":
        host, _, port = cluster.address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise ClusterError(f"cannot reach {where}: {exc.strerror or type(exc).__name__}") from None
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR, namespace="vald")
    except Exception as exc:  # Ray's own exceptions: ConnectionError, RuntimeError, auth failures
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ClusterError(f"cannot join {where}: {type(exc).__name__}: {first}") from None
    finally:
        _restore(handlers)
    if cluster.bind is None:
        warnings.warn(
            "Ray listens on every interface of this machine while vald runs; give --cluster-bind "
            "(the node: [cluster] bind) this machine's cluster address to keep it there (docs/cluster.md)",
            ValdWarning,
            stacklevel=2,
        )
    return ray


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    """Put back the stop handlers ``ray.init`` replaces.

    Its SIGTERM handler exits at once, skipping vald's clean stop (summary, report, the node's spool).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in handlers.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


class RayWorker:
    """An :class:`EngineWorker` in a Ray actor; a start-up error is kept and raised by :meth:`ready`.

    (Ray turns an exception raised in an actor's ``__init__`` into a bare ActorDiedError, losing its type and
    so the one-line message a user needs, e.g. that this node's engine folder differs.)
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker: EngineWorker | None = None
        self.error: ValdError | None = None
        try:
            self.worker = EngineWorker(spec)
        except ValdError as exc:
            self.error = exc

    def ready(self) -> str:
        """Where this worker runs, once its engines are open; its start-up error otherwise."""
        if self.error is not None:
            raise self.error
        return node_name()

    def call(self, method: str, payload: Any) -> Any:
        """The worker's ``method`` on one task's payload."""
        if self.worker is None:
            raise ClusterError("this Ray worker did not start")
        return self.worker.call(method, payload)


class RayExecutor:
    """``cluster.workers`` EngineWorker actors; outcomes in completion order; the driver publishes."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, cluster: ClusterConfig) -> None:
        self.ray = connect(cluster)
        self.cluster = cluster
        options: dict[str, Any] = {"num_cpus": cluster.threads, "max_restarts": 0, "max_concurrency": 1}
        if cluster.gpu:
            options["num_gpus"] = 1
        self.actor_class = self.ray.remote(RayWorker).options(**options)
        self.spec = spec
        self.idle: list[Any] = []
        self.nodes: dict[Any, str] = {}  # actor -> its node's address
        self.warming: dict[Any, Any] = {}  # ready() ref -> actor being placed and opened
        self.pending: dict[Any, tuple[Task, Any, int]] = {}  # call ref -> (task, actor, attempt)
        self.retry: deque[tuple[Task, int]] = deque()  # tasks whose worker died, with their next attempt
        try:
            for _ in range(cluster.workers):
                self._start_worker()
            self._await_workers()
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> None:
        actor = self.actor_class.remote(self.spec)
        self.warming[actor.ready.remote()] = actor

    def _await_workers(self) -> None:
        """Every worker placed and its engines open, or one line saying why not."""
        while self.warming:
            ready, _ = self.ray.wait(list(self.warming), num_returns=1, timeout=self.cluster.start_timeout_s)
            if not ready:
                raise ClusterError(
                    f"{len(self.warming)} of {self.cluster.workers} Ray workers could not be placed within "
                    f"{self.cluster.start_timeout_s:g} s (each needs {self.cluster.threads} CPU(s)"
                    f"{' and a GPU' if self.cluster.gpu else ''}): lower --workers or add nodes"
                )
            self._warmed(ready[0])

    def _warmed(self, ref: Any) -> None:
        actor = self.warming.pop(ref)
        try:
            self.nodes[actor] = str(self.ray.get(ref))
        except self.ray.exceptions.RayError as exc:
            raise _worker_error(exc) from None
        self.idle.append(actor)

    def free(self) -> int:
        """Workers ready for a new task now (retries of dead workers' tasks come first)."""
        return max(0, len(self.idle) - len(self.retry))

    def submit(self, task: Task, attempt: int = 1) -> None:
        """Hand ``task`` to an idle worker (the caller checks :meth:`free` first)."""
        if not self.idle:
            raise ClusterError("no idle Ray worker to take an input")
        actor = self.idle.pop()
        self.pending[actor.call.remote(task.method, task.payload)] = (task, actor, attempt)

    @property
    def busy(self) -> bool:
        """Tasks in flight or waiting for a retry."""
        return bool(self.pending or self.retry)

    def poll(self, timeout: float | None) -> list[Outcome]:
        """Wait up to ``timeout`` seconds (None: until something happens) for a task or a new worker; outcomes."""
        while self.retry and self.idle:
            self.submit(*self.retry.popleft())
        if not self.pending and not self.warming:
            if self.retry:
                raise ClusterError("no Ray worker is left to run the remaining inputs")
            return []
        if not self.pending:
            timeout = self.cluster.start_timeout_s if timeout is None else timeout
        ready, _ = self.ray.wait([*self.pending, *self.warming], num_returns=1, timeout=timeout)
        if not ready:
            if not self.pending and self.retry and timeout == self.cluster.start_timeout_s:
                raise ClusterError(f"no replacement Ray worker was placed within {timeout:g} s")
            return []
        return self._finished(ready[0])

    def map(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Run ``tasks`` with one in flight per worker; a dead worker's task is retried on a replacement."""
        source = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and self.free():
                task = next(source, None)
                if task is None:
                    exhausted = True
                else:
                    self.submit(task)
            if exhausted and not self.busy:
                return
            yield from self.poll(None)

    def _finished(self, ref: Any) -> list[Outcome]:
        if ref in self.warming:
            self._warmed(ref)
            return []
        task, actor, attempt = self.pending.pop(ref)
        node = self.nodes.get(actor, "?")
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the worker's function raised: this input's own failure
            self.idle.append(actor)
            cause = getattr(exc, "cause", None)
            error = str(cause) if isinstance(cause, ValdError) else internal_error(cause or exc)
            return [Outcome(task.index, None, error, node, attempt)]
        except self.ray.exceptions.RayError as exc:  # the worker process or its node died mid-input
            self.nodes.pop(actor, None)
            self._start_worker()
            if attempt <= self.cluster.retries:
                self.retry.append((task, attempt + 1))
                return []
            error = f"the Ray worker died {attempt} times computing this input (last on {node}: {type(exc).__name__})"
            return [Outcome(task.index, None, error, node, attempt)]
        self.idle.append(actor)
        return [Outcome(task.index, value, worker=node, attempts=attempt)]

    def close(self) -> None:
        """Kill this executor's actors and leave the cluster (the cluster's own processes stay)."""
        for actor in [*self.idle, *self.warming.values(), *self.nodes]:
            try:
                self.ray.kill(actor)
            except Exception:  # already dead, or the cluster is gone
                continue
        self.idle.clear()
        self.warming.clear()
        self.pending.clear()
        self.nodes.clear()
        if self.ray.is_initialized():
            self.ray.shutdown()


def _worker_error(exc: BaseException) -> ValdError:
    """A worker that failed to start: its own ValdError (e.g. another engine folder), else one line."""
    seen: BaseException | None = exc
    while seen is not None:
        cause = getattr(seen, "cause", None) or seen.__cause__
        if isinstance(cause, ValdError):
            return type(cause)(str(cause))
        seen = cause if isinstance(cause, BaseException) else None
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return ClusterError(f"a Ray worker failed to start: {type(exc).__name__}: {text}")

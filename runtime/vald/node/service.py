"""``vald serve``: take the locks, open the engines, listen, and run the worker until stopped."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack

from vald.lock import claim
from vald.node.config import NodeConfig
from vald.node.send import quiet_network_logs
from vald.node.spool import Spool
from vald.signals import stopped_by

LOG = logging.getLogger("vald.node")


def _logging(quiet: bool) -> None:
    """The node's own lines on stderr (instances by hash only); pynetdicom's and dicomweb-client's silenced."""
    quiet_network_logs()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s vald-node %(levelname)s %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.propagate = False
    LOG.setLevel(logging.WARNING if quiet else logging.INFO)


def serve(cfg: NodeConfig, *, quiet: bool = False) -> int:
    """Run the node until SIGINT / SIGTERM / SIGHUP; exit 0 after a clean stop."""
    from vald.node.scp import Receiver
    from vald.node.worker import Job, Worker

    _logging(quiet)
    with ExitStack() as stack:
        stack.enter_context(claim(cfg.out))  # one writer per folder, as for vald run
        stack.enter_context(claim(cfg.spool))
        spool = Spool(cfg.spool, cfg.listen.spool_limit_bytes)
        spool.prepare()
        if cfg.cluster is None:
            worker = Worker(cfg, spool, Job.open(cfg))
        else:  # the computing on a Ray cluster; receiving, publishing and delivering stay here
            from vald.node.cluster_worker import ClusterWorker

            worker = ClusterWorker.open(cfg, spool)
        stack.callback(worker.close)
        receiver = Receiver(cfg.listen, spool, on_received=worker.wake.set)
        host, port = receiver.start()
        stack.callback(receiver.stop)
        peers = ", ".join(d.name for d in cfg.destinations) or "none"
        LOG.warning(
            "listening as %s on %s:%d%s; %d instance(s) waiting; destinations: %s",
            cfg.listen.ae_title,
            host,
            port,
            " (TLS)" if cfg.listen.tls else "",
            len(spool.incoming()),
            peers,
        )
        try:
            worker.run_forever()
        except KeyboardInterrupt as exc:
            LOG.warning("stopped by %s; received instances stay in the spool for the next start", stopped_by(exc).name)
    return 0


def print_status(cfg: NodeConfig) -> int:
    """``vald serve --status``: the spool's and each destination's state as JSON (the node may be running)."""
    from vald.node.operate import status

    print(json.dumps(status(cfg), indent=2))
    return 0


def requeue(cfg: NodeConfig, keys: list[str] | None) -> int:
    """``vald serve --requeue KEY`` / ``--requeue-all``: dead letters back into the spool; one line each."""
    from vald.node.operate import requeue as move

    moved = move(cfg, keys)
    for key in moved:
        print(f"requeued {key}")
    if not moved:
        print("no dead letters")
    return 0

"""The node's worker: process what the spool received as ``vald run`` does, then deliver the results.

Processing goes through :func:`vald.batch.handle_one` and :func:`vald.app.run_one` with the settings hash
of ``vald run``: the same outputs under ``out/<key>/``, and the same resume (an output set already
published with these settings is not computed again).  Each result's derived DICOM objects then wait in
the outbox until every destination has them; a destination that fails ``attempts`` times in a row (with
back-off) sends the result to the dead letters.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vald.app import open_engines, run_one, settings_sha256
from vald.batch import Entry, Status, handle_one
from vald.config import OutputOptions, RunConfig
from vald.dicom.reader import MODALITIES
from vald.errors import OutputError
from vald.node.config import Destination, NodeConfig
from vald.node.send import Cause, DeliveryError, send
from vald.node.spool import DONE, OUTBOX, Outgoing, Spool, Target
from vald.outputs import described
from vald.signals import interruptible
from vald.sources import Source, load

LOG = logging.getLogger("vald.node")
OUTPUT_ERROR_PAUSE_S = 30.0  # the out folder cannot be written (disk full): wait, keep what was received


@dataclass(frozen=True)
class Job:
    """What ``vald run`` would run with these settings: engines opened once, the settings hash."""

    out: Path
    run: RunConfig
    options: OutputOptions
    engines: Any
    provenance: dict[str, Any]
    settings_sha: str

    @classmethod
    def open(cls, cfg: NodeConfig) -> Job:
        """Open the engine folder (a broken one stops the node at start, not at the first study)."""
        options = node_options(cfg)
        engines, provenance = open_engines(cfg.engines, cfg.run)
        sha = settings_sha256(cfg.run, provenance, "attribution", options)
        return cls(cfg.out, cfg.run, options, engines, provenance, sha)

    def load(self, path: Path, sha256: str | None) -> Source:
        """Read a received instance (CR and DX only, as ``vald run`` without --any-modality)."""
        return load(path, sha256, modalities=MODALITIES)

    def process(self, source: Source, entry: Entry) -> Path:
        """The counterfactual and map of one instance, written as ``vald run`` writes them."""
        return run_one(source, self.out, self.engines, self.provenance, self.run, options=self.options)


def node_options(cfg: NodeConfig) -> OutputOptions:
    """The derived objects the node writes and sends."""
    return OutputOptions(
        dicom=True,
        segmentation=cfg.segmentation,
        seg_type=cfg.seg_type,
        report=cfg.report,
        parametric_map=cfg.parametric_map,
    )


class Worker:
    """Runs in the main thread; the receiver's threads only add files to the spool and set ``wake``."""

    def __init__(self, cfg: NodeConfig, spool: Spool, job: Job) -> None:
        self.cfg, self.spool, self.job = cfg, spool, job
        self.wake = threading.Event()
        self.count = 0

    def run_forever(self) -> None:
        """Process and deliver until a stop signal (KeyboardInterrupt) arrives."""
        while True:
            worked = self.step()
            if not worked:
                with interruptible():
                    self.wake.wait(self._idle_wait())
                self.wake.clear()

    def step(self) -> bool:
        """Deliver what is due, then process the oldest received instance; False when there was nothing."""
        delivered = self.deliver_due(time.time())
        queued = self.spool.incoming()
        if not queued:
            return delivered
        try:
            self.process(queued[0])
        except OutputError as exc:
            LOG.error("cannot write results: %s; retrying in %.0f s", exc, OUTPUT_ERROR_PAUSE_S)
            with interruptible():
                time.sleep(OUTPUT_ERROR_PAUSE_S)
        return True

    def close(self) -> None:
        """Release what the worker holds (the engines go with the process)."""

    def _idle_wait(self) -> float:
        waits = [
            t.next_try - time.time()
            for path in self.spool.outgoing()
            for t in Outgoing.read(path).targets.values()
            if t.open
        ]
        return max(0.05, min([1.0, *waits]))

    def process(self, path: Path) -> None:
        """One received instance: compute (or find) its result, queue it for delivery, drop the spooled copy."""
        inode, key = path.stat().st_ino, path.stem
        self.count += 1
        entry = Entry(self.count)
        LOG.info("instance %s: processing", key)
        handle_one(path, entry, self.job.out, self.job.settings_sha, self.job.load, self.job.process)
        self.after(path, inode, key, entry)

    def after(self, path: Path, inode: int, key: str, entry: Entry) -> None:
        """An instance's outcome: a dead letter, or its result queued for delivery; then its spooled copy goes."""
        if entry.status == Status.FAILED:
            reason = {"stage": "processing", "error": entry.error, "input_sha256": entry.input_sha256}
            self.spool.dead_letter(key, reason, {"input.dcm": path})
            self.spool.log("failed", key, stage="processing", error=entry.error)
            LOG.error("instance %s failed: %s (kept in %s)", key, entry.error, self.spool.path("failed", key))
        elif self.spool.path(OUTBOX, key, ".json").exists():
            LOG.info("instance %s: already processed, delivery under way", key)
        elif entry.status == Status.SKIPPED and self.spool.path(DONE, key, ".json").exists():
            LOG.info("instance %s: received again, already processed and delivered with these settings", key)
            self.spool.log("duplicate", key)
        else:
            self._queue(key, entry)
        self.spool.release(path, inode)

    def _queue(self, key: str, entry: Entry) -> None:
        result = described(self.job.out / entry.output) or {}
        files = sorted(result.get("dicom_outputs", {}))
        targets = {d.name: Target() for d in self.cfg.destinations}
        record = Outgoing(key, entry.output, entry.input_sha256, files, targets)
        self.spool.put(OUTBOX, record)
        resumed = entry.status == Status.SKIPPED  # published before a restart cut the node short
        self.spool.log("processed", key, seconds=entry.seconds, resumed=resumed, output=entry.output)
        LOG.info("instance %s: processed in %.1f s%s", key, entry.seconds, " (found finished)" if resumed else "")

    def deliver_due(self, now: float) -> bool:
        """Try every destination whose turn has come; finish records that are complete.  True if any was tried."""
        tried = False
        for path in self.spool.outgoing():
            record = Outgoing.read(path)
            for name, target in record.targets.items():
                if target.open and target.next_try <= now:
                    self._try(record, name, target)
                    self.spool.put(OUTBOX, record)
                    tried = True
            if not any(t.open for t in record.targets.values()):
                self._close(record)
        return tried

    def _try(self, record: Outgoing, name: str, target: Target) -> None:
        destination = self._destination(name)
        if destination is None:
            target.gave_up, target.error = True, "destination no longer configured"
            return
        files = [self.job.out / record.output / f for f in record.files]
        try:
            send(destination, files, self.cfg.delivery, self.cfg.listen.ae_title)
        except DeliveryError as exc:
            self._failed(record, name, target, str(exc), exc.cause)
        except Exception as exc:  # a library failure: its type is safe to show, its text may not be
            self._failed(record, name, target, f"internal error ({type(exc).__name__})", Cause.INTERNAL)
        else:
            target.sent, target.error, target.cause = True, "", ""
            self.spool.log("sent", record.key, destination=name, objects=len(files))
            LOG.info("instance %s: %d object(s) sent to %s", record.key, len(files), name)

    def _failed(self, record: Outgoing, name: str, target: Target, error: str, cause: str) -> None:
        target.attempts += 1
        target.error, target.cause = error, cause
        delivery = self.cfg.delivery
        if target.attempts >= delivery.attempts:
            target.gave_up = True
            LOG.error("instance %s: giving up on %s after %d attempts: %s", record.key, name, target.attempts, error)
        else:
            wait = delivery.wait_after(target.attempts)
            target.next_try = time.time() + wait
            LOG.warning("instance %s: sending to %s failed (%s); next try in %.0f s", record.key, name, error, wait)
        self.spool.log("send_failed", record.key, destination=name, attempt=target.attempts, error=error, cause=cause)

    def _close(self, record: Outgoing) -> None:
        failed = {n: t.error for n, t in record.targets.items() if t.gave_up}
        if failed:
            files = {f: self.job.out / record.output / f for f in record.files}
            reason = {
                "stage": "delivery",
                "error": "; ".join(f"{n}: {e}" for n, e in failed.items()),
                "targets": failed,
                "causes": {n: t.cause for n, t in record.targets.items() if t.gave_up},
                "sent_to": sorted(n for n, t in record.targets.items() if t.sent),
                "output": record.output,
                "input_sha256": record.input_sha256,
                "files": record.files,
            }
            self.spool.dead_letter(record.key, reason, files)
            self.spool.log("failed", record.key, stage="delivery", destinations=sorted(failed))
            self.spool.path(OUTBOX, record.key, ".json").unlink(missing_ok=True)
        else:
            self.spool.finish(record)
            self.spool.log("done", record.key)

    def _destination(self, name: str) -> Destination | None:
        return next((d for d in self.cfg.destinations if d.name == name), None)

"""The node's durable state: what was received, what waits to be sent, what is done, what failed.

Layout under the spool folder (every file written by :func:`vald.outputs.write_atomic`: temporary file,
fsync, rename, fsync of the folder; a node killed at any point finds each file whole or absent)::

    incoming/<key>.dcm    received and acknowledged, not yet processed (key: hash of the SOP Instance UID)
    outbox/<key>.json     processed; results waiting for one or more destinations
    done/<key>.json       processed and delivered everywhere
    failed/<key>/         dead letters: reason.json, and the input or the results that could not be sent
    events.jsonl          one line per step (received, processed, sent, failed), flushed to disk

An instance moves on only after its next state is on disk, so a restart redoes at most the step that was
cut short: processing is skipped when the output set is already published (as ``vald run`` resumes), and a
send cut short after the peer stored the objects is repeated once with the same UIDs.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vald.errors import ValdError
from vald.outputs import fsync_dir, write_atomic
from vald.strictjson import encode

INCOMING, OUTBOX, DONE, FAILED = "incoming", "outbox", "done", "failed"
EVENTS = "events.jsonl"
REASON = "reason.json"


class SpoolFull(ValdError):
    """Accepting the instance would pass the spool limit: the sender is told Out of Resources."""


@dataclass
class Target:
    """One destination's delivery state for one result."""

    sent: bool = False
    gave_up: bool = False  # every attempt failed: the result goes to the dead letters
    attempts: int = 0
    next_try: float = 0.0  # epoch seconds
    error: str = ""
    cause: str = ""  # the last failure's kind (vald.node.send.Cause): connection refused, timed out, ...

    @property
    def open(self) -> bool:
        """Still to be tried."""
        return not (self.sent or self.gave_up)


@dataclass
class Outgoing:
    """A processed instance: its output set and where its derived objects still have to go."""

    key: str
    output: str  # the output set's folder name under out/
    input_sha256: str
    files: list[str]
    targets: dict[str, Target] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Outgoing:
        """Load an outbox record."""
        data = json.loads(path.read_bytes())
        targets = {name: Target(**t) for name, t in data.pop("targets").items()}
        return cls(**data, targets=targets)

    def to_bytes(self) -> bytes:
        """The record as JSON."""
        return encode(asdict(self), indent=2)


class Spool:
    """The spool folder; :meth:`accept` is safe to call from the receiver's threads."""

    def __init__(self, root: Path, limit_bytes: int = 0) -> None:
        self.root, self.limit = root, limit_bytes
        self._lock = threading.Lock()
        self._queued = 0

    def prepare(self) -> None:
        """Before serving (under the spool's lock): create the folders, drop writes a crash cut short."""
        for state in (INCOMING, OUTBOX, DONE, FAILED):
            (self.root / state).mkdir(parents=True, exist_ok=True)
            for leftover in (self.root / state).glob(".*.tmp"):  # never acknowledged, or never completed: redone
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        self._queued = sum(p.stat().st_size for p in self.incoming())

    def path(self, state: str, key: str, suffix: str = "") -> Path:
        """Where ``key`` lives in ``state``."""
        return self.root / state / f"{key}{suffix}"

    def accept(self, key: str, data: bytes) -> None:
        """Store a received instance durably (before its C-STORE is acknowledged); SpoolFull past the limit."""
        target = self.path(INCOMING, key, ".dcm")
        with self._lock:
            replaced = _size(target)  # the same instance, still queued: replaced, not added
            if self._queued - replaced + len(data) > self.limit:
                raise SpoolFull(f"spool limit reached ({self._queued} bytes waiting)")
            self._queued += len(data)
        try:
            write_atomic(target, data)
        except BaseException:
            with self._lock:
                self._queued -= len(data)
            raise
        with self._lock:
            self._queued -= replaced
        self.log("received", key, bytes=len(data))

    def incoming(self) -> list[Path]:
        """Received instances not yet processed, oldest first."""
        return _oldest_first((self.root / INCOMING).glob("*.dcm"))

    def release(self, path: Path, inode: int) -> None:
        """Remove a processed instance, unless the same instance was received again meanwhile (new inode)."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        if stat.st_ino != inode:
            return
        path.unlink()
        fsync_dir(path.parent)
        with self._lock:
            self._queued -= stat.st_size

    def outgoing(self) -> list[Path]:
        """Outbox records, oldest first."""
        return _oldest_first((self.root / OUTBOX).glob("*.json"))

    def put(self, state: str, record: Outgoing) -> None:
        """Write ``record`` into ``state`` (outbox or done) atomically."""
        write_atomic(self.path(state, record.key, ".json"), record.to_bytes())

    def finish(self, record: Outgoing) -> None:
        """Delivered everywhere: the record moves from outbox to done."""
        self.put(DONE, record)
        self.path(OUTBOX, record.key, ".json").unlink(missing_ok=True)
        fsync_dir(self.root / OUTBOX)

    def dead_letter(self, key: str, reason: dict[str, Any], files: dict[str, Path]) -> Path:
        """Keep ``files`` (copied) and ``reason`` under failed/<key>/; the folder appears whole or not at all."""
        target = self.path(FAILED, key)
        staging = self.root / FAILED / f".{key}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, source in files.items():
            if source.is_file():
                shutil.copyfile(source, staging / name)
        write_atomic(staging / REASON, encode({"key": key, "time": time.time(), **reason}, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        fsync_dir(target.parent)
        return target

    def log(self, event: str, key: str, **facts: Any) -> None:
        """Append one line to events.jsonl and flush it to disk (the node's journal; no patient data)."""
        line = encode({"time": round(time.time(), 3), "event": event, "key": key, **facts})  # one line, newline-ended
        with self._lock, open(self.root / EVENTS, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def status(self) -> dict[str, Any]:
        """Counts and keys per state, for ``vald serve --status``."""
        queued = [p.stem for p in self.incoming()]
        sending = []
        for path in self.outgoing():
            record = Outgoing.read(path)
            waiting = {n: asdict(t) for n, t in record.targets.items() if t.open}
            sending.append({"key": record.key, "waiting_for": waiting})
        done = sorted(p.stem for p in (self.root / DONE).glob("*.json"))
        failed = []
        folders = sorted((self.root / FAILED).iterdir()) if (self.root / FAILED).is_dir() else []
        for folder in folders:
            if folder.is_dir() and not folder.name.startswith("."):
                reason = json.loads((folder / REASON).read_bytes()) if (folder / REASON).is_file() else {}
                failed.append(
                    {
                        "key": folder.name,
                        "stage": reason.get("stage", ""),
                        "error": reason.get("error", ""),
                        "destinations": sorted(reason.get("targets", {})),
                    }
                )
        return {
            "counts": {"queued": len(queued), "sending": len(sending), "done": len(done), "failed": len(failed)},
            "queued": queued,
            "sending": sending,
            "done": done,
            "failed": failed,
        }


def _oldest_first(paths: Iterable[Path]) -> list[Path]:
    """By modification time, then name; a file removed meanwhile is left out."""
    found = []
    for path in paths:
        try:
            found.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    return [path for _, _, path in sorted(found)]


def _size(path: Path) -> int:
    """A file's size; 0 when it does not exist (or was just removed by the worker)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0

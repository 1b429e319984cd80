"""What an operator does to a node's spool: see per-destination state (``--status``), re-send dead letters.

Both work while the node runs (neither takes the spool's lock): ``--status`` only reads, and ``--requeue``
moves a dead letter back into the state a running node picks up on its next step (``outbox/`` for a result
that could not be delivered, ``incoming/`` for an instance that failed to process), each written atomically
before the dead letter is removed; a requeue cut short leaves the dead letter in place to requeue again.
A delivery dead letter is re-sent only to the destinations that gave up on it, never again to those that
stored it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vald.errors import ConfigError
from vald.node.config import NodeConfig
from vald.node.spool import EVENTS, FAILED, INCOMING, OUTBOX, REASON, Outgoing, Spool, Target
from vald.outputs import fsync_dir, write_atomic

JOURNAL_TAIL_BYTES = 4 * 1024 * 1024  # --status reads this much of events.jsonl's end


def status(cfg: NodeConfig) -> dict[str, Any]:
    """The spool's counts and keys, plus each configured destination's state and the cause of its failures."""
    spool = Spool(cfg.spool)
    report = spool.status()
    events = _journal_tail(spool.root / EVENTS)
    report["destinations"] = {d.name: _destination_state(events, report, d.name) for d in cfg.destinations}
    return report


def _destination_state(events: list[dict[str, Any]], report: dict[str, Any], name: str) -> dict[str, Any]:
    last_sent, last_failure = None, None
    for event in events:
        if event.get("destination") != name:
            continue
        if event.get("event") == "sent":
            last_sent = event.get("time")
        elif event.get("event") == "send_failed":
            last_failure = {k: event.get(k) for k in ("time", "cause", "error", "attempt")}
    waiting = [s["waiting_for"][name] for s in report["sending"] if name in s["waiting_for"]]
    retrying = [w for w in waiting if w.get("attempts", 0) > 0]
    dead = [f["key"] for f in report["failed"] if name in f.get("destinations", [])]
    failing = last_failure is not None and (last_sent is None or last_failure["time"] > last_sent)
    state = "failing" if failing or retrying else "ok" if last_sent is not None else "not used yet"
    return {
        "state": state,
        "cause": str((last_failure or {}).get("cause") or "") if state == "failing" else "",
        "last_sent": last_sent,
        "last_failure": last_failure,
        "waiting": len(waiting),
        "retrying": len(retrying),
        "dead_letters": dead,
    }


def _journal_tail(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - JOURNAL_TAIL_BYTES))
            lines = fh.read().splitlines()[1 if size > JOURNAL_TAIL_BYTES else 0 :]
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return events


def requeue(cfg: NodeConfig, keys: list[str] | None) -> list[str]:
    """Move the dead letters ``keys`` (all of them when None) back into the spool; returns the keys moved.

    ConfigError (one line) for a key that is not a dead letter, or one that cannot be re-sent.
    """
    spool = Spool(cfg.spool)
    failed = spool.root / FAILED
    present = (
        sorted(p.name for p in failed.iterdir() if p.is_dir() and not p.name.startswith(".")) if failed.is_dir() else []
    )
    wanted = present if keys is None else keys
    for key in wanted:
        if key not in present:
            raise ConfigError(f"--requeue {key}: no dead letter with that key in {failed} (see --status)")
    names = {d.name for d in cfg.destinations}
    for key in wanted:
        _requeue_one(spool, key, names)
    return list(wanted)


def _requeue_one(spool: Spool, key: str, destinations: set[str]) -> None:
    folder = spool.path(FAILED, key)
    try:
        reason = json.loads((folder / REASON).read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"--requeue {key}: {REASON} is missing or unreadable; re-send its files by hand") from None
    if reason.get("stage") == "processing":
        if not (folder / "input.dcm").is_file():
            raise ConfigError(f"--requeue {key}: the received instance (input.dcm) is missing")
        write_atomic(spool.path(INCOMING, key, ".dcm"), (folder / "input.dcm").read_bytes())
    else:
        if "output" not in reason:
            raise ConfigError(f"--requeue {key}: written by an older vald without the output's name; re-send by hand")
        retry = sorted(set(reason.get("targets", {})) & destinations)
        if not retry:
            raise ConfigError(f"--requeue {key}: none of its failed destinations is configured any more")
        record = Outgoing(key, reason["output"], reason["input_sha256"], list(reason["files"]), {})
        record.targets = {name: Target() for name in retry}
        spool.put(OUTBOX, record)
    spool.log("requeued", key, stage=reason.get("stage", ""))
    shutil.rmtree(folder)
    fsync_dir(folder.parent)

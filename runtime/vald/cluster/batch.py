"""The driver of a run on an executor: it alone hashes, loads, skips and publishes; workers only compute.

The same summary, lock, settings hash, skip-if-finished and interruption rules as :func:`vald.batch.run_batch`
(they share :func:`vald.batch.prepare_one` and :func:`vald.batch.recorded`); inputs are loaded only as workers
become free, so at most ``workers`` sources are in the object store at a time.  Output sets are published in
the order they finish; the summary lists inputs in their order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vald.batch import Entry, Events, Status, Summary, now, prepare_one, recorded, write_summary
from vald.cluster.executor import Executor, Task
from vald.errors import OutputError
from vald.outputs import OutputSet
from vald.signals import interruptible, stopped_by
from vald.sources import Source


def run_on(
    executor: Executor,
    inputs: Sequence[Path],
    out_root: Path,
    settings_sha: str,
    load: Callable[[Path, str | None], Source],
    *,
    run_info: dict[str, Any] | None = None,
    force: bool = False,
    on_event: Events | None = None,
) -> Summary:
    """Run every input on ``executor``; a failure is recorded and the batch goes on (as ``run_batch``)."""
    summary = Summary(settings_sha, now(), run={**(run_info or {}), "executor": executor.name})
    entries = [Entry(index) for index in range(1, len(inputs) + 1)]
    started: dict[int, float] = {}
    total = len(inputs)

    def finish(entry: Entry) -> None:
        entry.seconds = round(time.perf_counter() - started[entry.index], 3)
        write_summary(out_root, summary)
        if on_event:
            on_event(entry, total)

    def tasks() -> Iterator[Task]:
        seen: dict[str, int] = {}
        for entry, path in zip(entries, inputs, strict=True):
            summary.entries.append(entry)
            started[entry.index] = time.perf_counter()
            if on_event:
                on_event(entry, total)
            source = None
            with recorded(entry):
                source = prepare_one(path, entry, out_root, settings_sha, load, force=force, seen=seen)
            if source is None:
                finish(entry)
                continue
            yield Task(entry.index, source)

    outcomes = executor.map(tasks())
    try:
        while True:
            with interruptible():  # waiting for workers ends at a stop signal; publishing does not
                outcome = next(outcomes, None)
            if outcome is None:
                break
            entry = entries[outcome.index - 1]
            with recorded(entry):
                if not isinstance(outcome.value, OutputSet):
                    entry.status, entry.error = Status.FAILED, outcome.error or "no output set came back"
                else:
                    outcome.value.publish(out_root)
                    entry.status = Status.DONE
            finish(entry)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (vald.signals)
        for entry in summary.entries:
            if not entry.status:
                entry.status = Status.INTERRUPTED
        summary.interrupted, summary.not_started = True, total - len(summary.entries)
        summary.stopped_by = stopped_by(exc).name
    except OutputError:  # the output folder, not this input: later inputs would fail the same way
        summary.not_started, summary.finished = total - len(summary.entries), now()
        with contextlib.suppress(OutputError):
            write_summary(out_root, summary)
        raise
    summary.finished = now()
    write_summary(out_root, summary)
    return summary

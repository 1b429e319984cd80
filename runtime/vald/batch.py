"""Many inputs in one run: collect, skip what is finished, never stop on a bad file, keep a summary.

Inputs are named in the summary, on the terminal and in errors by their **index** (position in the
sorted list of inputs) and a prefix of their **content hash**, never by file name (file names of
exported studies often carry patient names or IDs).  ``sha256sum`` finds the file of a hash.

The summary (``summary.json`` and ``summary.csv``) is rewritten atomically after every input, so a
crash leaves it valid; a re-run skips every input whose ``result.json`` carries the same settings hash.
Ctrl-C, SIGTERM and SIGHUP (see :mod:`vald.signals`) mark the input in progress "interrupted", stop the
batch and return what was done (the caller still writes its report); inputs not reached are counted as
``not_started`` in the summary, and ``stopped_by`` names the signal.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vald.errors import InputError, OutputError, ValdError
from vald.lock import LOCK_NAME
from vald.outputs import RESULT, described, output_errors, write_atomic
from vald.signals import deferred, interruptible, stopped_by
from vald.sources import Source, read_sha256
from vald.strictjson import encode

SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"
# Files a folder walk passes over: not images, or our own outputs.
IGNORED_SUFFIXES = frozenset({".json", ".csv", ".txt", ".md", ".html", ".htm", ".xml", ".log", ".npy", ".zip", ".pdf"})
IGNORED_NAMES = frozenset({"DICOMDIR", "LOCKFILE", "VERSION"})


class Status:
    """Per-input outcomes."""

    DONE = "done"
    SKIPPED = "skipped"  # finished earlier with the same settings, or a duplicate instance
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C) while this input was in progress


@dataclass
class Entry:
    """One input's line in the summary."""

    index: int
    status: str = ""
    input_sha256: str = ""
    output: str = ""
    error: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    """The whole run."""

    settings_sha256: str
    started: str
    entries: list[Entry] = field(default_factory=list)
    finished: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    stopped_by: str = ""  # the signal that stopped the run: SIGINT (Ctrl-C), SIGTERM or SIGHUP
    not_started: int = 0

    @property
    def failed(self) -> int:
        """How many inputs failed."""
        return sum(e.status == Status.FAILED for e in self.entries)

    def counts(self) -> dict[str, int]:
        """Inputs per status."""
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        if self.not_started:
            out["not started"] = self.not_started
        return out


def _is_vald_output(folder: Path) -> bool:
    """A folder vald wrote: an output root (its lock file) or one input's output set (its result.json)."""
    return (folder / LOCK_NAME).exists() or (folder / RESULT).is_file()


def _walk(root: Path) -> list[Path]:
    """Image candidates under ``root``, sorted; hidden entries and vald's own output folders left out."""
    found = []
    for here, dirs, files in os.walk(root):
        base = Path(here)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_vald_output(base / d)]
        for name in files:
            if name.startswith(".") or name in IGNORED_NAMES or Path(name).suffix.lower() in IGNORED_SUFFIXES:
                continue
            found.append(base / name)
    return sorted(found)


def collect(paths: Sequence[Path], out: Path | None = None) -> list[Path]:
    """Files given, and every file under folders given (recursively, sorted); vald's own outputs left out.

    An output folder equal to an input folder or inside one is refused (its results would become inputs
    of the next run, and a walk would race with the writes).
    """
    found: list[Path] = []
    target = out.resolve() if out is not None else None
    for number, path in enumerate(paths, start=1):
        if not path.is_dir():
            found.append(path)  # a missing file is reported as a failure of its own, not here
            continue
        folder = path.resolve()
        if target is not None and target.is_relative_to(folder):
            where = "is" if target == folder else "is inside"
            raise InputError(f"the output folder {where} input folder #{number}; choose an --out outside the inputs")
        if _is_vald_output(folder):
            raise InputError(f"input folder #{number} is an output folder of vald; give the original images")
        found.extend(_walk(path))
    if not found:
        raise InputError("no input files found")
    return found


def finished(out_dir: Path, settings_sha: str) -> bool:
    """True if ``out_dir`` holds a complete result made with these settings (every listed file intact)."""
    result = described(out_dir)
    return result is not None and result.get("settings_sha256") == settings_sha


def _csv(summary: Summary) -> bytes:
    buf = io.StringIO()
    names = [f for f in Entry.__dataclass_fields__]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for entry in summary.entries:
        writer.writerow(asdict(entry))
    return buf.getvalue().encode()


def write_summary(out_root: Path, summary: Summary) -> None:
    """``summary.json`` and ``summary.csv``, atomically."""
    body = {**asdict(summary), "counts": summary.counts()}
    with deferred(), output_errors("the summary"):
        write_atomic(out_root / SUMMARY_JSON, encode(body, indent=2))
        write_atomic(out_root / SUMMARY_CSV, _csv(summary))


def now() -> str:
    """UTC time stamp, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


Events = Callable[[Entry, int], None]


def handle_one(
    path: Path,
    entry: Entry,
    out_root: Path,
    settings_sha: str,
    load: Callable[[Path, str | None], Source],
    process: Callable[[Source, Entry], Path],
    *,
    force: bool = False,
    seen: dict[str, int] | None = None,
) -> None:
    """One input, as ``vald run`` does it: hash, load, skip it when finished with these settings, else process.

    ``entry`` gets the status, hash, output key, error and time.  A bad input is recorded as failed; a
    stop signal (KeyboardInterrupt) marks it interrupted and an :class:`OutputError` marks it failed, and
    both are raised.  ``seen`` (output key -> index) skips a second copy of an instance in one batch.
    """
    started = time.perf_counter()
    try:
        with recorded(entry), interruptible():  # a stop signal ends this input's work at once (vald.signals)
            source = prepare_one(path, entry, out_root, settings_sha, load, force=force, seen=seen)
            if source is not None:
                process(source, entry)
                entry.status = Status.DONE
    finally:
        entry.seconds = round(time.perf_counter() - started, 3)


def prepare_one(
    path: Path,
    entry: Entry,
    out_root: Path,
    settings_sha: str,
    load: Callable[[Path, str | None], Source],
    *,
    force: bool = False,
    seen: dict[str, int] | None = None,
) -> Source | None:
    """Hash and load one input; None (``entry`` marked skipped) when finished with these settings or a duplicate.

    Errors propagate: wrap the call in :func:`recorded`.
    """
    entry.input_sha256 = read_sha256(path)  # first: a file that fails to decode is still named by it
    source = load(path, entry.input_sha256)
    entry.output = source.key
    first = entry.index if seen is None else seen.setdefault(source.key, entry.index)
    if first != entry.index:
        entry.status, entry.error = Status.SKIPPED, f"same instance as input #{first}"
        return None
    if not force and finished(out_root / source.key, settings_sha):
        entry.status = Status.SKIPPED
        return None
    return source


@contextlib.contextmanager
def recorded(entry: Entry) -> Iterator[None]:
    """Record a failure of the work inside as ``entry``'s status and error; the batch goes on.

    A stop signal (KeyboardInterrupt) marks it interrupted and an :class:`OutputError` marks it failed, and
    both are raised; any other error is kept (a :class:`ValdError` by its message, anything else by its type
    alone: its text may quote a header value).
    """
    try:
        yield
    except KeyboardInterrupt:
        entry.status = Status.INTERRUPTED
        raise
    except OutputError as exc:
        entry.status, entry.error = Status.FAILED, str(exc)
        raise
    except ValdError as exc:
        entry.status, entry.error = Status.FAILED, str(exc)
    except Exception as exc:  # a bad file never stops a batch; the type is safe to show, the text may not be
        entry.status, entry.error = Status.FAILED, internal_error(exc)


def internal_error(exc: BaseException) -> str:
    """The one-line error of an unexpected exception: its type only."""
    return f"internal error ({type(exc).__name__}); please report it"


def run_batch(
    paths: Iterable[Path],
    out_root: Path,
    settings_sha: str,
    load: Callable[[Path, str | None], Source],
    process: Callable[[Source, Entry], Path],
    *,
    run_info: dict[str, Any] | None = None,
    force: bool = False,
    on_event: Events | None = None,
) -> Summary:
    """Load and process each input; a failure is recorded and the batch goes on.

    ``load(path, sha256)`` reads one input whose content hash is already known.  A failure to write the
    outputs (:class:`OutputError`: disk full, read-only) is recorded, then stops the batch: it is raised.

    ``on_event(entry, total)`` is called when an input starts (status "") and when it ends.  A
    KeyboardInterrupt stops the batch: the summary comes back with ``interrupted`` set.
    """
    inputs = list(paths)
    summary = Summary(settings_sha, now(), run=dict(run_info or {}))
    seen: dict[str, int] = {}
    for index, path in enumerate(inputs, start=1):
        entry = Entry(index)
        summary.entries.append(entry)
        if on_event:
            on_event(entry, len(inputs))
        try:
            handle_one(path, entry, out_root, settings_sha, load, process, force=force, seen=seen)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (vald.signals)
            summary.interrupted, summary.not_started = True, len(inputs) - index
            summary.stopped_by = stopped_by(exc).name
            break
        except OutputError:  # the output folder, not this input: later inputs would fail the same way
            summary.not_started, summary.finished = len(inputs) - index, now()
            with contextlib.suppress(OutputError):
                write_summary(out_root, summary)
            raise
        write_summary(out_root, summary)
        if on_event:
            on_event(entry, len(inputs))
    summary.finished = now()
    write_summary(out_root, summary)
    return summary

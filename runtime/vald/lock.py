"""One writer per output folder: an advisory lock, taken before anything is written there.

Two runs into one ``--out`` would redo each other's inputs and overwrite each other's summary and
report.  The first process holds ``OUT/.vald-lock`` (``flock``, released by the kernel when the process
ends, also on ``kill -9``); a second one stops at once with one line naming the holder's pid.  The
lock file stays: it also marks the folder as vald's output, which input collection never walks into.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vald.errors import OutputBusyError, OutputError, os_cause
from vald.outputs import remove_leftovers

LOCK_NAME = ".vald-lock"


@contextmanager
def claim(out_root: Path) -> Iterator[Path]:
    """Create ``out_root`` if needed, hold its lock, and remove what killed writers left there."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot use output folder {out_root}: {os_cause(exc, 'output device')}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputBusyError(
                f"output folder {out_root} is in use by another vald process (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for the message only; a full disk must not stop here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        remove_leftovers(out_root)
        yield out_root
    finally:
        os.close(fd)  # releases the lock

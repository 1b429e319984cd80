"""Ctrl-C, SIGTERM and SIGHUP stop vald cleanly: the work in progress is marked, summary and report written.

A service manager (systemd, a container runtime) stops a process with SIGTERM; closing its terminal
sends SIGHUP.  While :func:`stop_on_signals` is active, each of these raises :class:`Stopped` (a
KeyboardInterrupt, so every place that handles Ctrl-C handles it) in the main thread.  Inside
:func:`deferred` the stop waits until the block is done, except in its :func:`interruptible` parts: a
batch runs deferred, each input's work is interruptible, so a stop ends the input in progress at once
but never cuts short the summary or the report.  After the
first signal the default action is back: a second one ends the process at once.  The exit status is
the shell's 128 + N.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one


def stopped_by(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: SIGINT for a plain KeyboardInterrupt."""
    return signal.Signals(exc.signum) if isinstance(exc, Stopped) else signal.SIGINT


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by that signal: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP)."""
    return 128 + int(stopped_by(exc))


def _handler(signum: int, frame: FrameType | None) -> None:
    for other in HANDLED:
        signal.signal(other, signal.SIG_DFL)  # one clean stop; a second signal ends the process
    if _State.depth:
        _State.pending = signum
        return
    raise Stopped(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop signal until the block is done; then raise it."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if _State.depth == 0 and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Stopped(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside :func:`deferred`: a stop signal interrupts this part at once (one already waiting, on entry)."""
    saved, _State.depth = _State.depth, 0
    try:
        if _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise Stopped(signum)
        yield
    finally:
        _State.depth = saved


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn Ctrl-C, SIGTERM and SIGHUP into :class:`Stopped` for the duration (main thread only)."""
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _State.pending = None

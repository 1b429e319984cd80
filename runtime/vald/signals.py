"""SIGTERM and SIGHUP stop vald as Ctrl-C does: the work in progress is marked, summary and report written.

A service manager (systemd, a container runtime) stops a process with SIGTERM; closing its terminal
sends SIGHUP.  While :func:`stop_on_signals` is active, either raises :class:`Stopped` (a
KeyboardInterrupt, so every place that handles Ctrl-C handles it) in the main thread, once: further
signals are ignored while vald writes its summary and report.  The exit status is the shell's 128 + N.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stopped_by(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: SIGINT for Ctrl-C."""
    return signal.Signals(exc.signum) if isinstance(exc, Stopped) else signal.SIGINT


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by that signal: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP)."""
    return 128 + int(stopped_by(exc))


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` for the duration (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for other in HANDLED:
            signal.signal(other, signal.SIG_IGN)  # one stop; the clean-up is not interrupted again
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)

"""The CPU's instruction-set flags, as Linux reports them: read once, used by the backends that depend on them."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_flags_line() -> str | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line's value from /proc/cpuinfo; None where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return set((cpu_flags_line() or "").split())

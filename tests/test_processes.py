"""vald as a process among processes: two runs into one --out, SIGTERM and SIGHUP (issue 10, items 3 and 4).

Real processes and real signals: each test starts ``python -m vald.cli`` and waits for it to reach the
point of interest by watching the files it writes, never by sleeping a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vald.lock import LOCK_NAME

SLOW = ["--steps", "400", "--strength", "1", "--quiet"]  # several seconds per input on the tiny model


def _cmd(engines: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vald.cli",
        "run",
        *map(str, inputs),
        "--engines",
        str(engines),
        "--out",
        str(out),
        *extra,
    ]


def _start(engines: Path, inputs: list[Path], out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd(engines, inputs, out, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(engines: Path, inputs: list[Path], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(engines, inputs, out, *extra), capture_output=True, text=True, timeout=300, check=False)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"vald ended early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for vald")
        time.sleep(0.05)


def _locked_by(out: Path, proc: subprocess.Popen[str]) -> Callable[[], bool]:
    lock = out / LOCK_NAME
    return lambda: lock.is_file() and lock.read_text().strip() == str(proc.pid)


def _inputs(tmp_path: Path, small_png: Path, n: int) -> list[Path]:
    from PIL import Image

    base = Image.open(small_png)
    paths = []
    for k in range(n):
        path = tmp_path / "in" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        base.rotate(k * 5).save(path)  # distinct content, distinct output folders
        paths.append(path)
    return paths


def test_a_second_run_into_the_same_out_stops_with_one_line(engines: Path, small_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(engines, [small_png], out, *SLOW)
    _wait_for(_locked_by(out, first), first)
    second = _finish(engines, [small_png], out, "--steps", "4", "--guidance-min-t", "0", "--quiet")
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"vald: error: output folder {out} is in use by another vald process (pid {first.pid}); "
        "wait for it to finish or choose another --out"
    ]
    assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["entries"]] == ["done"]  # the first run's summary, not overwritten


def test_a_killed_holder_releases_the_folder(engines: Path, small_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(engines, [small_png], out, *SLOW)
    _wait_for(_locked_by(out, first), first)
    first.kill()  # SIGKILL: no clean-up of any kind; the kernel drops the lock
    first.wait()
    again = _finish(engines, [small_png], out, "--steps", "4", "--guidance-min-t", "0", "--quiet")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_a_clean_stop(
    engines: Path, small_png: Path, tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    out = tmp_path / "out"
    inputs = _inputs(tmp_path, small_png, 3)
    proc = _start(engines, inputs, out, *SLOW)
    summary = out / "summary.json"
    # the first input finished (a summary exists), the second is in progress
    _wait_for(lambda: summary.is_file() and '"done"' in summary.read_text(), proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert f"stopped by {signum.name}" in err
    body = json.loads(summary.read_text())
    assert [e["status"] for e in body["entries"]] == ["done", "interrupted"]
    assert body["interrupted"] and body["not_started"] == 1 and body["stopped_by"] == signum.name
    assert (out / "report.html").is_file()
    resumed = _finish(engines, inputs, out, *SLOW)
    assert resumed.returncode == 0, resumed.stderr
    statuses = [e["status"] for e in json.loads(summary.read_text())["entries"]]
    assert statuses == ["skipped", "done", "done"]
    assert os.path.isfile(out / LOCK_NAME)


def test_a_stop_waits_for_a_deferred_block_but_not_for_interruptible_work() -> None:
    from vald.signals import Stopped, deferred, interruptible, stop_on_signals

    steps: list[str] = []
    with stop_on_signals(), pytest.raises(Stopped) as stopped, deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here and only records the signal
        steps.append("report written")
    assert steps == ["report written"] and stopped.value.signum == signal.SIGTERM
    with stop_on_signals(), pytest.raises(Stopped), deferred(), interruptible():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        steps.append("not reached")
    assert steps == ["report written"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

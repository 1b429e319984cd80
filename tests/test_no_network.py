"""No network connection and no stray files from a run, proven under strace.

ONNX Runtime >= 1.29 (Linux) starts 1DS telemetry: a device id and an event database under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` at start, DNS and HTTPS to Microsoft in runs over
~9 s.  ``import openvino`` starts opt-out Google Analytics telemetry (``openvino_telemetry``) unless a
consent file in the home folder says no.  Both are off under CI (``CI=true``), so the tests remove
those variables and give the run an empty home, as on a fresh workstation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"
needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)"
)
# syscalls that create, write or remove files; the test allows them only under --out and the engine cache
WRITES = re.compile(
    r"^\d+\s+(openat|open|creat|mkdir|mkdirat|rename|renameat2?|unlink|unlinkat|rmdir)\((.*)\)\s+=\s+(-?\d+)"
)
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT")


def _fresh_workstation(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    return env


def _written(trace: str, cwd: Path) -> list[str]:
    """Paths a traced process created, wrote, renamed or removed (successful calls only)."""
    found = []
    for line in trace.splitlines():
        m = WRITES.match(line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("openat", "open", "creat") and not any(f in args for f in WRITE_FLAGS):
            continue
        for dirfd, path in re.findall(r'(?:(AT_FDCWD|\d+), )?"([^"]*)"', args):
            if dirfd.isdigit() and not path.startswith("/"):
                found.append(f"<fd {dirfd}>/{path}")  # relative to an open folder: not placeable, so reported
            else:
                found.append(os.path.normpath(cwd / path))
    return found


def _traced(vald_args: list[str], tmp_path: Path, calls: str) -> tuple[subprocess.CompletedProcess[str], str]:
    trace = tmp_path / "trace.txt"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", f"trace={calls}", "-o", str(trace), sys.executable, "-m", "vald.cli", *vald_args],
        env=_fresh_workstation(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done, trace.read_text()


def _internet(calls: str) -> list[str]:
    return [ln for ln in calls.splitlines() if re.search(r"AF_INET6?\b", ln)]


@needs_strace
def test_onnxruntime_run_opens_no_socket_and_writes_only_its_outputs(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    shutil.copytree(DEMO, engines, ignore=shutil.ignore_patterns(".vald-cache"))
    out = tmp_path / "out"
    # 500 steps at full strength: ~25 s under strace, past the ~9 s after which ORT's uploader connects
    args = ["run", str(DEMO / "samples" / "consolidation.png"), "--engines", str(engines), "--out", str(out)]
    args += ["--steps", "500", "--strength", "1", "--quiet"]
    done, calls = _traced(args, tmp_path, "socket,connect,openat,open,creat,mkdir,rename,unlink,unlinkat,rmdir")
    assert done.returncode == 0, done.stderr
    assert "engines/manifest.json" in calls  # strace did follow the run
    internet = _internet(calls)
    assert internet == [], "network sockets: " + "; ".join(internet[:3])
    assert list((tmp_path / "home").iterdir()) == [], "files written to the home folder"
    allowed = (str(out), str(engines / ".vald-cache"), "/dev/null", "/dev/shm")
    stray = sorted({p for p in _written(calls, tmp_path) if not p.startswith(allowed)})
    # Python's own byte-code cache may be written beside the sources on a first import
    stray = [p for p in stray if "__pycache__" not in p]
    assert stray == [], "written outside --out and the engine cache: " + "; ".join(stray[:5])


@needs_strace
def test_openvino_run_opens_no_internet_socket(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    args = ["run", str(DEMO / "samples" / "consolidation.png"), "--engines", str(DEMO), "--backend", "openvino"]
    args += ["--precision", "bf16", "--steps", "20", "--out", str(tmp_path / "out"), "--quiet", "--no-report"]
    done, calls = _traced(args, tmp_path, "socket,connect,openat")
    if done.returncode != 0 and "not bf16" in done.stderr:
        pytest.skip("this CPU runs no bf16 in OpenVINO")
    assert done.returncode == 0, done.stderr
    assert "demo/manifest.json" in calls  # strace did follow the run (it opened the engine manifest)
    internet = _internet(calls)
    assert internet == [], "network sockets: " + "; ".join(internet[:3])
    assert list((tmp_path / "home").iterdir()) == []  # no consent or client-id files written to the home folder


@needs_strace
def test_quantize_opens_no_internet_socket(tmp_path: Path) -> None:
    """NNCF reports usage through openvino_telemetry (Google Analytics) unless that is unimportable."""
    pytest.importorskip("nncf")
    engines = tmp_path / "engines"
    engines.mkdir()
    for name in ("fp32", "tokenizer"):
        shutil.copytree(DEMO / name, engines / name)
    shutil.copy2(DEMO / "manifest.json", engines / "manifest.json")
    args = ["quantize", str(engines), str(DEMO / "samples" / "consolidation.png"), "--preset", "fast"]
    done, calls = _traced([*args, "--samples", "4"], tmp_path, "socket,connect,openat")
    assert done.returncode == 0, done.stderr
    assert "engines/manifest.json" in calls  # strace did follow the run
    assert (engines / "int8" / "unet.xml").is_file()
    internet = _internet(calls)
    assert internet == [], "network sockets: " + "; ".join(internet[:3])
    assert list((tmp_path / "home").iterdir()) == []


def test_library_use_starts_no_telemetry(engines: Path, tmp_path: Path) -> None:
    """Without the CLI: ``import vald`` and open the engines (ORT writes its device id at start when on)."""
    code = (
        "from pathlib import Path; from vald.app import open_engines; from vald.config import RunConfig; "
        f"open_engines(Path({str(engines)!r}), RunConfig(steps=2, guidance_min_t=0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_fresh_workstation(tmp_path), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "home").iterdir()) == []


def test_importing_onnxruntime_first_is_warned_about(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import onnxruntime, vald"],
        env=_fresh_workstation(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "onnxruntime was imported before vald with its telemetry on" in done.stderr

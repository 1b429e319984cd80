"""No network connection from a run, proven under strace: the OpenVINO backend and its telemetry package.

``import openvino`` starts opt-out Google Analytics telemetry (``openvino_telemetry``) unless a consent
file in the home folder says no; under CI it is off (``CI=true``), so the test removes that variable and
gives the run an empty home, as on a fresh workstation.  (ONNX Runtime's own telemetry, which starts in
runs over ~9 s, is covered by the reliability work.)
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


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_openvino_run_opens_no_internet_socket(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    trace = tmp_path / "trace.txt"
    vald = [sys.executable, "-m", "vald.cli", "run", str(DEMO / "samples" / "consolidation.png")]
    vald += ["--engines", str(DEMO), "--backend", "openvino", "--precision", "bf16", "--steps", "20"]
    vald += ["--out", str(tmp_path / "out"), "--quiet", "--no-report"]
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=socket,connect,openat", "-o", str(trace), *vald],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 and "not bf16" in done.stderr:
        pytest.skip("this CPU runs no bf16 in OpenVINO")
    assert done.returncode == 0, done.stderr
    calls = trace.read_text()
    assert "demo/manifest.json" in calls  # strace did follow the run (it opened the engine manifest)
    internet = [ln for ln in calls.splitlines() if re.search(r"AF_INET6?\b", ln)]
    assert internet == [], "network sockets: " + "; ".join(internet[:3])
    assert list((tmp_path / "home").iterdir()) == []  # no consent or client-id files written to the home folder

"""The two installs, each in a fresh venv from the package index: `vald` gets the CPU onnxruntime and nothing
else; `vald-gpu` (runtime/gpu_dist.py) gets onnxruntime-gpu alone, whose CUDA and TensorRT providers are
listed, and on this GPU-less machine `--provider cuda` ends in one vald line that says what is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
PROBE = (
    "import json, onnxruntime as o; from importlib import metadata as m; "
    "print(json.dumps({'providers': o.get_available_providers(), 'dists': sorted("
    "d.metadata['Name'].lower() for d in m.distributions() if d.metadata['Name'].lower().startswith('onnxruntime'))}))"
)


def _venv(where: Path, wheel: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return where / "bin"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "runtime"))
    try:
        from gpu_dist import build
    finally:
        sys.path.remove(str(ROOT / "runtime"))
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    (cpu,) = out.glob("vald-*.whl")
    return {"cpu": cpu, "gpu": build(out)}


def _installed(bin_dir: Path) -> dict:
    done = subprocess.run([str(bin_dir / "python"), "-c", PROBE], capture_output=True, text=True, check=True)
    check = subprocess.run([str(bin_dir / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return json.loads(done.stdout)


def test_the_cpu_install_has_the_cpu_onnxruntime_only(wheels: dict[str, Path], tmp_path: Path) -> None:
    found = _installed(_venv(tmp_path / "cpu", wheels["cpu"]))
    assert found["dists"] == ["onnxruntime"]
    assert "CPUExecutionProvider" in found["providers"]
    assert "CUDAExecutionProvider" not in found["providers"]


def test_the_gpu_install_has_onnxruntime_gpu_alone_and_fails_in_one_line(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    bin_dir = _venv(tmp_path / "gpu", wheels["gpu"])
    found = _installed(bin_dir)
    assert found["dists"] == ["onnxruntime-gpu"]
    assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} <= set(found["providers"])
    # no NVIDIA driver or CUDA 13 libraries here: the provider cannot start, and vald says so in one line
    args = [str(bin_dir / "vald"), "run", str(DEMO / "samples" / "consolidation.png"), "--engines", str(DEMO)]
    args += ["--provider", "cuda", "--out", str(tmp_path / "out"), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if "CUDAExecutionProvider" not in done.stderr and done.returncode == 0:
        pytest.skip("this machine started ONNX Runtime's CUDA provider: it has a GPU")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vald: error: onnxruntime did not start CUDAExecutionProvider for text_encoder: ")
    assert "CUDA 13" in lines[0]  # what onnxruntime 1.31.1 says it needs, kept in vald's line

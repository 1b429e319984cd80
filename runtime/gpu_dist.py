"""Build the GPU distribution of vald, ``vald-gpu``: the same code, with ``onnxruntime-gpu`` for ``onnxruntime``.

ONNX Runtime ships its CPU and GPU builds as two distributions that install the same ``onnxruntime`` package
(pip installs both when asked, the last one's files win, and uninstalling either breaks the other).  An
extra cannot take a base dependency away, so ``pip install 'vald[gpu]'`` would always end with both.  vald
follows ONNX Runtime's own scheme instead: ``vald`` (this folder's pyproject.toml) needs ``onnxruntime``;
``vald-gpu``, built by this script from the same pyproject.toml and sources, needs ``onnxruntime-gpu`` (a
CUDA 13 build from 1.31 on), and its extras name the CUDA 13 wheels.  Install one of the two, never both.

    python runtime/gpu_dist.py --out dist        # writes dist/vald_gpu-<version>-py3-none-any.whl

``--no-build-isolation`` builds with this interpreter's setuptools (for a machine without a package index).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("runtime", "export", "training", "README.md", "LICENSE")
# What differs in the GPU distribution: its name, and each CPU requirement swapped for its CUDA 13 one.
NAME = "vald-gpu"
SWAPS = {
    '"onnxruntime>=1.17"': '"onnxruntime-gpu>=1.31"',  # 1.31.1 on PyPI is built for CUDA 13 and cuDNN 9
}


def gpu_pyproject(text: str) -> str:
    """The GPU distribution's pyproject.toml from the CPU one (ValueError when a swap no longer applies)."""
    for old, new in SWAPS.items():
        if old not in text:
            raise ValueError(f"pyproject.toml no longer contains {old}; update runtime/gpu_dist.py")
        text = text.replace(old, new)
    text, named = re.subn(r'(?m)^name = "vald"$', f'name = "{NAME}"', text)
    if named != 1:
        raise ValueError('pyproject.toml has no line name = "vald"')
    text = text.replace('"vald[', f'"{NAME}[')  # extras that refer to other extras
    data = tomllib.loads(text)  # still valid TOML, and no CPU onnxruntime left anywhere
    requirements = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        requirements += extra
    if any(re.match(r"onnxruntime\b(?!-)", r) for r in requirements):
        raise ValueError("the GPU distribution would still require the CPU onnxruntime")
    return text


def build(out: Path, *, isolation: bool = True) -> Path:
    """Write the vald-gpu wheel into ``out``; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vald-gpu-") as tmp:
        project = Path(tmp) / "vald-gpu"
        project.mkdir()
        for name in SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif source.is_file():
                shutil.copy2(source, project / name)
        text = gpu_pyproject((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        (project / "pyproject.toml").write_text(text, encoding="utf-8")
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)]
        if not isolation:
            command.insert(4, "--no-build-isolation")
        subprocess.run(command, check=True)
    version = tomllib.loads(text)["project"]["version"]
    wheel = out / f"vald_gpu-{version}-py3-none-any.whl"
    if not wheel.is_file():
        raise FileNotFoundError(f"pip wrote no {wheel.name} into {out}")
    return wheel


def main() -> int:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--no-build-isolation", action="store_true")
    args = parser.parse_args()
    print(build(args.out, isolation=not args.no_build_isolation))
    return 0


if __name__ == "__main__":
    sys.exit(main())

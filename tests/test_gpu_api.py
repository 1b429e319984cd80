"""The GPU code against the real APIs, without a GPU: every TensorRT name vald uses exists in tensorrt-stubs
(the real bindings' generated types, also what mypy checks the calls with), every CUDA runtime call exists in
the installed cuda-python, and the lists below cannot go stale (the sources are scanned for names not in them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vald.errors import BackendUnavailableError

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "build" / "typing" / "tensorrt_bindings" / "tensorrt.pyi"  # `make setup` puts them there
SOURCES = [
    ROOT / "runtime" / "vald" / "sessions" / "tensorrt.py",
    ROOT / "runtime" / "vald" / "sessions" / "tensorrt_identity.py",
    ROOT / "export" / "vald_export" / "tensorrt_build.py",
]
# Module-level names used as trt.X (and trt.X.Y), and the methods and properties called on TensorRT objects.
TRT_NAMES = {
    "Builder",
    "Dims",
    "ICudaEngine",
    "Logger",
    "Logger.ERROR",
    "Logger.WARNING",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "OnnxParser",
    "Runtime",
    "TensorIOMode.INPUT",
}
TRT_MEMBERS = {
    "Runtime": {"deserialize_cuda_engine"},
    "ICudaEngine": {
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_dtype",
        "get_tensor_profile_shape",
        "num_optimization_profiles",
        "create_execution_context",
    },
    "IExecutionContext": {
        "set_optimization_profile_async",
        "set_input_shape",
        "get_tensor_shape",
        "set_tensor_address",
        "execute_async_v3",
    },
    "Builder": {"create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"},
    "OnnxParser": {"parse_from_file", "get_error", "num_errors"},
    "IBuilderConfig": {"set_timing_cache", "create_timing_cache", "add_optimization_profile", "get_timing_cache"},
    "IOptimizationProfile": {"set_shape"},
    "ITimingCache": {"serialize"},
}
# Module-level functions and values outside the generated tensorrt_bindings.tensorrt module.
TRT_PACKAGE_NAMES = {"nptype", "__version__"}


def _stub_tree() -> ast.Module:
    if not STUBS.is_file():
        pytest.fail(f"tensorrt-stubs are not at {STUBS.relative_to(ROOT)}: run `make setup` (make lint installs them)")
    return ast.parse(STUBS.read_text(encoding="utf-8"))


def _classes(tree: ast.Module) -> dict[str, set[str]]:
    """Class name -> its methods, properties and class attributes, as the stubs declare them."""
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            found[node.name] = members
    return found


def _trt_chains(path: Path) -> set[str]:
    """``X`` and ``X.Y`` for every ``trt.X`` / ``trt.X.Y`` in a source file."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
            chains.add(node.attr)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "trt"
        ):
            chains.add(f"{node.value.attr}.{node.attr}")
    return chains


def test_every_tensorrt_name_vald_uses_is_listed_and_in_the_stubs() -> None:
    used = set().union(*(_trt_chains(p) for p in SOURCES))
    prefixes = {n.partition(".")[0] for n in TRT_NAMES}  # trt.Logger.ERROR also reads trt.Logger
    assert used - TRT_NAMES - TRT_PACKAGE_NAMES - prefixes == set(), "TensorRT names used but not listed here"
    classes = _classes(_stub_tree())
    for name in TRT_NAMES:
        owner, _, member = name.partition(".")
        assert owner in classes, f"tensorrt-stubs have no {owner}"
        assert not member or member in classes[owner], f"tensorrt-stubs have no {name}"
    for owner, members in TRT_MEMBERS.items():
        missing = members - classes.get(owner, set())
        assert not missing, f"tensorrt-stubs' {owner} lacks {sorted(missing)}"
    package = (STUBS.parent / "__init__.pyi").read_text(encoding="utf-8")
    assert "nptype" in package and "__version__" in package


# The variables (and self attributes) that hold TensorRT objects in vald's sources, and their classes.
RECEIVERS = {
    "engine": "ICudaEngine",
    "_engine": "ICudaEngine",
    "_context": "IExecutionContext",
    "runtime": "Runtime",
    "builder": "Builder",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "optimisation": "IOptimizationProfile",
}


def test_every_member_used_on_tensorrt_objects_is_listed() -> None:
    used: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            name = holder.id if isinstance(holder, ast.Name) else None
            if isinstance(holder, ast.Attribute) and isinstance(holder.value, ast.Name) and holder.value.id == "self":
                name = holder.attr
            if name in RECEIVERS:
                used.setdefault(RECEIVERS[name], set()).add(node.attr)
    assert used, "no TensorRT calls found: the receiver names above no longer match the sources"
    for owner, members in used.items():
        assert members <= TRT_MEMBERS.get(owner, set()), f"{owner}: {sorted(members - TRT_MEMBERS.get(owner, set()))}"


def test_every_cuda_runtime_call_exists_in_cuda_python() -> None:
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is in the dev extra")
    from cuda.bindings import runtime

    from vald.sessions.cuda import CudaRuntime

    declared = {n for n in vars(CudaRuntime) if n.startswith("cuda")} | set(CudaRuntime.__annotations__)
    sources = (ROOT / "runtime" / "vald" / "sessions").glob("*.py")
    used = {m for p in sources for m in re.findall(r"\b(?:rt|_rt|cudart\(\))\.(cuda\w+)", p.read_text())}
    assert used and used <= declared, f"CUDA calls not declared in CudaRuntime: {sorted(used - declared)}"
    assert {n for n in declared if not hasattr(runtime, n)} == set()
    assert hasattr(runtime.cudaStreamCaptureMode, "cudaStreamCaptureModeThreadLocal")


def test_a_cuda_call_without_a_driver_is_one_clear_error() -> None:
    """On this GPU-less machine the real bindings answer with an error code; vald turns it into its error."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is in the dev extra")
    from vald.sessions.cuda import check, cudart

    with pytest.raises(BackendUnavailableError, match=r"CUDA call cudaMalloc failed: .*cudaError"):
        check(cudart().cudaMalloc(16), "cudaMalloc")

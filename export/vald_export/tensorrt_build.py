"""``vald build``: exported ONNX graphs -> native TensorRT engines, with their identity in the manifest.

Strongly typed networks (TensorRT 10.12+ with the STRONGLY_TYPED flag; always so in 11.x, which removed the
FP16 builder flag): a component's precision is its graph's, so FP16 engines are built from the FP16 ONNX
graphs ``vald export --precision fp16`` writes (Resize kept in FP32), and FP32 engines from the FP32 ones.
For FP16 each component is then run on fixed inputs against ONNX Runtime on its FP32 graph; NaN/Inf or an
error past the tolerance rebuilds it from the FP32 graph, and the manifest says so and why
(:mod:`vald_export.tensorrt_plan`).  Profiles come from a dry run of the chosen settings; a timing cache is
kept beside the engines.

Written against TensorRT's documented Python API (10.12+ and 11.x) and cuda-python; **not run** on this
project's machines, which have no GPU and cannot install TensorRT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vald.config import Precision, RunConfig
from vald.errors import ExportError
from vald.manifest import MANIFEST_NAME, Manifest, sha256_file
from vald.outputs import write_atomic
from vald.schedules import NoiseSchedule
from vald.sessions.tensorrt import require_tensorrt
from vald.spec import Component
from vald.strictjson import encode
from vald.tokenizer import PromptTokenizer
from vald_export.tensorrt_plan import Fp16Decision, Profile, ProfileKind, fp16_decision, profiles, record_shapes

TENSORRT_DIR = "tensorrt"
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class BuildRequest:
    """What to build: precision, profile layout, resolution, and the run settings whose shapes it must cover."""

    precision: Precision = Precision.FP16
    profile: ProfileKind = ProfileKind.STATIC
    size: int | None = None  # pixels; None: the model's own
    run: RunConfig = field(default_factory=RunConfig)

    def set_name(self, size: int) -> str:
        """The engine set's name, e.g. 'fp16-static-512-inversion'."""
        return f"{self.precision.value}-{self.profile.value}-{size}-{self.run.mode.value}"

    def command(self, engines: Path, size: int) -> str:
        """The command that builds this set (quoted in mismatch errors)."""
        return (
            f"vald build {engines} --precision {self.precision.value} --profile {self.profile.value} "
            f"--size {size} --mode {self.run.mode.value}"
        )


NO_TENSORRT = (
    "`vald build` needs TensorRT (10.12+) and cuda-python: pip install 'vald[tensorrt]' on a machine with an "
    "NVIDIA GPU; the TensorRT wheels come from NVIDIA's own index (pypi.nvidia.com)"
)


def plan_profiles(manifest: Manifest, request: BuildRequest) -> dict[Component, list[Profile]]:
    """The optimisation profiles each component's engine needs for ``request`` (no TensorRT involved)."""
    info = manifest.model
    size = request.size or info.image_size
    tokenizer = PromptTokenizer(manifest.root / "tokenizer", max_length=info.max_length, pad_id=info.pad_id)
    schedule = NoiseSchedule.for_pipeline(manifest.scheduler_config)
    recorded = record_shapes(info, tokenizer, schedule, request.run, size)
    return {component: profiles(shapes, request.profile) for component, shapes in recorded.items()}


def _build_one(onnx_path: Path, component_profiles: list[Profile], cache: bytes) -> tuple[bytes, bytes]:
    """One strongly typed engine from ``onnx_path``; returns the serialized engine and the updated timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_timing_cache(config.create_timing_cache(cache), False)
    for profile in component_profiles:
        optimisation = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            optimisation.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _fixed_inputs(profile: Profile, names_dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Deterministic inputs at a profile's opt shapes (token ids small and valid, floats in [-1, 1))."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for name, (_, opt, _) in profile.shapes.items():
        if names_dtypes[name] == "int64":
            feeds[name] = rng.integers(0, 100, size=opt, dtype=np.int64)
        elif name == "timestep":
            feeds[name] = np.full(opt, 500.0, dtype=np.float32)
        else:
            feeds[name] = rng.uniform(-1, 1, size=opt).astype(np.float32)
    return feeds


def build(engines: Path, request: BuildRequest, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build every component's engine for ``request`` into ENGINES/tensorrt/ and record the set in the manifest."""
    require_tensorrt(NO_TENSORRT)
    from vald.sessions.tensorrt import TensorRTSession, run_onnx_cpu
    from vald.sessions.tensorrt_identity import this_machine

    manifest = Manifest.load(engines)
    size = request.size or manifest.model.image_size
    plans = plan_profiles(manifest, request)
    identity = this_machine()
    folder = engines / TENSORRT_DIR
    folder.mkdir(exist_ok=True)
    cache_path = folder / TIMING_CACHE
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    name = request.set_name(size)
    entries: dict[str, Any] = {}
    for component, component_profiles in plans.items():
        spec = manifest.specs[component]
        dtypes = {t.name: t.dtype for t in spec.inputs}
        graph = manifest.graph_path(component, request.precision)
        started = time.perf_counter()
        plan, cache = _build_one(graph, component_profiles, cache)
        decision: Fp16Decision | None = None
        if request.precision is Precision.FP16:
            feeds = _fixed_inputs(component_profiles[-1], dtypes)
            fp32_graph = manifest.graph_path(component, Precision.FP32)
            reference = run_onnx_cpu(fp32_graph, feeds)
            output = spec.outputs[0].name
            fp16 = TensorRTSession.from_bytes(plan, spec).run(feeds)[output]
            decision = fp16_decision(component, fp16, reference[output])
            if decision.precision == "fp32":
                log(f"{component.value}: {decision.reason}")
                graph = fp32_graph
                plan, cache = _build_one(graph, component_profiles, cache)
        target = folder / f"{component.value}.{name}.plan"
        write_atomic(target, plan)
        entries[component.value] = {
            "file": f"{TENSORRT_DIR}/{target.name}",
            "sha256": sha256_file(target),
            "onnx": str(graph.relative_to(engines)),
            "onnx_sha256": sha256_file(graph),
            "precision": decision.precision if decision else request.precision.value,
            "precision_reason": decision.reason if decision else "requested",
            "fp16_error": decision.error if decision else None,
            "profiles": [p.to_json() for p in component_profiles],
            "build_s": round(time.perf_counter() - started, 3),
        }
        entry = entries[component.value]
        log(f"{component.value}: {entry['precision']} engine in {entry['build_s']} s")
    write_atomic(cache_path, cache)
    engine_set = {
        "identity": identity.to_json(),
        "request": {
            "precision": request.precision.value,
            "profile": request.profile.value,
            "size": size,
            "mode": request.run.mode.value,
        },
        "build_flags": ["STRONGLY_TYPED"],
        "rebuild": request.command(engines, size),
        "components": entries,
    }
    data = dict(manifest.data)
    data["tensorrt"] = {**data.get("tensorrt", {}), name: engine_set}
    write_atomic(manifest.root / MANIFEST_NAME, encode(data, indent=2))
    return engine_set

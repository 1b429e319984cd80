"""The TensorRT path's decisions that need no GPU: profiles from a dry run, FP16 or FP32, engine identity."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vald.config import Mode, RunConfig
from vald.errors import EngineMismatchError
from vald.manifest import Manifest
from vald.sessions.tensorrt_identity import EngineIdentity, check_identity, differences
from vald.spec import Component
from vald_export.tensorrt_build import BuildRequest, plan_profiles
from vald_export.tensorrt_plan import ProfileKind, fp16_decision

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _unet_batches(request: BuildRequest) -> list[int]:
    plans = plan_profiles(Manifest.load(DEMO), request)
    return [p.shapes["sample"][1][0] for p in plans[Component.UNET]]


@pytest.mark.parametrize(
    ("run", "batches"),
    [
        # inversion: the inversion pass, then counterfactual + reconstruction batched (the counterfactual's
        # unconditional row only at t >= guidance_min_t)
        (RunConfig(), [1, 2, 3]),
        (RunConfig(guidance_min_t=0), [1, 3]),
        (RunConfig(mode=Mode.IMG2IMG, guidance_min_t=0), [2]),  # guided: unconditional + conditional
        (RunConfig(mode=Mode.IMG2IMG), [1, 2]),  # guided, then the prompt alone below the interval
        (RunConfig(mode=Mode.IMG2IMG, guidance=1.0), [1]),
        (RunConfig(mode=Mode.PAIRED, finding_prompt="consolidation"), [2, 4]),
        (RunConfig(unet_batch=2), [1, 2]),  # the batch-3 steps as a batch-2 and a batch-1 call
        (RunConfig(mode=Mode.PAIRED, finding_prompt="consolidation", unet_batch=1), [1]),
    ],
)
def test_static_profiles_cover_exactly_the_shapes_a_run_uses(run: RunConfig, batches: list[int]) -> None:
    assert _unet_batches(BuildRequest(run=run)) == batches
    plans = plan_profiles(Manifest.load(DEMO), BuildRequest(run=run, size=512))
    latent = 512 // Manifest.load(DEMO).model.vae_scale_factor
    for profile in plans[Component.UNET]:
        low, opt, high = profile.shapes["sample"]
        assert low == opt == high and opt[2:] == (latent, latent)
    assert plans[Component.VAE_ENCODER][0].shapes["images"][1][2:] == (512, 512)


def test_a_dynamic_profile_spans_the_recorded_shapes() -> None:
    plans = plan_profiles(Manifest.load(DEMO), BuildRequest(profile=ProfileKind.DYNAMIC))
    (unet,) = plans[Component.UNET]
    low, opt, high = unet.shapes["sample"]
    assert (low[0], opt[0], high[0]) == (1, 3, 3)


def test_fp16_is_kept_only_when_finite_and_within_tolerance() -> None:
    reference = np.linspace(-2, 2, 1000, dtype=np.float32)
    close = fp16_decision(Component.UNET, reference.astype(np.float16).astype(np.float32), reference)
    assert close.precision == "fp16" and close.error < 1e-3
    overflow = reference.copy()
    overflow[3] = np.inf
    decision = fp16_decision(Component.VAE_ENCODER, overflow, reference)
    assert decision.precision == "fp32" and "1 NaN/Inf" in decision.reason
    far = fp16_decision(Component.VAE_DECODER, reference * 1.1, reference)
    assert far.precision == "fp32" and "exceeds" in far.reason and far.error == pytest.approx(0.1, rel=1e-3)


def test_an_engine_from_another_machine_is_refused_naming_every_difference_and_the_rebuild() -> None:
    built = EngineIdentity("10.7.0", "NVIDIA A100-SXM4-80GB", "8.0")
    here = EngineIdentity("11.4.0", "NVIDIA H200", "9.0")
    rebuild = BuildRequest(size=512).command(Path("engines/sd15"), 512)
    with pytest.raises(EngineMismatchError) as caught:
        check_identity(built, here, rebuild)
    text = str(caught.value)
    for part in ("TensorRT version 10.7.0 != 11.4.0", "compute capability 8.0 != 9.0", "GPU NVIDIA A100-SXM4-80GB"):
        assert part in text
    assert text.endswith("vald build engines/sd15 --precision fp16 --profile static --size 512 --mode inversion")
    assert "\n" not in text
    check_identity(here, here, rebuild)  # the same machine: nothing to say
    assert differences(built, EngineIdentity("10.7.0", "NVIDIA A100-SXM4-40GB", "8.0")) == [
        "GPU NVIDIA A100-SXM4-80GB != NVIDIA A100-SXM4-40GB"
    ]
    with pytest.raises(EngineMismatchError, match="lacks the build identity"):
        EngineIdentity.from_json({"tensorrt_version": "10.7.0"})


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here: the build itself runs instead")
def test_vald_build_without_tensorrt_says_what_to_install() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vald.cli", "build", str(DEMO)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("vald: error: `vald build` needs TensorRT")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TENSORRT, reason="TensorRT is not installed (NVIDIA's index; no GPU on this machine)")
def test_built_engines_run_and_match_onnx_runtime(engines: Path, tmp_path: Path) -> None:  # pragma: no cover
    import shutil

    from vald.config import Precision
    from vald.sessions.tensorrt import TensorRTSession, run_onnx_cpu
    from vald_export.tensorrt_build import build

    folder = tmp_path / "engines"
    shutil.copytree(engines, folder)
    engine_set = build(folder, BuildRequest(precision=Precision.FP16, run=RunConfig(mode=Mode.IMG2IMG)))
    manifest = Manifest.load(folder)
    for component, entry in engine_set["components"].items():
        spec = manifest.specs[Component(component)]
        session = TensorRTSession.from_bytes((folder / entry["file"]).read_bytes(), spec)
        opt = {name: triple[1] for name, triple in entry["profiles"][-1].items()}  # a shape the engine holds
        feeds = {t.name: np.zeros(opt[t.name], dtype=t.dtype) for t in spec.inputs}
        expected = run_onnx_cpu(manifest.graph_path(Component(component), Precision.FP32), feeds)
        got = session.run(feeds)
        name = spec.outputs[0].name
        assert np.max(np.abs(got[name] - expected[name])) <= 5e-2 * max(1.0, float(np.max(np.abs(expected[name]))))


def _engine_set(profile: str, precision: str = "fp16", mode: str = "inversion", size: int = 128) -> dict[str, object]:
    """A manifest entry as `vald build` writes it (plan files hold arbitrary bytes: nothing deserialises them)."""
    return {
        "identity": {"tensorrt_version": "10.7.0", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"},
        "request": {"precision": precision, "profile": profile, "size": size, "mode": mode},
        "build_flags": ["STRONGLY_TYPED"],
        "rebuild": f"vald build X --precision {precision} --profile {profile} --size {size} --mode {mode}",
        "components": {
            c.value: {
                "file": f"tensorrt/{c.value}.{profile}.plan",
                "sha256": "",
                "precision": "fp32" if c is Component.VAE_ENCODER else precision,
            }
            for c in Component
        },
    }


def _with_engine_sets(tmp_path: Path, sets: dict[str, dict[str, object]]) -> Path:
    import hashlib
    import json
    import shutil

    folder = tmp_path / "engines"
    shutil.copytree(DEMO, folder, ignore=shutil.ignore_patterns("samples", "training", "model"))
    (folder / "tensorrt").mkdir()
    for entry in sets.values():
        for component in entry["components"].values():  # type: ignore[attr-defined]
            data = f"plan of {component['file']}".encode()
            (folder / component["file"]).write_bytes(data)
            component["sha256"] = hashlib.sha256(data).hexdigest()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "tensorrt": sets}))
    return folder


TRT_RUN = RunConfig(backend="tensorrt", provider="cuda", precision="fp16")  # type: ignore[arg-type]


def test_backend_tensorrt_runs_on_cuda_in_fp16_or_fp32_only() -> None:
    from vald.errors import ConfigError

    with pytest.raises(ConfigError, match="backend=tensorrt runs on provider=cuda, not cpu: add --provider cuda"):
        RunConfig(backend="tensorrt", precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision=bf16 is not available on backend=tensorrt; it runs: fp16, fp32"):
        RunConfig(backend="tensorrt", provider="cuda", precision="bf16")  # type: ignore[arg-type]


def test_a_run_picks_its_engine_set_static_first_and_verifies_and_records_the_plans(tmp_path: Path) -> None:
    from vald.sessions import run_files
    from vald.sessions.tensorrt_set import select_engine_set

    folder = _with_engine_sets(
        tmp_path,
        {
            "fp16-dynamic-128-inversion": _engine_set("dynamic"),
            "fp16-static-128-inversion": _engine_set("static"),
            "fp16-static-128-img2img": _engine_set("img2img-static", mode="img2img"),
            "fp32-static-128-inversion": _engine_set("fp32-static", precision="fp32"),
        },
    )
    manifest = Manifest.load(folder)
    chosen = select_engine_set(manifest, TRT_RUN)
    assert chosen.name == "fp16-static-128-inversion"
    assert chosen.plans[Component.UNET].file == "tensorrt/unet.static.plan"
    assert chosen.plans[Component.VAE_ENCODER].precision == "fp32"  # kept in FP32 by the build-time check
    files = run_files(manifest, TRT_RUN)
    assert set(chosen.hashes()) <= set(files) and not any(f.endswith(".onnx") for f in files)
    assert "tokenizer/tokenizer.json" in files
    manifest.verify_files(files, rehash=True)
    (folder / "tensorrt" / "unet.static.plan").write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match=r"engine file tensorrt/unet.static.plan does not match"):
        manifest.verify_files(files, rehash=True)


def test_a_missing_engine_set_names_those_present_and_the_build_command(tmp_path: Path) -> None:
    from vald.sessions import open_sessions

    folder = _with_engine_sets(tmp_path, {"fp16-static-512-img2img": _engine_set("static", mode="img2img", size=512)})
    with pytest.raises(EngineMismatchError) as caught:
        open_sessions(Manifest.load(folder), TRT_RUN)
    assert str(caught.value) == (
        f"{folder} has no TensorRT engines for precision fp16, mode inversion at 128 px (it has: "
        f"fp16-static-512-img2img); build them: vald build {folder} --precision fp16 --profile static "
        "--size 128 --mode inversion"
    )
    broken = _engine_set("static")
    del broken["identity"]
    folder2 = _with_engine_sets(tmp_path / "b", {"fp16-static-128-inversion": broken})
    with pytest.raises(EngineMismatchError, match="'fp16-static-128-inversion' is malformed; rebuild it"):
        open_sessions(Manifest.load(folder2), TRT_RUN)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_vald_run_on_tensorrt_without_it_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    folder = _with_engine_sets(tmp_path, {"fp16-static-128-inversion": _engine_set("static")})
    gpu = ["--backend", "tensorrt", "--provider", "cuda", "--precision", "fp16", "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "vald.cli", "run", str(DEMO / "samples" / "nodule.png"), "--engines", str(folder), *gpu],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("vald: error: the TensorRT backend needs TensorRT and cuda-python"), lines
    assert not (tmp_path / "out" / "nodule").exists()


def test_io_binding_keeps_one_set_of_buffers_per_shape_and_matches_plain_runs() -> None:
    """The CUDA provider's IO-binding runner, exercised on the CPU provider (the same onnxruntime API)."""
    from vald.config import Precision
    from vald.sessions.ort import BoundRunner, OrtSession

    manifest = Manifest.load(DEMO)
    spec = manifest.specs[Component.UNET]
    path = manifest.graph_path(Component.UNET, Precision.FP32)
    plain = OrtSession(path, spec, ["CPUExecutionProvider"], threads=1)
    bound = OrtSession(path, spec, ["CPUExecutionProvider"], threads=1, bind="cpu")
    assert bound.info.device == "CPUExecutionProvider+io-binding"
    runner = bound._runner
    assert isinstance(runner, BoundRunner)
    rng = np.random.default_rng(0)
    model = manifest.model
    for batch in (1, 3, 1, 3, 1):
        feeds = {
            "sample": rng.normal(size=(batch, model.latent_channels, model.latent_size, model.latent_size)).astype(
                np.float32
            ),
            "timestep": np.array([rng.integers(1000)] * batch, dtype=np.int64),
            "encoder_hidden_states": rng.normal(size=(batch, model.max_length, model.hidden_size)).astype(np.float32),
        }
        feeds = {t.name: feeds[t.name].astype(t.dtype) for t in spec.inputs}
        want = plain.run(feeds)
        got = bound.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert runner.shapes == 2  # buffers made for batch 1 and 3 once, then reused


def test_cuda_graph_is_a_setting_of_the_cuda_backends_only() -> None:
    from vald.errors import ConfigError

    assert RunConfig(provider="cuda", cuda_graph=True).cuda_graph  # type: ignore[arg-type]
    assert RunConfig(backend="tensorrt", precision="fp16", provider="cuda", cuda_graph=True).cuda_graph  # type: ignore[arg-type]
    for bad in ({}, {"backend": "torch", "provider": "cuda"}):
        with pytest.raises(ConfigError, match="cuda_graph needs provider=cuda and backend onnxruntime or tensorrt"):
            RunConfig(cuda_graph=True, **bad)  # type: ignore[arg-type]

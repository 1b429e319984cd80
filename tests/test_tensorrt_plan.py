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
        (RunConfig(), [1, 3]),  # inversion: the inversion pass, then counterfactual + reconstruction batched
        (RunConfig(mode=Mode.IMG2IMG), [2]),  # guided: unconditional + conditional
        (RunConfig(mode=Mode.IMG2IMG, guidance=1.0), [1]),
        (RunConfig(mode=Mode.PAIRED, finding_prompt="consolidation"), [4]),
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

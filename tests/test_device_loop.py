"""The sampling loop on device arrays (``--loop``), and the native TensorRT session's buffers and CUDA graphs.

On these GPU-less machines the device arrays are torch CPU tensors: the same code as on a GPU (IO binding by
address, no numpy between the steps) with ``device='cpu'``.  The CUDA cases are marked ``gpu``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vald.app import open_engines
from vald.attribution import attribute
from vald.config import INDUCE_DEFAULTS, RunConfig
from vald.errors import BackendUnavailableError, ConfigError
from vald.induce import induce
from vald.spec import Component, specs

DEMO = Path(__file__).resolve().parents[1] / "engines" / "demo"
torch = pytest.importorskip("torch")


def _image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    image = (0.4 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    mask = (((xx - 0.6) ** 2 + (yy - 0.5) ** 2) < 0.02).astype(np.float32)
    return image, mask


def _no_host_unet(engines: Any) -> None:
    """Make any host call of the UNet fail: the device loop must not go through numpy."""

    def refuse(_feeds: Any) -> Any:
        raise AssertionError("the UNet was run on host arrays")

    engines.sessions[Component.UNET].run = refuse


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_loop_on_device_arrays_matches_the_host_loop(backend: str) -> None:
    image, mask = _image_and_mask()
    host_cfg = RunConfig(backend=backend, steps=12, guidance_min_t=0)  # type: ignore[arg-type]
    device_cfg = host_cfg.replace(loop="torch")
    host, _ = open_engines(DEMO, host_cfg)
    device, provenance = open_engines(DEMO, device_cfg)
    _no_host_unet(device)
    assert provenance["loop"].startswith("device (torch") and provenance["loop"].endswith("cpu)")
    for settings, keep in (({}, None), ({"mode": "img2img"}, mask), ({"mode": "img2img", "eta": 0.5}, None)):
        want = attribute(host, image, host_cfg.replace(**settings), keep=keep)
        got = attribute(device, image, device_cfg.replace(**settings), keep=keep)
        # float32 state on the device against float64 on the host: rounding only
        assert np.max(np.abs(got.counterfactual - want.counterfactual)) < 1e-4, settings
        assert np.max(np.abs(got.signed_map - want.signed_map)) < 1e-4, settings
    induced = induce(
        device, image, mask, INDUCE_DEFAULTS.replace(prompt="nodule", steps=12, loop="torch", backend=backend)
    )
    reference = induce(host, image, mask, INDUCE_DEFAULTS.replace(prompt="nodule", steps=12, backend=backend))
    assert np.max(np.abs(induced.image - reference.image)) < 1e-4


def test_onnxruntime_binds_one_set_of_device_buffers_per_shape() -> None:
    from vald.sessions.device import TorchDeviceOps

    engines, _ = open_engines(DEMO, RunConfig(loop="torch"))  # type: ignore[arg-type]
    unet, ops = engines.sessions[Component.UNET], TorchDeviceOps("cpu")
    rng = np.random.default_rng(0)
    for batch in (2, 3, 2, 3):
        feeds = {
            "sample": rng.standard_normal((batch, 16, 16, 16)).astype(np.float32),
            "timestep": np.full((batch,), 500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 32, 64)).astype(np.float32),
        }
        got = unet.run_device({k: ops.state(v) for k, v in feeds.items()}, ops)["out_sample"]  # type: ignore[attr-defined]
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), unet.run(feeds)["out_sample"], atol=1e-6)
    assert unet._device_runner.shapes == 2  # type: ignore[attr-defined]


def test_loop_settings_that_cannot_work_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="loop=cupy holds the latents on the GPU: it needs provider=cuda"):
        RunConfig(loop="cupy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="loop=torch needs a backend that runs on device arrays, not openvino"):
        RunConfig(loop="torch", backend="openvino")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="loop='gpu' is not one of: host, cupy, torch"):
        RunConfig(loop="gpu")  # type: ignore[arg-type]


def test_loop_cupy_without_cupy_says_what_to_install() -> None:
    try:
        import cupy  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        from vald.sessions.device import device_ops

        with pytest.raises(BackendUnavailableError, match="pip install cupy-cuda13x"):
            device_ops("cupy")
    else:  # pragma: no cover - a machine with CuPy
        pytest.skip("CuPy is installed here")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_torch_reference_on_cuda_keeps_the_latents_on_the_gpu() -> None:  # pragma: no cover
    image, _ = _image_and_mask()
    cfg = RunConfig(backend="torch", provider="cuda", steps=20)  # type: ignore[arg-type]
    host, _ = open_engines(DEMO, cfg)
    device, provenance = open_engines(DEMO, cfg.replace(loop="torch"))
    _no_host_unet(device)
    assert "cuda" in provenance["loop"]
    want = attribute(host, image, cfg)
    got = attribute(device, image, cfg.replace(loop="torch"))
    assert np.max(np.abs(got.counterfactual - want.counterfactual)) < 1e-3


# --- native TensorRT: buffers per shape and CUDA-graph capture, on a recording stand-in for TensorRT and the
# CUDA runtime.  What this checks is vald's own control flow (which calls, in which order); whether TensorRT and
# CUDA accept those calls is only shown on a GPU (test_tensorrt_plan.py's gpu tests).


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.next_pointer = 0x1000


class _Context:
    def __init__(self, log: _Recorder) -> None:
        self.log, self.shapes = log, {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["sample"]  # the UNet's output has the sample's shape

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.log.events.append(f"address {name}")
        return True

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.log.events.append("execute")
        return True


class _Engine:
    names = ("sample", "timestep", "encoder_hidden_states", "out_sample")

    def __init__(self, log: _Recorder) -> None:
        self.log, self.num_io_tensors, self.num_optimization_profiles = log, 4, 1

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "out" if name == "out_sample" else "in"

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple[tuple[int, ...], ...]:
        rank = {"sample": 4, "timestep": 1, "encoder_hidden_states": 3}[name]
        return (1,) * rank, (2,) * rank, (64,) * rank

    def create_execution_context(self) -> _Context:
        return _Context(self.log)


def _cudart(log: _Recorder) -> Any:
    def ok(event: str | None = None, value: Any = None) -> Any:
        def call(*_args: Any) -> Any:
            if event:
                log.events.append(event)
            return (0,) if value is None else (0, value() if callable(value) else value)

        return call

    def malloc(_nbytes: int) -> tuple[int, int]:
        log.next_pointer += 0x1000
        return 0, log.next_pointer

    return SimpleNamespace(
        cudaStreamCreate=ok(value=7),
        cudaMalloc=malloc,
        cudaFree=ok(),
        cudaMemcpyAsync=ok(),
        cudaStreamSynchronize=ok(),
        cudaStreamCaptureMode=SimpleNamespace(cudaStreamCaptureModeThreadLocal=1),
        cudaStreamBeginCapture=ok("begin capture"),
        cudaStreamEndCapture=ok("end capture", "graph"),
        cudaGraphInstantiate=ok("instantiate", "exec"),
        cudaGraphDestroy=ok(),
        cudaGraphExecDestroy=ok(),
        cudaGraphLaunch=ok("launch"),
    )


@pytest.fixture
def recorded_tensorrt(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    import vald.sessions.tensorrt as trt_module

    log = _Recorder()
    fake_trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), nptype=lambda dtype: dtype, Runtime=object)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)  # the module vald imports, as recorded calls
    monkeypatch.setattr(trt_module, "cudart", lambda: _cudart(log))
    return log


def _unet_feeds(batch: int) -> dict[str, np.ndarray]:
    return {
        "sample": np.zeros((batch, 16, 16, 16), np.float32),
        "timestep": np.zeros((batch,), np.float32),
        "encoder_hidden_states": np.zeros((batch, 32, 64), np.float32),
    }


def test_tensorrt_captures_one_cuda_graph_per_shape_and_launches_it(recorded_tensorrt: _Recorder) -> None:
    from vald.sessions.tensorrt import TensorRTSession

    spec = specs(image_channels=1, latent_channels=16, hidden_size=64)[Component.UNET]
    session = TensorRTSession(_Engine(recorded_tensorrt), spec, cuda_graph=True)
    events = recorded_tensorrt.events

    def run(batch: int) -> list[str]:
        events.clear()
        session.run(_unet_feeds(batch))
        return [e for e in events if not e.startswith("address")]

    assert run(2) == ["execute"]  # first run of a shape: plain (TensorRT's lazy set-up happens here)
    assert run(2) == ["begin capture", "execute", "end capture", "instantiate", "launch"]
    assert run(2) == ["launch"] and not any(e.startswith("address") for e in events)  # addresses unchanged
    assert session.graphs == 1
    assert run(3) == ["execute"] and sum(e.startswith("address") for e in events) == 4  # its own buffers
    assert run(2) == ["launch"]  # back to the first shape: its graph, its buffers
    assert run(3)[0] == "begin capture" and session.graphs == 2


def test_tensorrt_without_cuda_graphs_never_captures(recorded_tensorrt: _Recorder) -> None:
    from vald.sessions.tensorrt import TensorRTSession

    spec = specs(image_channels=1, latent_channels=16, hidden_size=64)[Component.UNET]
    session = TensorRTSession(_Engine(recorded_tensorrt), spec)
    for _ in range(3):
        session.run(_unet_feeds(2))
    assert recorded_tensorrt.events.count("execute") == 3 and "begin capture" not in recorded_tensorrt.events
    assert session.graphs == 0

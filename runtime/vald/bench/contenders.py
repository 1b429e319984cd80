"""What ``vald bench`` compares: each backend and precision of vald, the PyTorch reference, diffusers' pipeline."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vald.config import Backend, Loop, Mode, Precision, RunConfig

REFERENCE = "torch fp32"  # accuracy is measured against this contender, from the same run


@dataclass(frozen=True)
class Contender:
    """One way to make the counterfactual: ``kind`` vald (our loop on a backend) or diffusers (their pipeline)."""

    name: str
    kind: str
    backend: Backend
    precision: Precision
    provider: str = "cpu"
    loop: Loop = Loop.HOST  # where the sampler's arithmetic runs (``--loop``)
    cuda_graph: bool = False
    unet_batch: int = 0  # the run setting: most latents per UNet call (0 = a step's rows in one call)

    def unavailable(self, cfg: RunConfig, *, cuda: bool) -> str | None:
        """Why this contender cannot run here (None: it can)."""
        needs = {Backend.OPENVINO: "openvino", Backend.TORCH: "torch", Backend.TENSORRT: "tensorrt"}.get(self.backend)
        if needs and importlib.util.find_spec(needs) is None:
            return f"{needs} is not installed (pip install 'vald[{needs}]')"
        if self.backend is Backend.ONNXRUNTIME and self.provider != "cpu":
            ep = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[self.provider]
            import onnxruntime as ort

            if ep not in ort.get_available_providers():
                return f"this onnxruntime has no {ep} (install onnxruntime-gpu in place of onnxruntime)"
        if self.kind == "diffusers":
            if importlib.util.find_spec("diffusers") is None:
                return "diffusers is not installed (pip install 'vald[torch]')"
            if cfg.mode is not Mode.IMG2IMG:
                return f"diffusers' img2img pipeline has no {cfg.mode.value} mode (run the bench with --mode img2img)"
            if cfg.guidance_min_t:
                return "diffusers' pipeline guides every step (run the bench with --guidance-min-t 0)"
        if self.precision is Precision.INT8:
            from vald.errors import BackendUnavailableError
            from vald.sessions.openvino import check_int8_cpu

            try:
                check_int8_cpu()
            except BackendUnavailableError:
                return "this CPU has no int8 dot-product units (VNNI or AMX)"
        if self.provider == "cuda" and not cuda:
            return "no CUDA device"
        if self.loop is Loop.CUPY and importlib.util.find_spec("cupy") is None:
            return "CuPy is not installed (pip install cupy-cuda13x)"
        return None


CONTENDERS = (
    Contender("vald onnxruntime fp32", "vald", Backend.ONNXRUNTIME, Precision.FP32),
    Contender("vald onnxruntime fp16", "vald", Backend.ONNXRUNTIME, Precision.FP16),
    # the same with every UNet call at batch 1 (``unet_batch``): less activation memory (SD1.5 size on a CPU)
    Contender("vald onnxruntime fp32 unet-batch-1", "vald", Backend.ONNXRUNTIME, Precision.FP32, unet_batch=1),
    Contender("vald openvino fp32", "vald", Backend.OPENVINO, Precision.FP32),
    Contender("vald openvino bf16", "vald", Backend.OPENVINO, Precision.BF16),
    Contender("vald openvino int8", "vald", Backend.OPENVINO, Precision.INT8),
    Contender(REFERENCE, "vald", Backend.TORCH, Precision.FP32),
    Contender("torch bf16", "vald", Backend.TORCH, Precision.BF16),
    Contender("diffusers img2img fp32", "diffusers", Backend.TORCH, Precision.FP32),
    Contender("diffusers img2img bf16", "diffusers", Backend.TORCH, Precision.BF16),
    # GPU rows: skipped with their reason where there is no CUDA device or the package is missing
    Contender("torch fp32 cuda", "vald", Backend.TORCH, Precision.FP32, provider="cuda"),
    Contender("torch fp16 cuda", "vald", Backend.TORCH, Precision.FP16, provider="cuda"),
    Contender("vald onnxruntime fp32 cuda", "vald", Backend.ONNXRUNTIME, Precision.FP32, provider="cuda"),
    Contender("vald onnxruntime fp16 cuda", "vald", Backend.ONNXRUNTIME, Precision.FP16, provider="cuda"),
    Contender("vald onnxruntime fp16 tensorrt-ep", "vald", Backend.ONNXRUNTIME, Precision.FP16, provider="tensorrt"),
    Contender("vald tensorrt fp16", "vald", Backend.TENSORRT, Precision.FP16, provider="cuda"),
    # the same on the GPU with the sampler's state on the device, and with the UNet as CUDA graphs: their
    # differences to the rows above are the host loop's copies and the launch overhead
    Contender("torch fp16 cuda torch-loop", "vald", Backend.TORCH, Precision.FP16, "cuda", Loop.TORCH),
    Contender("vald onnxruntime fp16 cuda cupy-loop", "vald", Backend.ONNXRUNTIME, Precision.FP16, "cuda", Loop.CUPY),
    Contender(
        "vald onnxruntime fp16 cuda cupy-loop cuda-graph",
        "vald",
        Backend.ONNXRUNTIME,
        Precision.FP16,
        "cuda",
        Loop.CUPY,
        cuda_graph=True,
    ),
    Contender("vald tensorrt fp16 cupy-loop", "vald", Backend.TENSORRT, Precision.FP16, "cuda", Loop.CUPY),
    Contender(
        "vald tensorrt fp16 cupy-loop cuda-graph",
        "vald",
        Backend.TENSORRT,
        Precision.FP16,
        "cuda",
        Loop.CUPY,
        cuda_graph=True,
    ),
)
# --quick leaves out the slowest contenders on a CPU: FP16 graphs (no FP16 matrix units: casts around
# every op), diffusers in bf16 (the torch bf16 row measures the same kernels) and the batch-1 UNet row (a memory
# variant of the fp32 row).
QUICK_SKIP = ("vald onnxruntime fp16", "diffusers img2img bf16", "vald onnxruntime fp32 unet-batch-1")


def by_name(names: str | None, *, quick: bool) -> tuple[Contender, ...]:
    """Contenders named in a comma list (all when None), the reference always first."""
    chosen = [c for c in CONTENDERS if names is None or c.name in {n.strip() for n in names.split(",")}]
    if names is not None:
        unknown = {n.strip() for n in names.split(",")} - {c.name for c in CONTENDERS}
        if unknown:
            from vald.errors import ConfigError

            known = "; ".join(c.name for c in CONTENDERS)
            raise ConfigError(f"unknown contender(s) {', '.join(sorted(unknown))}; known: {known}")
    if quick and names is None:
        chosen = [c for c in chosen if c.name not in QUICK_SKIP]
    return tuple(sorted(chosen, key=lambda c: c.name != REFERENCE))

"""The PyTorch reference: the source diffusers/transformers modules behind the session protocol.

Imported only when ``backend = "torch"`` is chosen (``pip install vald[torch]``).
The wrapper modules here are also what ``vald export`` traces, so the graphs and
the reference compute the same function by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.config import Precision, Provider, RunConfig
from vald.errors import BackendUnavailableError, ModelError
from vald.manifest import Manifest
from vald.sessions import BoundSession, SessionInfo
from vald.spec import Component, ComponentSpec

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise BackendUnavailableError("backend=torch needs PyTorch: pip install 'vald[torch]'") from exc


class TextEncoderModule(torch.nn.Module):
    """input_ids [B, S] int64 (and attention_mask [B, S] where the model uses one) -> last_hidden_state."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        out: torch.Tensor = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        return out


class VaeEncoderModule(torch.nn.Module):
    """images [B, C, H, W] in [-1, 1] -> posterior mean [B, c, H/f, W/f] (unscaled)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out: torch.Tensor = self.vae.encode(images, return_dict=False)[0].mean
        return out


class UNetModule(torch.nn.Module):
    """(sample [B, c, h, w], timestep [B] float, encoder_hidden_states [B, S, hidden]) -> model output."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(  # noqa: D102
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        return out


class VaeDecoderModule(torch.nn.Module):
    """latent [B, c, h, w] (unscaled) -> images [B, C, H, W] in about [-1, 1]."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out: torch.Tensor = self.vae.decode(latent, return_dict=False)[0]
        return out


def load_modules(model_dir: Path) -> dict[Component, torch.nn.Module]:
    """Load a local diffusers folder (offline) as the four wrapper modules, eval mode, float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(model_dir / "text_encoder", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the diffusers model folder {model_dir.name}: {exc}") from None
    modules: dict[Component, torch.nn.Module] = {
        Component.TEXT_ENCODER: TextEncoderModule(encoder),
        Component.VAE_ENCODER: VaeEncoderModule(vae),
        Component.UNET: UNetModule(unet),
        Component.VAE_DECODER: VaeDecoderModule(vae),
    }
    for module in modules.values():
        module.eval().float()
    return modules


class TorchSession(BoundSession):
    """One wrapper module run under ``torch.inference_mode``.

    ``precision`` fp32 and fp16 cast the module; bf16 keeps float32 weights and runs under CPU
    autocast to bfloat16 (what a PyTorch user on a current CPU would do).
    """

    def __init__(self, module: torch.nn.Module, spec: ComponentSpec, device: str, precision: Precision) -> None:
        self._dtype = torch.float16 if precision is Precision.FP16 else torch.float32
        self._module = module.to(device=device, dtype=self._dtype)
        self._spec = spec
        self._device = device
        self._autocast = precision is Precision.BF16
        self._info = SessionInfo("torch", device, precision.value, torch.get_num_threads())

    def _tensor(self, value: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """A feed on this session's device, floating point in its dtype (numpy copied, torch moved)."""
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        t = t.to(self._device)
        return t.to(self._dtype) if t.is_floating_point() else t

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float32]]:
        """Run the module; outputs as float32 numpy."""
        with torch.inference_mode(), torch.autocast(self._device, torch.bfloat16, enabled=self._autocast):
            out = self._module(*(self._tensor(np.asarray(feeds[t.name])) for t in self._spec.inputs))
        return {self._spec.outputs[0].name: out.float().cpu().numpy()}

    def run_device(self, feeds: Mapping[str, Any], ops: Any) -> dict[str, Any]:
        """Device arrays in and out (``--loop``): torch tensors are used as they are, CuPy arrays through DLPack."""
        import torch.utils.dlpack

        def tensor(value: Any) -> torch.Tensor:
            return value if isinstance(value, torch.Tensor) else torch.utils.dlpack.from_dlpack(value)

        with torch.inference_mode(), torch.autocast(self._device, torch.bfloat16, enabled=self._autocast):
            out = self._module(*(self._tensor(tensor(feeds[t.name])) for t in self._spec.inputs))
        return {self._spec.outputs[0].name: ops.state(out.float())}


def open_torch_sessions(
    manifest: Manifest, cfg: RunConfig, *, model_dir: Path | None = None
) -> dict[Component, TorchSession]:
    """Torch sessions for ``model_dir``, else the engine folder's bundled ``model/``, else the manifest's source."""
    if cfg.provider is Provider.TENSORRT:
        raise BackendUnavailableError("backend=torch runs on provider cpu or cuda, not tensorrt")
    device = "cuda" if cfg.provider is Provider.CUDA else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("provider=cuda was asked for, but torch sees no CUDA device")
    if device == "cpu" and cfg.precision is Precision.FP16:
        raise BackendUnavailableError("backend=torch precision=fp16 needs provider=cuda (CPU fp16 is not supported)")
    if device == "cuda" and cfg.precision is Precision.BF16:
        raise BackendUnavailableError("backend=torch precision=bf16 runs on provider=cpu (CPU autocast)")
    folder = manifest.source_folder(model_dir)
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            "backend=torch needs the source diffusers folder: pass --model DIR "
            f"(the manifest's recorded folder {folder.name or '(none)'} is not there)"
        )
    torch.set_num_threads(cfg.resolved_threads)  # intra-op (OpenMP) threads, as the other backends
    modules = load_modules(folder)
    return {c: TorchSession(modules[c], manifest.specs[c], device, cfg.precision) for c in Component}

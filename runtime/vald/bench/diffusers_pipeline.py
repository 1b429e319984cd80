"""The contender a user would otherwise run: diffusers' ``StableDiffusionImg2ImgPipeline`` on the same folder.

Same image, prompts, strength, steps, guidance, eta and DDIM sampler as vald's img2img mode.  Its
noise is vald's (``draw_noise(seed)``, patched in for diffusers' ``randn_tensor``) and its image latent
the VAE posterior's mean (as vald; the pipeline would sample it), so the two counterfactuals are
comparable pixel for pixel; latency does not depend on where the noise comes from.
Imported only when this contender runs (needs ``vald[torch]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.bench.worker import model_input
from vald.config import Mode, Precision, RunConfig
from vald.errors import ConfigError
from vald.pipeline import draw_noise
from vald.schedules import PIPELINE_OVERRIDES

F32 = NDArray[np.float32]


def _timed_unet(unet: Any, calls: list[tuple[int, float]]) -> None:
    """Forward hooks that record (batch, seconds) per UNet call."""
    started: list[float] = []
    unet.register_forward_pre_hook(lambda _m, args: started.append(time.perf_counter()))
    unet.register_forward_hook(
        lambda _m, args, _out: calls.append((int(args[0].shape[0]), time.perf_counter() - started.pop()))
    )


def prepare(spec: Mapping[str, Any]) -> tuple[Callable[[], tuple[F32, F32, dict[str, float]]], dict[str, Any]]:
    """Load the pipeline; return a function that makes one counterfactual, and what runs it."""
    import diffusers
    import torch
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module

    cfg = RunConfig.from_mapping(spec["settings"])
    if cfg.mode is not Mode.IMG2IMG:
        raise ConfigError("the diffusers contender runs img2img only (mode=img2img)")
    if cfg.guidance_min_t:
        raise ConfigError("the diffusers contender guides at every step: it needs guidance_min_t=0")
    torch.set_num_threads(cfg.resolved_threads)
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        Path(spec["model_dir"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch.float32,  # a folder may store FP16 weights (engines/demo/model does); compute as vald
    )
    # vald's sampler, configured as the pipeline configures the scheduler it loads (vald.schedules)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, **PIPELINE_OVERRIDES)
    pipe.set_progress_bar_config(disable=True)
    x = model_input(Path(spec["image"]), int(spec["size"]))
    channels = int(pipe.vae.config.in_channels)
    image = torch.from_numpy(np.repeat(x[None, None], channels, axis=1))  # [1, C, S, S] in [0, 1]
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latent_shape = (1, int(pipe.unet.config.in_channels), x.shape[0] // factor, x.shape[1] // factor)
    noise = draw_noise(cfg.seed, latent_shape, 1)[0]
    img2img_module.randn_tensor = lambda *_a, **_k: torch.from_numpy(noise.copy())
    # the posterior mean, as vald (the pipeline samples the VAE posterior with an unseeded draw by default)
    img2img_module.retrieve_latents = lambda output, generator=None, sample_mode="sample": output.latent_dist.mode()
    calls: list[tuple[int, float]] = []
    _timed_unet(pipe.unet, calls)
    bf16 = cfg.precision is Precision.BF16

    def once() -> tuple[F32, F32, dict[str, float]]:
        calls.clear()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = pipe(
                prompt=cfg.prompt,
                negative_prompt=cfg.negative_prompt,
                image=image,
                strength=cfg.strength,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance,
                eta=cfg.eta,
                output_type="np",
            ).images
        counterfactual = np.asarray(out[0], dtype=np.float32).mean(axis=-1)
        stages = {"unet": float(sum(s for _, s in calls)), "unet_calls": float(len(calls))}
        for batch in sorted({b for b, _ in calls}):
            stages[f"unet_call_b{batch}"] = float(np.median([s for b, s in calls if b == batch]))
        return counterfactual, (x - counterfactual).astype(np.float32), stages

    pipeline = {"backend": "diffusers", "device": "cpu", "precision": cfg.precision.value}
    return once, {"sessions": {"pipeline": {**pipeline, "threads": torch.get_num_threads()}}}

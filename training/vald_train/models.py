"""Architectures of the demo model: a small AutoencoderKL, a frozen BERT text encoder, a UNet2DConditionModel.

Sizes are chosen to train on a 2-core CPU in about an hour and to ship in tens of MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vald_export.tiny import vocab_size, write_model_index, write_tokenizer
from vald_train.reports import vocabulary

SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """Sizes of the three networks."""

    image_size: int = 128
    vae_blocks: tuple[int, ...] = (32, 64, 128, 128)  # f = 2 ** (len - 1) = 8
    latent_channels: int = 16
    hidden: int = 64
    text_layers: int = 2
    max_length: int = 32
    unet_blocks: tuple[int, ...] = (32, 64, 128)
    unet_layers: int = 2

    @property
    def latent_size(self) -> int:
        """Side of the latent grid."""
        return self.image_size // 2 ** (len(self.vae_blocks) - 1)


def make_vae(arch: Architecture) -> Any:
    """AutoencoderKL, 1 channel, no mid-block attention (fully convolutional: trains on crops)."""
    from diffusers import AutoencoderKL

    n = len(arch.vae_blocks)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=arch.latent_channels,
        block_out_channels=arch.vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=arch.image_size,
        mid_block_add_attention=False,
    )


def make_text_encoder(arch: Architecture, seed: int) -> Any:
    """A BERT over the report vocabulary; random and frozen (the UNet learns to read its states)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size(vocabulary()),
        hidden_size=arch.hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=4,
        intermediate_size=2 * arch.hidden,
        max_position_embeddings=max(64, arch.max_length),
    )
    return BertModel(config).eval()


def make_unet(arch: Architecture) -> Any:
    """UNet2DConditionModel with cross-attention at the two coarser levels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_blocks,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=arch.unet_layers,
        cross_attention_dim=arch.hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def write_model_folder(out: Path, arch: Architecture, vae: Any, text_encoder: Any, unet: Any) -> Path:
    """A diffusers folder (safetensors) that ``vald export`` and the torch reference load."""
    from diffusers import DDIMScheduler

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer", max_length=arch.max_length, words=vocabulary())
    text_encoder.save_pretrained(out / "text_encoder")
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    DDIMScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    write_model_index(out)
    return out

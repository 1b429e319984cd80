"""A Stable-Diffusion-1.5-size diffusers folder built from config with random weights (no download).

Latency and memory depend on the architecture, not the weights, so this folder is a valid subject
for export at real size and for ``vald bench``: UNet2DConditionModel 320/640/1280/1280 with 768-d
cross-attention (859.5 M parameters), the SD VAE 128/256/512/512 (f=8, 4 latent channels, 512²),
and a 12-layer 768-d BERT as the clinical text encoder (VALD-MD's RadBERT is BERT/RoBERTa-base).
About 4.1 GB in float32.
"""

from __future__ import annotations

from pathlib import Path

from vald_export.tiny import vocab_size, write_scheduler_and_index, write_tokenizer


def make_sd15_model(out: Path, *, seed: int = 0) -> Path:
    """Write the folder at ``out`` (safetensors, float32); returns ``out``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer", max_length=77)
    torch.manual_seed(seed)
    bert = BertConfig(vocab_size=vocab_size(), hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
    BertModel(bert).save_pretrained(out / "text_encoder")
    UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    ).save_pretrained(out / "unet")  # each module is freed once saved: one ~3.4 GB model in memory at a time
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=512,
    ).save_pretrained(out / "vae")
    write_scheduler_and_index(out)
    return out

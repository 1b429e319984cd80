"""The demo model's training recipe: VAE, then latents and text states once, then the UNet.

Every stage writes its result under the work folder and is skipped when that
result exists, and the UNet stage checkpoints, so an interrupted run resumes.
Randomness is derived from ``(seed, step)``, so a resumed run draws what an
uninterrupted one would have.  Run with ``python -m vald_train WORK``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vald_train.data import TrainingSet, build_training_set
from vald_train.models import SCHEDULER, Architecture, make_text_encoder, make_unet, make_vae, write_model_folder

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Every setting of a training run (recorded in ``recipe.json``)."""

    seed: int = 0
    n_seeds: int = 3000
    vae_steps: int = 2500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    edge_weight: float = 0.5  # L1 of the images' finite differences: keeps rib edges sharp
    unet_steps: int = 3000
    decoder_steps: int = 600
    decoder_lr: float = 5e-4
    unet_batch: int = 64
    unet_lr: float = 3e-4
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    threads: int = 2
    init_from: str = ""  # a diffusers folder of this architecture: continue from its VAE, text encoder and UNet
    arch: Architecture = field(default_factory=Architecture)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to a tenth of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _images(data: TrainingSet, index: np.ndarray[Any, Any]) -> Any:
    import torch

    x = data.images[index].astype(np.float32) / 65535.0 * 2.0 - 1.0
    return torch.from_numpy(x[:, None])


def reconstruction_loss(recon: Any, x: Any, edge_weight: float) -> tuple[Any, Any]:
    """(L1 + ``edge_weight`` x L1 of the horizontal and vertical differences, plain L1)."""
    l1 = (recon - x).abs().mean()

    def edges(a: Any) -> tuple[Any, Any]:
        return a[..., 1:, :] - a[..., :-1, :], a[..., :, 1:] - a[..., :, :-1]

    (ry, rx), (xy, xx) = edges(recon), edges(x)
    return l1 + edge_weight * ((ry - xy).abs().mean() + (rx - xx).abs().mean()), l1


def train_vae(data: TrainingSet, recipe: Recipe, work: Path, log: Log) -> Any:
    """Train the AutoencoderKL on random crops (L1 + edges + a small latent-size penalty); return it scaled."""
    import torch

    torch.manual_seed(recipe.seed)
    vae = make_vae(recipe.arch)
    opt = torch.optim.Adam(vae.parameters(), lr=recipe.vae_lr)
    rows: list[dict[str, float]] = []
    for step in range(recipe.vae_steps):
        x = _crops(data, recipe, step, stream=1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.vae_steps, recipe.vae_lr, warmup=50)
        # Deterministic: the runtime decodes the posterior mean, so train exactly that path; a small
        # penalty on the mean's size stands in for the KL term (whose variance part we never use).
        mean = vae.encode(x).latent_dist.mean
        fit, l1 = reconstruction_loss(vae.decode(mean).sample, x, recipe.edge_weight)
        loss = fit + recipe.kl_weight * mean.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append({"step": step, "l1": l1.item()})
        if step % 50 == 0 or step == recipe.vae_steps - 1:
            log(f"vae step {step}/{recipe.vae_steps} L1 {l1.item():.4f}")
    _write_curve(work / "vae_loss.csv", rows)
    vae.eval()
    with torch.no_grad():
        sample = np.arange(min(512, len(data.images)))
        means = torch.cat([vae.encode(_images(data, part)).latent_dist.mean for part in np.array_split(sample, 8)])
    shift, scale = float(means.mean()), 1.0 / float(means.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log(f"vae latent shift {shift:.4f} scale {scale:.4f}")
    return vae


def _crops(data: TrainingSet, recipe: Recipe, step: int, stream: int) -> Any:
    rng = np.random.default_rng([recipe.seed, stream, step])
    x = _images(data, rng.integers(len(data.images), size=recipe.vae_batch))
    i, j = rng.integers(0, recipe.arch.image_size - recipe.vae_crop + 1, size=2)
    return x[:, :, i : i + recipe.vae_crop, j : j + recipe.vae_crop]


def finetune_decoder(vae: Any, data: TrainingSet, recipe: Recipe, work: Path, log: Log) -> Any:
    """Sharpen the decoder with the encoder frozen: the latent space, and so the trained UNet, stay valid."""
    import torch

    torch.manual_seed(recipe.seed + 1)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=recipe.decoder_lr)
    rows = []
    for step in range(recipe.decoder_steps):
        x = _crops(data, recipe, step, stream=3)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.decoder_steps, recipe.decoder_lr, warmup=50)
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        fit, l1 = reconstruction_loss(vae.decode(mean).sample, x, recipe.edge_weight)
        opt.zero_grad()
        fit.backward()
        opt.step()
        rows.append({"step": step, "l1": l1.item()})
        if step % 100 == 0 or step == recipe.decoder_steps - 1:
            log(f"decoder step {step}/{recipe.decoder_steps} L1 {l1.item():.4f}")
    _write_curve(work / "decoder_loss.csv", rows)
    return vae.eval().requires_grad_(False)


def encode_latents(vae: Any, data: TrainingSet) -> np.ndarray[Any, Any]:
    """``(mean - shift) * scale`` of every image, as the runtime computes it: ``[N, C, h, w]`` float32."""
    import torch

    out = []
    with torch.no_grad():
        for k in range(0, len(data.images), 128):
            mean = vae.encode(_images(data, np.arange(k, min(k + 128, len(data.images))))).latent_dist.mean
            out.append(((mean - vae.config.shift_factor) * vae.config.scaling_factor).numpy())
    return np.concatenate(out).astype(np.float32)


def text_states(model_dir: Path, encoder: Any, prompts: list[str], max_length: int) -> np.ndarray[Any, Any]:
    """Frozen text-encoder states ``[P, L, hidden]``, tokenised exactly as the runtime tokenises."""
    import torch

    from vald.tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer(model_dir / "tokenizer", max_length=max_length, pad_id=0)
    with torch.no_grad():
        ids = torch.from_numpy(tokenizer(prompts).astype(np.int64))
        return encoder(input_ids=ids).last_hidden_state.numpy().astype(np.float32)


def _alphas_cumprod() -> Any:
    import torch

    betas = torch.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def train_unet(
    latents: np.ndarray[Any, Any],
    states: np.ndarray[Any, Any],
    prompt_index: np.ndarray[Any, Any],
    recipe: Recipe,
    work: Path,
    log: Log,
    init: Any = None,
) -> Any:
    """Epsilon-prediction training with prompt dropout; returns the EMA UNet.

    ``states[0]`` is the empty prompt (the unconditional branch of guidance).  ``init``: a UNet to start
    from (its weights seed both the trained copy and the EMA); a fresh one when None.
    """
    import copy

    import torch

    torch.manual_seed(recipe.seed)
    unet = make_unet(recipe.arch) if init is None else init.train()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=1e-2)
    ckpt, start, rows = work / "unet_checkpoint.pt", 0, []
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(saved["unet"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        start, rows = saved["step"], saved["rows"]
        log(f"unet resumed at step {start}")
    alpha_bar, z_all, s_all = _alphas_cumprod(), torch.from_numpy(latents), torch.from_numpy(states)
    started = time.perf_counter()
    for step in range(start, recipe.unet_steps):
        rng = np.random.default_rng([recipe.seed, 2, step])
        index = rng.integers(len(latents), size=recipe.unet_batch)
        which = np.where(rng.random(recipe.unet_batch) < recipe.prompt_dropout, 0, prompt_index[index])
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        t = torch.randint(0, 1000, (recipe.unet_batch,), generator=gen)
        noise = torch.randn(z_all[index].shape, generator=gen)
        ab = alpha_bar[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * z_all[index] + (1 - ab).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.unet_steps, recipe.unet_lr)
        loss = torch.nn.functional.mse_loss(unet(x_t, t, s_all[which]).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.mul_(decay).add_(p, alpha=1 - decay)
        rows.append({"step": step, "mse": loss.item()})
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.unet_steps:
            torch.save(
                {
                    "unet": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "rows": rows,
                },
                ckpt,
            )
            recent = np.mean([r["mse"] for r in rows[-recipe.checkpoint_every :]])
            log(f"unet step {step + 1}/{recipe.unet_steps} mse {recent:.4f} ({time.perf_counter() - started:.0f}s)")
    _write_curve(work / "unet_loss.csv", rows)
    return ema


def _write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(work: Path, recipe: Recipe, log: Log = print) -> Path:
    """All stages; returns the finished diffusers folder ``work/model``."""
    import torch

    torch.set_num_threads(recipe.threads)
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")
    data_path = work / "data.npz"
    if not data_path.exists():
        started = time.perf_counter()
        build_training_set(recipe.n_seeds, recipe.arch.image_size).save(data_path)
        log(f"rendered the training set in {time.perf_counter() - started:.0f}s")
    data = TrainingSet.load(data_path)
    log(f"{len(data.images)} training images")
    from diffusers import AutoencoderKL

    if recipe.init_from:
        return _continue(Path(recipe.init_from), work, recipe, data, log)
    if not (work / "vae" / "config.json").exists():
        train_vae(data, recipe, work, log).save_pretrained(work / "vae")
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    text_encoder = make_text_encoder(recipe.arch, recipe.seed)
    stage = write_model_folder(work / "model", recipe.arch, vae, text_encoder, make_unet(recipe.arch))
    ema = _train_unet_stage(stage, vae, text_encoder, data, recipe, work, log)
    if recipe.decoder_steps and not (work / "vae_finetuned" / "config.json").exists():
        finetune_decoder(vae, data, recipe, work, log).save_pretrained(work / "vae_finetuned")
    if recipe.decoder_steps:
        vae = AutoencoderKL.from_pretrained(work / "vae_finetuned").eval()
    return write_model_folder(work / "model", recipe.arch, vae, text_encoder, ema)


def _train_unet_stage(
    stage: Path, vae: Any, text_encoder: Any, data: TrainingSet, recipe: Recipe, work: Path, log: Log, init: Any = None
) -> Any:
    prompts = ["", *sorted(set(data.prompts))]
    lookup = {p: i for i, p in enumerate(prompts)}
    states = text_states(stage, text_encoder, prompts, recipe.arch.max_length)
    latents = encode_latents(vae, data)
    return train_unet(latents, states, np.array([lookup[p] for p in data.prompts]), recipe, work, log, init)


def _continue(model: Path, work: Path, recipe: Recipe, data: TrainingSet, log: Log) -> Path:
    """Train ``model`` (a folder this recipe wrote, e.g. ``engines/demo/model``) further.

    The UNet trains ``unet_steps`` more steps and the decoder ``decoder_steps`` more (encoder frozen, so
    the latents the UNet reads do not move); either may be 0.  The text encoder and the VAE's encoder are kept.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertModel

    if not (model / "unet" / "config.json").exists():
        raise SystemExit(f"--init-from {model}: not a diffusers folder (no unet/config.json)")
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    text_encoder = BertModel.from_pretrained(model / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    log(
        f"continuing from {model}: text encoder and VAE encoder kept, UNet trained {recipe.unet_steps} more "
        f"steps, decoder {recipe.decoder_steps} more"
    )
    _keep_history(model.parent, work / "previous")
    decoded_by = vae
    if recipe.decoder_steps:
        if not (work / "vae_finetuned" / "config.json").exists():
            tuned = finetune_decoder(AutoencoderKL.from_pretrained(model / "vae"), data, recipe, work, log)
            tuned.save_pretrained(work / "vae_finetuned")
        decoded_by = AutoencoderKL.from_pretrained(work / "vae_finetuned").eval()
    if recipe.unet_steps:
        stage = write_model_folder(work / "model", recipe.arch, vae, text_encoder, unet)
        unet = _train_unet_stage(stage, vae, text_encoder, data, recipe, work, log, init=unet)
    return write_model_folder(work / "model", recipe.arch, decoded_by, text_encoder, unet)


HISTORY = ("recipe.json", "train.log", "vae_loss.csv", "unet_loss.csv", "decoder_loss.csv", "loss.png")


def _keep_history(source: Path, previous: Path) -> None:
    """The earlier stages' recipe, log and curves, from a shipped folder (``training/``) or a work folder."""
    folder = source / "training" if (source / "training").is_dir() else source
    previous.mkdir(parents=True, exist_ok=True)
    for name in HISTORY:
        if (folder / name).is_file():
            shutil.copy2(folder / name, previous / name)
    if (folder / "previous").is_dir():  # a stage before that one
        shutil.copytree(folder / "previous", previous / "previous", dirs_exist_ok=True)

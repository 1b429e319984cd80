"""Checking a local diffusers-format model folder and reading the facts the runtime needs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vald.errors import ModelError

REQUIRED = {
    "text_encoder": "config.json",
    "tokenizer": None,
    "unet": "config.json",
    "vae": "config.json",
    "scheduler": "scheduler_config.json",
}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model folder is missing {path.parent.name}/{path.name}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path.parent.name}/{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path.parent.name}/{path.name} is not a JSON object")
    return data


@dataclass(frozen=True)
class ModelFolder:
    """A validated diffusers folder: configs of each part."""

    root: Path
    text_config: dict[str, Any]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> ModelFolder:
        """Validate presence and consistency; ModelError naming what is wrong."""
        if not root.is_dir():
            raise ModelError(f"model folder {root} does not exist or is not a folder")
        for part, config in REQUIRED.items():
            if not (root / part).is_dir():
                raise ModelError(f"model folder has no {part}/ sub-folder (expected a diffusers-format folder)")
            if config is not None and not (root / part / config).is_file():
                raise ModelError(f"model folder is missing {part}/{config}")
        folder = cls(
            root,
            _json(root / "text_encoder" / "config.json"),
            _json(root / "unet" / "config.json"),
            _json(root / "vae" / "config.json"),
            _json(root / "scheduler" / "scheduler_config.json"),
        )
        folder._check()
        return folder

    def _check(self) -> None:
        hidden = self.text_config.get("hidden_size")
        cross = self.unet_config.get("cross_attention_dim")
        if hidden is None:
            raise ModelError("text_encoder/config.json has no hidden_size (expected a BERT or RoBERTa encoder)")
        if cross != hidden:
            raise ModelError(
                f"unet cross_attention_dim={cross} does not equal the text encoder's hidden_size={hidden}; "
                "the encoder's states feed cross-attention directly, so they must match"
            )
        latent = self.vae_config.get("latent_channels", 4)
        if self.unet_config.get("in_channels", 4) != latent:
            raise ModelError(
                f"unet in_channels={self.unet_config.get('in_channels')} does not equal vae latent_channels={latent}"
            )
        if not isinstance(self.unet_config.get("sample_size"), int):
            raise ModelError("unet/config.json sample_size must be one integer (square models only)")

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel."""
        return int(2 ** (len(self.vae_config.get("block_out_channels", [64])) - 1))

    def sha256(self) -> str:
        """One hash over every file's relative path and bytes (sorted), the model's identity."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.root)).encode())
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()

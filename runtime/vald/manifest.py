"""The engine folder's ``manifest.json``: what was exported, and checks that the files still match it.

Layout of an engine folder (written by ``vald export``)::

    manifest.json
    tokenizer/tokenizer.json (+ config files)
    fp32/{text_encoder,vae_encoder,unet,vae_decoder}.onnx
    fp16/...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vald.config import Precision
from vald.errors import EngineMismatchError
from vald.spec import Component, ComponentSpec, specs

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the runtime needs to know about the exported model."""

    image_channels: int
    latent_channels: int
    hidden_size: int
    image_size: int  # square model resolution in pixels
    vae_scale_factor: int
    scaling_factor: float
    shift_factor: float
    max_length: int
    pad_id: int

    @property
    def latent_size(self) -> int:
        """Latent side length in latent pixels."""
        return self.image_size // self.vae_scale_factor


@dataclass(frozen=True)
class Manifest:
    """A parsed, not yet verified, manifest."""

    root: Path
    data: Mapping[str, Any]

    @classmethod
    def load(cls, root: Path) -> Manifest:
        """Read ``root/manifest.json``; EngineMismatchError if absent or malformed."""
        path = root / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EngineMismatchError(f"no {MANIFEST_NAME} in engine folder {root}; run `vald export` first") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineMismatchError(f"{MANIFEST_NAME} in {root} cannot be read: {exc}") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise EngineMismatchError(
                f"{MANIFEST_NAME} in {root} has format_version {version!r}; this vald reads {FORMAT_VERSION}"
            )
        return cls(root, data)

    @property
    def model(self) -> ModelInfo:
        """Model facts recorded at export."""
        try:
            return ModelInfo(**self.data["model"])
        except (KeyError, TypeError) as exc:
            raise EngineMismatchError(f"{MANIFEST_NAME} 'model' section is malformed: {exc}") from None

    @property
    def scheduler_config(self) -> Mapping[str, Any]:
        """The source model's scheduler config."""
        return dict(self.data.get("scheduler", {}))

    @property
    def specs(self) -> dict[Component, ComponentSpec]:
        """I/O descriptors for this model."""
        m = self.model
        return specs(image_channels=m.image_channels, latent_channels=m.latent_channels, hidden_size=m.hidden_size)

    @property
    def model_sha256(self) -> str:
        """Hash of the source diffusers folder."""
        return str(self.data.get("source", {}).get("sha256", ""))

    def _files(self, component: Component, precision: Precision) -> Mapping[str, str]:
        try:
            entry = self.data["components"][component.value]["precisions"][precision.value]
            return dict(entry["files"])
        except KeyError:
            raise EngineMismatchError(f"engine folder has no {precision} {component} (see {MANIFEST_NAME})") from None

    def graph_path(self, component: Component, precision: Precision) -> Path:
        """Path of the ONNX graph (its first file) for one component and precision."""
        return self.root / next(iter(self._files(component, precision)))

    def engine_hashes(self, precision: Precision) -> dict[str, str]:
        """sha256 of every file a run at ``precision`` loads, keyed by relative path."""
        hashes: dict[str, str] = {}
        for component in Component:
            hashes.update(self._files(component, precision))
        hashes.update(self.data.get("tokenizer", {}).get("files", {}))
        return hashes

    def verify(self, precision: Precision) -> dict[str, str]:
        """Check every file a run at ``precision`` needs against its recorded hash; return the hashes."""
        expected = self.engine_hashes(precision)
        for rel, digest in expected.items():
            path = self.root / rel
            if not path.is_file():
                raise EngineMismatchError(f"engine file {rel} listed in {MANIFEST_NAME} is missing")
            actual = sha256_file(path)
            if actual != digest:
                raise EngineMismatchError(
                    f"engine file {rel} does not match {MANIFEST_NAME}: sha256 {actual[:12]}…, expected {digest[:12]}…"
                )
        return expected

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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vald.cache import StampStore
from vald.config import Precision
from vald.errors import EngineMismatchError
from vald.spec import Component, ComponentSpec, specs
from vald.strictjson import restore_non_finite

MANIFEST_NAME = "manifest.json"
BUNDLED_MODEL = "model"  # an engine folder may carry its source diffusers folder here (engines/demo does)
FORMAT_VERSION = 1
QUANTISED = (Component.UNET,)  # what `vald quantize` quantises: the UNet is >90 % of a counterfactual's work


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# (field, lowest, highest) of a manifest's model section: what a model vald can run may have.  4096² images
# (SD-family VAEs at f=8 give 512² latents) and 4096 tokens bound memory before anything is allocated.
MODEL_BOUNDS = (
    ("image_channels", 1, 4),
    ("latent_channels", 1, 64),
    ("hidden_size", 1, 16384),
    ("image_size", 8, 4096),
    ("vae_scale_factor", 1, 64),
    ("max_length", 1, 4096),
    ("pad_id", 0, 10_000_000),
)


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
    attention_mask: bool = False  # the text encoder takes the prompt's attention mask (``use_attention_mask``)

    def __post_init__(self) -> None:
        for name, low, high in MODEL_BOUNDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise EngineMismatchError(
                    f"{MANIFEST_NAME} model.{name}={value!r} must be an integer in [{low}, {high}]"
                )
        if self.vae_scale_factor & (self.vae_scale_factor - 1) or self.image_size % self.vae_scale_factor:
            raise EngineMismatchError(
                f"{MANIFEST_NAME} model.image_size={self.image_size} must be a multiple of vae_scale_factor="
                f"{self.vae_scale_factor} (a power of two)"
            )
        for name in ("scaling_factor", "shift_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise EngineMismatchError(f"{MANIFEST_NAME} model.{name}={value!r} must be a finite number")
        if self.scaling_factor <= 0:
            raise EngineMismatchError(f"{MANIFEST_NAME} model.scaling_factor={self.scaling_factor!r} must be > 0")
        if not isinstance(self.attention_mask, bool):
            raise EngineMismatchError(f"{MANIFEST_NAME} model.attention_mask must be true or false")

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
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise EngineMismatchError(f"no {MANIFEST_NAME} in engine folder {root}; run `vald export` first") from None
        except UnicodeDecodeError:
            raise EngineMismatchError(f"{MANIFEST_NAME} in {root} is not UTF-8 text") from None
        except OSError as exc:
            raise EngineMismatchError(f"{MANIFEST_NAME} in {root} cannot be read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise EngineMismatchError(f"{MANIFEST_NAME} in {root} is not valid JSON: {exc}") from None
        except RecursionError:
            raise EngineMismatchError(f"{MANIFEST_NAME} in {root} is nested too deeply to be a manifest") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise EngineMismatchError(
                f"{MANIFEST_NAME} in {root} has format_version {version!r}; this vald reads {FORMAT_VERSION}"
            )
        _check_components(data.get("components"))
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
        """The source model's scheduler config (non-finite numbers, kept as text in the file, restored)."""
        config = self.data.get("scheduler", {})
        if not isinstance(config, dict):
            raise EngineMismatchError(f"{MANIFEST_NAME} 'scheduler' is not an object")
        return dict(restore_non_finite(config))

    @property
    def specs(self) -> dict[Component, ComponentSpec]:
        """I/O descriptors for this model."""
        m = self.model
        return specs(
            image_channels=m.image_channels,
            latent_channels=m.latent_channels,
            hidden_size=m.hidden_size,
            attention_mask=m.attention_mask,
        )

    def source_folder(self, override: Path | None = None) -> Path:
        """The diffusers folder the engines came from.

        That is ``override``, else the engine folder's bundled ``model/`` (engines/demo has one), else the
        path recorded at export (which may no longer exist).
        """
        bundled = self.root / BUNDLED_MODEL
        if override is not None:
            return override
        if (bundled / "model_index.json").is_file():
            return bundled
        return Path(str(self.data.get("source", {}).get("path", "")))

    @property
    def model_sha256(self) -> str:
        """Hash of the source diffusers folder."""
        return str(self.data.get("source", {}).get("sha256", ""))

    def path(self, rel: str) -> Path:
        """The engine folder's file ``rel``; EngineMismatchError if it resolves outside the folder.

        Links are followed: a manifest entry or a link that leads out of the folder is refused.
        """
        root, path = self.root.resolve(), self.root / rel
        if not path.resolve().is_relative_to(root) or path.resolve() == root:
            raise EngineMismatchError(f"engine file {rel!r} listed in {MANIFEST_NAME} is outside the engine folder")
        return path  # as the folder was named (relative stays relative): callers relate it to ``root``

    def _files(self, component: Component, precision: Precision) -> Mapping[str, str]:
        if precision is Precision.INT8 and component not in QUANTISED:
            precision = Precision.FP32  # an int8 set quantises the UNet; the others run from the FP32 graphs
        try:
            entry = self.data["components"][component.value]["precisions"][precision.value]
            files = dict(entry["files"])
        except KeyError:
            hint = "; run `vald quantize` on it first" if precision is Precision.INT8 else ""
            raise EngineMismatchError(
                f"engine folder has no {precision} {component} (see {MANIFEST_NAME}){hint}"
            ) from None
        except (TypeError, ValueError, AttributeError):
            raise EngineMismatchError(f"{MANIFEST_NAME} entry of the {precision} {component} is malformed") from None
        if not files or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise EngineMismatchError(f"{MANIFEST_NAME} entry of the {precision} {component} is malformed")
        return files

    @property
    def precisions(self) -> tuple[Precision, ...]:
        """Graph sets the folder holds for every component."""
        found = [set(c.get("precisions", {})) for c in self.data["components"].values()]
        common = set.intersection(*found) if found else set()
        return tuple(p for p in Precision if p.value in common)

    @property
    def quantised(self) -> tuple[Precision, ...]:
        """Quantised graph sets the folder holds (``vald quantize``): int8 when its UNet is there."""
        unet = self.data["components"].get(Component.UNET.value, {}).get("precisions", {})
        return (Precision.INT8,) if Precision.INT8.value in unet else ()

    def graph_path(self, component: Component, precision: Precision) -> Path:
        """Path of the ONNX graph (its first file) for one component and precision."""
        return self.path(next(iter(self._files(component, precision))))

    def engine_hashes(self, precision: Precision | None) -> dict[str, str]:
        """sha256 of every file a run loads, keyed by relative path.

        That is the graphs of ``precision`` (none when None: a backend that loads no graph) and the tokenizer.
        """
        hashes: dict[str, str] = {}
        if precision is not None:
            for component in Component:
                hashes.update(self._files(component, precision))
        tokenizer = self.data.get("tokenizer", {})
        files = tokenizer.get("files", {}) if isinstance(tokenizer, dict) else None
        if not isinstance(files, dict):
            raise EngineMismatchError(f"{MANIFEST_NAME} 'tokenizer' section is malformed")
        hashes.update(files)
        return hashes

    def verify(self, precision: Precision | None, *, rehash: bool = False) -> Verification:
        """Check every file a run with graphs of ``precision`` (None: no graphs) needs against its hash.

        Files whose stamp in the engine cache still matches (see :mod:`vald.cache`) are not read
        again unless ``rehash``; every file hashed and found to match is stamped.
        """
        return self.verify_files(self.engine_hashes(precision), rehash=rehash)

    def verify_all(self) -> Verification:
        """Re-hash every file of every graph set and the tokenizer, ignoring stamps (``vald verify``)."""
        expected: dict[str, str] = {}
        for precision in self.precisions + self.quantised or (None,):
            expected |= self.engine_hashes(precision)
        return self.verify_files(expected, rehash=True)

    def verify_files(self, expected: Mapping[str, str], *, rehash: bool = False) -> Verification:
        """Check files (relative path -> sha256) as :meth:`verify` does."""
        stamps = StampStore(self.root)
        hashed = 0
        for rel, digest in expected.items():
            path = self.path(rel)
            if not path.is_file():
                packed = path.with_name(path.name + ".f16pack")  # a graph shipped packed (engines/demo)
                hint = f" ({rel}.f16pack is there: `make setup` unpacks it)" if packed.is_file() else ""
                raise EngineMismatchError(f"engine file {rel} listed in {MANIFEST_NAME} is missing{hint}")
            if not rehash and stamps.trusted_sha256(rel) == digest:
                continue
            actual = sha256_file(path)
            hashed += 1
            if actual != digest:
                stamps.forget(rel)
                stamps.save()
                raise EngineMismatchError(
                    f"engine file {rel} does not match {MANIFEST_NAME}: sha256 {actual[:12]}…, expected {digest[:12]}…"
                )
            stamps.record(rel, digest)
        return Verification(dict(expected), hashed=hashed, stamped=len(expected) - hashed, cache_writable=stamps.save())


def _check_components(components: Any) -> None:
    """EngineMismatchError unless ``components`` maps names to objects whose ``precisions`` is an object."""
    if not isinstance(components, dict):
        raise EngineMismatchError(f"{MANIFEST_NAME} 'components' is not an object")
    if not all(isinstance(c, dict) and isinstance(c.get("precisions", {}), dict) for c in components.values()):
        raise EngineMismatchError(f"{MANIFEST_NAME} 'components' is malformed: each component must be an object")


@dataclass(frozen=True)
class Verification:
    """Result of :meth:`Manifest.verify`: the verified hashes and how they were established."""

    hashes: dict[str, str]
    hashed: int  # files read and hashed now
    stamped: int  # files trusted from an unchanged stamp
    cache_writable: bool  # False: stamps could not be kept, the next start hashes again

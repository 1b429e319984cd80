"""One descriptor per network: binding names, dtypes and symbolic shapes.

Export writes graphs with exactly these names and axes and the runtime feeds
them by the same names, so the two cannot disagree.  Symbolic dimensions are
strings (``"B"`` batch, ``"S"`` tokens, ``"H"``/``"W"`` pixels, ``"h"``/``"w"``
latent pixels); integers are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Component(StrEnum):
    """The four networks a latent diffusion model is exported as."""

    TEXT_ENCODER = "text_encoder"
    VAE_ENCODER = "vae_encoder"
    UNET = "unet"
    VAE_DECODER = "vae_decoder"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name and symbolic shape."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]

    def to_json(self) -> dict[str, object]:
        """Manifest form."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ComponentSpec:
    """Bindings of one network."""

    component: Component
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes: every symbolic dimension of every binding."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in (*self.inputs, *self.outputs)
        }


def specs(
    *, image_channels: int, latent_channels: int, hidden_size: int, attention_mask: bool = False
) -> dict[Component, ComponentSpec]:
    """Descriptors for a model with the given channel counts and text width.

    ``attention_mask``: the text encoder also takes the prompt's attention mask (1 for tokens, 0 for padding),
    for encoders whose config says ``use_attention_mask`` (diffusers' pipelines feed it then).
    """
    text_inputs: tuple[TensorSpec, ...] = (TensorSpec("input_ids", "int64", ("B", "S")),)
    if attention_mask:
        text_inputs += (TensorSpec("attention_mask", "int64", ("B", "S")),)
    image = ("B", image_channels, "H", "W")
    latent = ("B", latent_channels, "h", "w")
    return {
        Component.TEXT_ENCODER: ComponentSpec(
            Component.TEXT_ENCODER,
            text_inputs,
            (TensorSpec("last_hidden_state", "float32", ("B", "S", hidden_size)),),
        ),
        Component.VAE_ENCODER: ComponentSpec(
            Component.VAE_ENCODER,
            (TensorSpec("images", "float32", image),),
            (TensorSpec("latent_mean", "float32", latent),),
        ),
        Component.UNET: ComponentSpec(
            Component.UNET,
            (
                TensorSpec("sample", "float32", latent),
                TensorSpec("timestep", "float32", ("B",)),
                TensorSpec("encoder_hidden_states", "float32", ("B", "S", hidden_size)),
            ),
            (TensorSpec("out_sample", "float32", latent),),
        ),
        Component.VAE_DECODER: ComponentSpec(
            Component.VAE_DECODER,
            (TensorSpec("latent", "float32", latent),),
            (TensorSpec("images", "float32", image),),
        ),
    }

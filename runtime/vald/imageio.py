"""Reading input images and fitting them to the model's square resolution.

Readers are registered by file suffix (:func:`register_reader`), so a DICOM
reader can be added without touching the pipeline.  Every reader returns a
float32 ``[H, W]`` image in [0, 1], 0 = black as displayed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from vald.errors import InputError

Gray = NDArray[np.float32]
# Sizes vald reads, in any format, checked before decoding: a chest radiograph is at most ~4300 pixels a side;
# the pixel limit bounds memory (see the README's reliability section for the measured peak).
MIN_SIDE, MAX_SIDE = 64, 16384
MAX_PIXELS = 40_000_000
Reader = Callable[[Path], Gray]
_READERS: dict[str, Reader] = {}


def register_reader(suffixes: tuple[str, ...], reader: Reader) -> None:
    """Make ``reader`` handle files with these (lower-case, dotted) suffixes."""
    for suffix in suffixes:
        _READERS[suffix.lower()] = reader


def read_image(path: Path) -> Gray:
    """Read any registered format; InputError naming the problem (not the patient) otherwise."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"unsupported input type {path.suffix!r}; supported: {', '.join(sorted(_READERS))}")
    if not path.is_file():
        raise InputError("input file does not exist or is not a file")
    return reader(path)


def check_size(width: int, height: int) -> None:
    """InputError unless an image of ``width`` x ``height`` is within the sizes vald reads (any format)."""
    sides_ok = MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE
    if not sides_ok or width * height > MAX_PIXELS:
        raise InputError(
            f"image of {width}x{height} pixels is outside the supported size "
            f"({MIN_SIDE}..{MAX_SIDE} pixels per side, at most {MAX_PIXELS / 1e6:.0f} megapixels)"
        )


def _integers(arr: NDArray[np.float64]) -> Gray:
    """Integer grey levels to [0, 1]: /65535 when they fit 16 bits, else their own min..max range."""
    low, high = float(arr.min()), float(arr.max())
    if low >= 0 and high <= 65535:
        return (arr / 65535.0).astype(np.float32)
    if high == low:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - low) / (high - low)).astype(np.float32)


def read_pil(path: Path) -> Gray:
    """PNG/JPEG/TIFF/BMP through Pillow: 8- or 16-bit grey, 32-bit integer or float grey, or RGB(A) as luminance.

    The size is checked from the header, before any pixel is decoded.  Integer images are divided by
    65535 when every value fits in 16 bits unsigned, and mapped from their own minimum..maximum otherwise
    (signed or 32-bit data); float images must be finite and are clipped to [0, 1].
    """
    try:
        with warnings.catch_warnings():  # the size is checked here, against vald's own, lower limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            check_size(*img.size)
            img.load()
            if img.mode.startswith("I"):
                return _integers(np.asarray(img, dtype=np.float64))
            if img.mode == "F":
                arr = np.asarray(img, dtype=np.float32)
                if not np.isfinite(arr).all():
                    raise InputError("image has non-finite pixel values (NaN or infinity)")
                return np.clip(arr, 0.0, 1.0)
            return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0).astype(np.float32)
    except Image.DecompressionBombError:
        raise InputError(
            f"image is too large (over Pillow's decompression-bomb limit; vald reads at most {MAX_PIXELS / 1e6:.0f} "
            "megapixels)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image cannot be read ({type(exc).__name__}); is it a valid {path.suffix} file?") from None


register_reader((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"), read_pil)


def resize(image: Gray, height: int, width: int) -> Gray:
    """Bilinear resize of a float image (Pillow mode F)."""
    if image.shape == (height, width):
        return image.astype(np.float32)
    out = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How a native ``[H, W]`` image sits inside the model's square: scaled, then padded with 0."""

    native_shape: tuple[int, int]
    size: int
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def fit(cls, native_shape: tuple[int, int], size: int) -> Letterbox:
        """Keep the aspect ratio; the longer side becomes ``size``."""
        h, w = native_shape
        if h < 2 or w < 2:
            raise InputError(f"image of {h}×{w} pixels is too small")
        scale = size / max(h, w)
        hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
        return cls(native_shape, size, (size - hh) // 2, (size - ww) // 2, hh, ww)

    def to_model(self, image: Gray) -> Gray:
        """Native image -> ``[size, size]``."""
        out = np.zeros((self.size, self.size), dtype=np.float32)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = resize(
            image, self.height, self.width
        )
        return out

    def to_native(self, image: Gray) -> Gray:
        """Model-resolution image -> native ``[H, W]`` (crop the padding, resize back)."""
        crop = image[self.top : self.top + self.height, self.left : self.left + self.width]
        return resize(crop, *self.native_shape)

"""Pictures for people: a diverging colour map, a heat-map overlay with a colour bar, the triptych."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from vald.imageio import resize

CAUTION = "vald research output - not for diagnostic use"
MAX_PANEL = 768

# Diverging blue-white-red anchors (ColorBrewer RdBu, reversed): value -1 .. +1.
_ANCHORS = np.array(
    [
        [0.020, 0.188, 0.380],
        [0.263, 0.576, 0.765],
        [0.969, 0.969, 0.969],
        [0.839, 0.376, 0.302],
        [0.404, 0.000, 0.122],
    ]
)


def diverging(values: NDArray[np.floating]) -> NDArray[np.float32]:
    """Map values in [-1, 1] to RGB in [0, 1] (``[..., 3]``)."""
    pos = (np.clip(values, -1.0, 1.0) + 1.0) / 2.0 * (len(_ANCHORS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb: NDArray[np.float32] = ((1 - frac) * _ANCHORS[lo] + frac * _ANCHORS[lo + 1]).astype(np.float32)
    return rgb


def symmetric_limit(signed_map: NDArray[np.float32]) -> float:
    """Colour-scale limit: the 99.5th percentile of |M| (robust to a few extreme pixels), at least 1e-6."""
    return max(float(np.percentile(np.abs(signed_map), 99.5)), 1e-6)


MAX_ALPHA = 0.85


def heat_alpha(signed_map: NDArray[np.float32], vmax: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Colour (``[H, W, 3]`` in [0, 1]) and opacity (``[H, W, 1]``) of the heat map: opacity grows with |M|."""
    norm = signed_map / vmax
    return diverging(norm), (np.clip(np.abs(norm), 0.0, 1.0)[..., None] * MAX_ALPHA).astype(np.float32)


def heat_rgba(signed_map: NDArray[np.float32], vmax: float) -> NDArray[np.uint8]:
    """The heat map alone as RGBA (``[H, W, 4]`` uint8), to lay over the input (the HTML report)."""
    colour, alpha = heat_alpha(signed_map, vmax)
    out: NDArray[np.uint8] = (np.concatenate([colour, alpha], axis=-1) * 255 + 0.5).astype(np.uint8)
    return out


def overlay(gray01: NDArray[np.float32], signed_map: NDArray[np.float32], vmax: float) -> NDArray[np.uint8]:
    """Signed map over the grey image: colour by sign and size, opacity by |M| / vmax."""
    base = np.repeat(gray01[..., None], 3, axis=-1)
    colour, alpha = heat_alpha(signed_map, vmax)
    rgb = (1 - alpha) * base + alpha * colour
    out: NDArray[np.uint8] = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def limit_label(vmax: float) -> str:
    """The colour limit as the bar prints it: two decimals, or two significant digits below 0.01."""
    return f"{vmax:.2f}" if vmax >= 0.01 else f"{vmax:.1e}"


def colour_bar(height: int, vmax: float, width: int = 64) -> Image.Image:
    """A vertical bar from -vmax (bottom) to +vmax (top) with three labels, scaled to ``width``.

    ``width`` is a minimum: the panel widens until its longest label fits with a margin, so a label is never
    cut off at the image's edge (on a 256² image it read "+0" once).
    """
    scale = width / 64
    bar_w, text_px = max(8, round(16 * scale)), max(9, round(11 * scale))
    face = font(text_px)
    labels = (f"+{limit_label(vmax)}", "0", f"-{limit_label(vmax)}")
    gap = max(3, round(4 * scale))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(math.ceil(probe.textlength(label, font=face)) for label in labels)
    total = max(width, 2 + bar_w + gap + text_w + max(2, gap))
    bar = diverging(np.linspace(1.0, -1.0, height))[:, None, :].repeat(bar_w, axis=1)
    canvas = Image.new("RGB", (total, height), (0, 0, 0))
    canvas.paste(Image.fromarray((bar * 255).astype(np.uint8)), (2, 0))
    draw = ImageDraw.Draw(canvas)
    x = 2 + bar_w + gap
    rows = (0, height // 2 - text_px // 2, height - text_px - 2)
    for y, label in zip(rows, labels, strict=True):
        draw.text((x, max(0, y)), label, fill=(255, 255, 255), font=face)
    return canvas


def with_caution(image: Image.Image, text: str = CAUTION) -> Image.Image:
    """``image`` with the caution line burned into a dark band inside its bottom rows (same size)."""
    band = min(max(16, image.height // 40), image.height // 4)
    canvas = image.copy()
    black = 0 if image.mode in ("L", "I;16") else (0, 0, 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, image.height - band, image.width, image.height), fill=black)
    fill = 255 if image.mode == "L" else (65535 if image.mode == "I;16" else (255, 200, 0))
    draw.text((band // 4, image.height - band + band // 8), text, fill=fill, font=font(band * 3 // 4))
    return canvas


def overlay_figure(gray01: NDArray[np.float32], signed_map: NDArray[np.float32], vmax: float) -> Image.Image:
    """The heat map over the input on the input's own pixel matrix, colour bar and caution line burned in.

    The colour bar covers the rightmost columns and the caution band the bottom rows, inside the image, so
    the picture keeps the source's size (a viewer can link or overlay it with its source, and the source's
    pixel spacing holds for it).  Colours saturate at ±``vmax``.
    """
    h, w = gray01.shape
    canvas = Image.fromarray(overlay(gray01, signed_map, vmax))
    bar = colour_bar(h, vmax, width=max(16, min(w // 8, max(64, h // 10))))
    canvas.paste(bar, (w - bar.width, 0))
    return with_caution(canvas)


TITLES = ("input", "normal counterfactual", "input - counterfactual")


def triptych(
    input01: NDArray[np.float32],
    counterfactual01: NDArray[np.float32],
    signed_map: NDArray[np.float32],
    vmax: float,
    titles: tuple[str, str, str] = TITLES,
) -> Image.Image:
    """Input | counterfactual | overlay + colour bar (saturating at ±``vmax``), with ``titles`` and the caution line.

    Panels are shown at most ``MAX_PANEL`` pixels high (the full-resolution data is in the other outputs);
    ``vmax`` comes from the native-resolution map, so every output of an input shares one colour scale.
    """
    if input01.shape[0] > MAX_PANEL:
        h, w = MAX_PANEL, max(1, round(input01.shape[1] * MAX_PANEL / input01.shape[0]))
        input01, counterfactual01, signed_map = (resize(a, h, w) for a in (input01, counterfactual01, signed_map))
    h, w = input01.shape
    panels = [
        np.repeat((input01 * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1),
        np.repeat((np.clip(counterfactual01, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1),
        overlay(input01, signed_map, vmax),
    ]
    header, footer = 16, 16
    bar = colour_bar(h, vmax)
    canvas = Image.new("RGB", (3 * w + bar.width, h + header + footer), (0, 0, 0))
    draw, face = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        canvas.paste(Image.fromarray(panel), (i * w, header))
        draw.text((i * w + 4, 2), title, fill=(255, 255, 255), font=face)
    canvas.paste(bar, (3 * w, header))
    draw.text((4, h + header + 2), CAUTION, fill=(255, 200, 0), font=face)
    return canvas

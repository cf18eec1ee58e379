"""Deterministic synthetic test images: smooth gradients, a few solid shapes, a high-frequency patch.

Pure integer/float numpy formulas (no random generator), so every platform draws the same pixels.
The gradients make resampling errors visible everywhere, the solid shapes give hard edges, and the
1-pixel stripe patch is where bicubic filtering differs most between implementations.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _rgb_canvas(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u = x / max(width - 1, 1)
    v = y / max(height - 1, 1)
    red = 40 + 180 * u
    green = 30 + 190 * v
    blue = 128 + 90 * np.sin(2 * np.pi * (u + 0.5 * v))
    canvas = np.stack([red, green, blue], axis=-1)

    # Solid shapes placed relative to the size so they survive on small images.
    cx, cy, radius = 0.3 * width, 0.35 * height, 0.18 * min(width, height)
    canvas[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = (20, 200, 60)
    x0, x1 = int(0.55 * width), int(0.85 * width)
    y0, y1 = int(0.15 * height), int(0.45 * height)
    canvas[y0:y1, x0:x1] = (230, 30, 40)
    # Triangle: below the anti-diagonal of the lower-left box.
    tx0, ty1 = 0.1 * width, 0.9 * height
    tw, th = 0.3 * width, 0.3 * height
    inside = (x >= tx0) & (y <= ty1) & ((x - tx0) / max(tw, 1) + (ty1 - y) / max(th, 1) <= 1)
    canvas[inside] = (250, 220, 30)

    # High-frequency patch: alternating 1-px black/white columns, 1/8 of the size (at least 4 px).
    pw, ph = max(width // 8, 4), max(height // 8, 4)
    px0, py0 = min(int(0.65 * width), width - pw), min(int(0.7 * height), height - ph)
    stripes = np.where((np.arange(pw) % 2) == 0, 255.0, 0.0)
    canvas[py0 : py0 + ph, px0 : px0 + pw] = stripes[None, :, None]
    return np.clip(np.floor(canvas + 0.5), 0, 255).astype(np.uint8)


def make_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """An image of the given size in mode RGB, RGBA (alpha ramp + transparent hole) or L."""
    rgb = _rgb_canvas(width, height)
    if mode == "RGB":
        return Image.fromarray(rgb, mode="RGB")
    if mode == "RGBA":
        y, x = np.mgrid[0:height, 0:width]
        alpha = np.floor(255 * (0.25 + 0.75 * x / max(width - 1, 1)) + 0.5)
        hole = (np.abs(x - 0.5 * width) < 0.1 * width) & (np.abs(y - 0.5 * height) < 0.1 * height)
        alpha[hole] = 0
        rgba = np.concatenate([rgb, alpha[..., None].astype(np.uint8)], axis=-1)
        return Image.fromarray(rgba, mode="RGBA")
    if mode == "L":
        # ITU-R 601 luma with integer weights, as PIL's own RGB->L conversion uses.
        r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        return Image.fromarray(luma.astype(np.uint8), mode="L")
    raise ValueError(f"unsupported mode {mode}")


def save_png(image: Image.Image, path) -> None:
    """Lossless PNG with fixed settings so the bytes do not change between runs."""
    image.save(path, format="PNG", optimize=False, compress_level=9)

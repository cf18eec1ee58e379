"""AnyRes geometry, multi-granularity pooling and the `spatial_unpad` merge of AVG-LLaVA.

An independent PyTorch reference written from DESIGN.md section 3; the Rust side must match it.
Conventions used throughout this file:

* image sizes are ``(width, height)`` pairs, as in the original LLaVA code;
* ``image_grid_pinpoints`` entries are read as ``[width, height]`` (original LLaVA reading; the
  transformers processor reads the same numbers as ``[height, width]``);
* a crop's projected features are a ``(576, D)`` tensor holding a 24x24 patch map row-major;
* a grid is ``(grid_w, grid_h)``: tiles across and down; tiles are listed row-major.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# LLaVA-1.6 / AVG-LLaVA defaults.
DEFAULT_PINPOINTS: list[tuple[int, int]] = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
DEFAULT_GRANULARITIES: list[int] = [36, 72, 144, 288, 576]
CROP_PX = 336
PATCHES_PER_SIDE = 24


class AnyResError(ValueError):
    """Bad input to the AnyRes / pooling / merge reference."""


def parse_pinpoints(raw) -> list[tuple[int, int]]:
    """Accept the config value: a list of pairs or a string such as "[[336, 672], ...]"."""
    if raw is None:
        return list(DEFAULT_PINPOINTS)
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise AnyResError(f"image_grid_pinpoints string is not a list literal: {raw!r}") from exc
    if not isinstance(raw, (list, tuple)) or not raw:
        raise AnyResError(f"image_grid_pinpoints must be a non-empty list, got {raw!r}")
    out = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(x, int) and x > 0 for x in pair):
            raise AnyResError(f"bad pinpoint {pair!r}: expected [width, height] positive integers")
        out.append((int(pair[0]), int(pair[1])))
    return out


def select_best_resolution(size: tuple[int, int], pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-1.6 choice of the canvas (width, height) for an image of `size` (width, height).

    Maximise the number of original pixels that survive the aspect-preserving downscale (never
    counting upscaling as a gain); break ties by the least canvas area; the first candidate in list
    order wins exact ties, so list order matters.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise AnyResError(f"image size must be positive, got {width}x{height}")
    best = None
    best_key = None
    for cand_w, cand_h in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - kept
        # Strictly better only: an equal (kept, waste) keeps the earlier candidate.
        key = (kept, -waste)
        if best_key is None or key > best_key:
            best, best_key = (cand_w, cand_h), key
    return best


def grid_shape(size: tuple[int, int], pinpoints: list[tuple[int, int]], crop_px: int = CROP_PX) -> tuple[int, int]:
    """(grid_w, grid_h): how many `crop_px` tiles across and down the chosen canvas holds."""
    canvas_w, canvas_h = select_best_resolution(size, pinpoints)
    return canvas_w // crop_px, canvas_h // crop_px


def pool_kernel(granularity: int, tokens_per_crop: int = PATCHES_PER_SIDE**2) -> tuple[int, int]:
    """(kernel_h, kernel_w) of the stride=kernel average pool that turns 576 tokens into `granularity`.

    A square window when 576/G is a perfect square; otherwise the two released non-square cases,
    576/2 -> 1x2 and 576/8 -> 2x4 (wider than tall, so the map keeps more rows than columns).
    """
    if granularity <= 0 or tokens_per_crop % granularity != 0:
        raise AnyResError(f"granularity {granularity} does not divide {tokens_per_crop}")
    ratio = tokens_per_crop // granularity
    if ratio == 2:
        return (1, 2)
    if ratio == 8:
        return (2, 4)
    side = math.isqrt(ratio)
    if side * side != ratio:
        raise AnyResError(f"granularity {granularity}: no pooling window defined for ratio {ratio}")
    return (side, side)


def pooled_map_shape(granularity: int) -> tuple[int, int]:
    """(rows, cols) of one crop's map after pooling."""
    kh, kw = pool_kernel(granularity)
    if PATCHES_PER_SIDE % kh or PATCHES_PER_SIDE % kw:
        raise AnyResError(f"granularity {granularity}: window {kh}x{kw} does not tile a 24x24 map")
    return PATCHES_PER_SIDE // kh, PATCHES_PER_SIDE // kw


def pool(features: torch.Tensor, granularity: int) -> torch.Tensor:
    """(n, 576, D) -> (n, G, D): average-pool each crop's 24x24 map, tokens row-major."""
    if features.dim() != 3 or features.shape[1] != PATCHES_PER_SIDE**2:
        raise AnyResError(f"expected (n_crops, 576, D) features, got {tuple(features.shape)}")
    n, _, dim = features.shape
    kh, kw = pool_kernel(granularity)
    grid = features.reshape(n, PATCHES_PER_SIDE, PATCHES_PER_SIDE, dim).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, kernel_size=(kh, kw), stride=(kh, kw))
    out = pooled.permute(0, 2, 3, 1).reshape(n, -1, dim)
    if out.shape[1] != granularity:
        raise AnyResError(f"pooling to {granularity} produced {out.shape[1]} tokens")
    return out


def tile_map_shape(tokens: int) -> tuple[int, int]:
    """(h, w) the merge assumes for a tile of `tokens` tokens (the rule in the released code).

    Square when `tokens` is a perfect square, else h = 2*floor(sqrt(tokens/2)), w = tokens/h. For
    288 and 72 this is 24x12 and 12x6, which is exactly the row-major layout `pool` produces, so
    the stitched map is not scrambled; it is only anisotropic (each token covers a 1:2 area).
    """
    side = math.isqrt(tokens)
    if side * side == tokens:
        return side, side
    h = 2 * int(math.sqrt(tokens / 2))
    if h == 0 or tokens % h:
        raise AnyResError(f"cannot lay out {tokens} tokens as a tile map")
    return h, tokens // h


def unpad_bounds(rows: int, cols: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of the stitched map kept by LLaVA's `unpad_image`.

    Float arithmetic follows the original order of operations (Python floats = f64):
    scale = current / original along the limiting axis, kept = int(other_original * scale),
    padding = (current - kept) // 2, keep [padding, current - padding). An odd difference
    therefore keeps one extra row/column.
    """
    orig_w, orig_h = size
    if orig_w / orig_h > cols / rows:
        scale = cols / orig_w
        kept = int(orig_h * scale)
        pad = (rows - kept) // 2
        if pad < 0:
            raise AnyResError("negative unpad padding")
        return pad, rows - pad, 0, cols
    scale = rows / orig_h
    kept = int(orig_w * scale)
    pad = (cols - kept) // 2
    if pad < 0:
        raise AnyResError("negative unpad padding")
    return 0, rows, pad, cols - pad


def unpad_scaled_length(rows: int, cols: int, size: tuple[int, int]) -> float:
    """The float `orig * scale` that `unpad_bounds` truncates (for spotting f64 noise cases).

    transformers rounds this to 7 decimals before truncating; the original code does not, so
    e.g. 26.999999999999996 keeps 26 rows/cols here and 27 in transformers.
    """
    orig_w, orig_h = size
    if orig_w / orig_h > cols / rows:
        return orig_h * (cols / orig_w)
    return orig_w * (rows / orig_h)


@dataclass
class MergeLayout:
    """Geometry of one image's merged sequence at one granularity (for reports and fixtures)."""

    granularity: int
    best_resolution: tuple[int, int]
    grid: tuple[int, int]
    tile: tuple[int, int]
    stitched: tuple[int, int]
    kept_rows: tuple[int, int]
    kept_cols: tuple[int, int]
    total: int


def merge(
    crops: torch.Tensor,
    newline: torch.Tensor,
    size: tuple[int, int],
    pinpoints: list[tuple[int, int]],
    crop_px: int = CROP_PX,
) -> tuple[torch.Tensor, MergeLayout | None]:
    """Merge one image's pooled crops (n, L, D) [base, tiles row-major...] into its token sequence.

    Returns the (tokens, D) sequence and its layout (None for the single-crop path).
    """
    if crops.dim() != 3:
        raise AnyResError(f"expected (n_crops, L, D), got {tuple(crops.shape)}")
    n, tokens, dim = crops.shape
    if newline.shape != (dim,):
        raise AnyResError(f"newline must have shape ({dim},), got {tuple(newline.shape)}")
    if n == 1:
        # No tiles: the crop's tokens followed by a single newline.
        return torch.cat([crops[0], newline[None, :]], dim=0), None

    best = select_best_resolution(size, pinpoints)
    grid_w, grid_h = best[0] // crop_px, best[1] // crop_px
    if grid_w * grid_h != n - 1:
        raise AnyResError(f"image {size[0]}x{size[1]} needs {grid_w}x{grid_h} tiles, got {n - 1} tile crops")
    h, w = tile_map_shape(tokens)

    # Stitch the tiles into one (rows, cols, D) canvas, tile (r, c) at block (r, c).
    canvas = crops.new_zeros(grid_h * h, grid_w * w, dim)
    for index in range(n - 1):
        r, c = divmod(index, grid_w)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = crops[1 + index].reshape(h, w, dim)

    r0, r1, c0, c1 = unpad_bounds(grid_h * h, grid_w * w, size)
    kept = canvas[r0:r1, c0:c1]
    rows = kept.shape[0]
    with_newline = torch.cat([kept, newline.expand(rows, 1, dim)], dim=1)
    tiles = with_newline.reshape(-1, dim)
    merged = torch.cat([crops[0], tiles], dim=0)
    layout = MergeLayout(
        granularity=tokens,
        best_resolution=best,
        grid=(grid_w, grid_h),
        tile=(h, w),
        stitched=(grid_h * h, grid_w * w),
        kept_rows=(r0, r1),
        kept_cols=(c0, c1),
        total=merged.shape[0],
    )
    return merged, layout


def token_total(
    size: tuple[int, int],
    granularity: int,
    pinpoints: list[tuple[int, int]] = DEFAULT_PINPOINTS,
    crop_px: int = CROP_PX,
) -> tuple[int, MergeLayout]:
    """Visual tokens of one image at one granularity, measured by running the real merge on zeros."""
    grid_w, grid_h = grid_shape(size, pinpoints, crop_px)
    crops = torch.zeros(1 + grid_w * grid_h, PATCHES_PER_SIDE**2, 1)
    pooled = pool(crops, granularity)
    merged, layout = merge(pooled, torch.zeros(1), size, pinpoints, crop_px)
    return merged.shape[0], layout

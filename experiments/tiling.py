"""Tiled inference: denoise a large image in overlapping tiles and blend them with a smooth window.

A whole-image forward pass holds every feature map of the image at once; tiles bound the memory by the
tile size. Adjacent tiles overlap by ``overlap`` pixels. In each overlap the outer quarter next to a
tile's inner edge (where the tile lacks context) gets weight 0, the middle half a raised-cosine ramp
(``sin²`` up in one tile, ``cos²`` down in the other, so the weights sum to 1) and the rest weight 1;
sides on the image border keep weight 1 up to the edge. The weighted sum is divided by the summed
weights, so a longer overlap (the last tile of a row or column is moved back to end at the border)
blends correctly too.

A model whose output at a pixel depends only on inputs within ``r`` pixels (DnCNN: ``r`` = its depth)
gives the whole-image result, to float rounding, when ``overlap // 4 >= r``. Models that pool over the
whole image (SEKG, MFI in ADFNet) never do exactly; the ramp keeps their tiles free of seams.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .protocol import denoise

__all__ = ["tile_starts", "tile_window", "denoise_tiled", "check_tiling"]


def check_tiling(tile: int, overlap: int, multiple: int = 1) -> None:
    """Raise ``ValueError`` unless ``tile`` and ``overlap`` make a tiling for a model of size ``multiple``."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if tile < multiple:
        raise ValueError(
            f"tile {tile} is smaller than the model's size multiple {multiple}; use a tile of at least {multiple} "
            f"(ideally a multiple of {multiple})"
        )
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"tile overlap must be a non-negative int, got {overlap!r}")
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """First pixel of each tile along an axis of ``size`` pixels; the last tile ends at the border.

    >>> tile_starts(100, 48, 16), tile_starts(30, 48, 16)
    ([0, 32, 52], [0])
    """
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def tile_window(length: int, overlap: int, first: bool, last: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights ``Tensor[length]`` of one tile along an axis: 0, ramp, 1 from an inner edge; 1 at the border.

    ``first``/``last``: the tile's start/end is the image border (no neighbour there). With
    ``z = overlap // 4`` and ``L = overlap − 2z``, pixel ``p`` from an inner edge weighs
    ``sin²(π/2 · clamp((p + ½ − z) / L, 0, 1))``.

    >>> [round(v, 3) for v in tile_window(8, 8, first=True, last=False).tolist()]
    [1.0, 1.0, 0.962, 0.691, 0.309, 0.038, 0.0, 0.0]
    """
    w = torch.ones(length, dtype=torch.float64)
    zero = overlap // 4
    ramp = overlap - 2 * zero
    if ramp == 0:  # no overlap: tiles are stitched
        return w.to(dtype)
    centre = torch.arange(length, dtype=torch.float64) + 0.5
    for side, border in ((centre, first), (length - centre, last)):
        if not border:
            w *= torch.sin(math.pi / 2 * ((side - zero) / ramp).clamp(0, 1)) ** 2
    return w.to(dtype)


def denoise_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, multiple: int = 1) -> torch.Tensor:
    """:func:`experiments.protocol.denoise` tile by tile, blended with :func:`tile_window`.

    Args:
        model: maps ``Tensor[B, C, h, w]`` to the same shape (each tile is padded to ``multiple``).
        x (Tensor[B, C, H, W]): the noisy images.
        tile (int): tile side in pixels; at least ``multiple``. An image no larger than one tile is
            denoised whole.
        overlap (int): pixels shared by adjacent tiles, ``0 <= overlap < tile``.
        multiple (int): the model's size multiple (ADFNet 8).

    Returns:
        Tensor[B, C, H, W], clamped to ``[0, 1]`` as :func:`~experiments.protocol.denoise` does.

    >>> out = denoise_tiled(nn.Identity(), torch.rand(1, 3, 40, 30), tile=16, overlap=8)
    >>> out.shape
    torch.Size([1, 3, 40, 30])
    """
    check_tiling(tile, overlap, multiple)
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return denoise(model, x, multiple)
    out = torch.zeros_like(x)
    norm = torch.zeros((h, w), dtype=x.dtype, device=x.device)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for i, r in enumerate(rows):
        th = min(tile, h)
        wy = tile_window(th, overlap, first=i == 0, last=i == len(rows) - 1, dtype=x.dtype).to(x.device)
        for j, c in enumerate(cols):
            tw = min(tile, w)
            wx = tile_window(tw, overlap, first=j == 0, last=j == len(cols) - 1, dtype=x.dtype).to(x.device)
            weight = wy[:, None] * wx[None, :]
            piece = denoise(model, x[..., r : r + th, c : c + tw], multiple)
            out[..., r : r + th, c : c + tw] += piece * weight
            norm[r : r + th, c : c + tw] += weight
    return out / norm

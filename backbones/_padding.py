"""Pad images to a multiple of a network's size factor and crop back (the ADFNet RGB test protocol)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["pad_to_multiple", "padding_modes"]


def padding_modes(height: int, width: int, multiple: int) -> tuple[tuple[int, str], tuple[int, str]]:
    """``((pad_bottom, mode), (pad_right, mode))`` that bring ``height × width`` to a multiple of ``multiple``.

    The mode is ``"reflect"`` (the published protocol), except on a side too short to reflect its
    padding (reflection needs ``pad < side``, so sides 1–4 when ``multiple = 8``), which falls back to
    ``"replicate"`` instead of failing inside torch.
    """
    if height < 1 or width < 1:
        raise ValueError(f"images must be at least 1×1, got {height}×{width}")
    pads = (-height) % multiple, (-width) % multiple
    modes = tuple((p, "reflect" if p < side else "replicate") for p, side in zip(pads, (height, width)))
    return modes  # type: ignore[return-value]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of ``x`` so that ``H`` and ``W`` are multiples of ``multiple``.

    Crop the result back with ``out[..., :H, :W]``. Reflect padding, with the replicate fallback of
    :func:`padding_modes` for sides shorter than their padding.

    Args:
        x (Tensor[B, C, H, W]): images.
        multiple (int): the size factor, e.g. 8 for ADFNet's three stride-2 stages.

    Returns:
        Tensor[B, C, H', W']: ``H' = ⌈H / multiple⌉·multiple``, likewise ``W'``; ``x`` itself when aligned.
    """
    (pad_h, mode_h), (pad_w, mode_w) = padding_modes(x.shape[-2], x.shape[-1], multiple)
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode=mode_h)
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode=mode_w)
    return x

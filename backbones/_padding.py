"""Pad images to a multiple of a network's size factor and crop back (the ADFNet RGB test protocol)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["pad_to_multiple", "crop", "padding_modes"]


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

    Under ``torch.export`` (ONNX export, :mod:`dynfilter.export`) the sizes are symbolic, so there is
    no branch on them: rows and columns are gathered (none added when aligned), with the same
    reflect-or-replicate rule decided on tensors; the result is the same.
    """
    if torch.compiler.is_exporting():
        return _pad_to_multiple_traced(x, multiple)
    (pad_h, mode_h), (pad_w, mode_w) = padding_modes(x.shape[-2], x.shape[-1], multiple)
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode=mode_h)
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode=mode_w)
    return x


def _padded_index(size: torch.SymInt | int, multiple: int, device: torch.device) -> torch.Tensor:
    """Source pixel of each of the ``⌈size / m⌉·m`` padded pixels, as :func:`padding_modes` pads.

    Reflected at the last pixel (``size − 2, size − 3, …``) where the side can reflect its padding, else
    replicated (``size − 1``). The choice is made on tensors, not in Python, so no guard on ``size``.
    """
    i = torch.arange((size + multiple - 1) // multiple * multiple, device=device)
    inside = i < size
    reflected = torch.where(inside, i, 2 * (size - 1) - i)
    replicated = torch.where(inside, i, size - 1)
    return torch.where(reflected.min() >= 0, reflected, replicated)


def _pad_to_multiple_traced(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """:func:`pad_to_multiple` without a branch on the size, for symbolic shapes.

    Padding by gathering rows and columns: the padded side is then ``⌈H / m⌉·m`` by construction,
    which tells the exporter that it is a multiple of ``m``.
    """
    rows = _padded_index(x.shape[-2], multiple, x.device)
    cols = _padded_index(x.shape[-1], multiple, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x[..., :height, :width]``: undo :func:`pad_to_multiple`.

    Under ``torch.export`` the crop gathers rows and columns instead of slicing, which would need a
    guard ``height <= ⌈height / m⌉·m`` that the exporter cannot prove.
    """
    if torch.compiler.is_exporting():
        x = x.index_select(-2, torch.arange(height, device=x.device))
        return x.index_select(-1, torch.arange(width, device=x.device))
    return x[..., :height, :width]

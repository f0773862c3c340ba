"""The reference (published) formulation of per-pixel dynamic filtering: unfold, multiply, sum.

This is what the ADFNet code computes (spec §3). It materialises a tensor k² times the size of the
input, so it is slow and memory hungry; it is kept as the ground truth the fast paths are tested
against, selectable with ``dynamic_filter(..., impl="unfold")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dynamic_filter_unfold"]


def dynamic_filter_unfold(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Unfold–multiply–sum dynamic filtering; inputs are assumed validated."""
    b, c, h, w = x.shape
    taps = kernel_size * kernel_size
    padding = dilation * (kernel_size - 1) // 2
    patches = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=1)
    patches = patches.view(b, c, taps, h, w)
    return (patches * kernels.view(b, c, taps, h, w)).sum(dim=2)

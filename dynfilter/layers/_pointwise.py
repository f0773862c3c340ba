"""The kernel generators' 1×1 conv, computed so that training holds one kernels-sized buffer, not two."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["pointwise_conv"]


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1 conv; while gradients are recorded, as one batched GEMM.

    oneDNN's 1×1 conv passes its output (forward) and its output's gradient (backward) through a
    blocked-layout copy. For the ``C → C·k²`` kernel generators that copy is a second tensor the size
    of the per-pixel kernels, held at the memory peak of a training step. ``bmm`` writes the NCHW
    result in place and its backward reads the gradient as it is, so the copy never exists. Without
    gradients (inference, FLOP profiles) the conv runs unchanged. Other convs are called as they are.

    Args:
        conv (nn.Conv2d): the layer, whose parameters are used.
        x (Tensor[B, C_in, H, W]): its input.

    Returns:
        Tensor[B, C_out, H, W], contiguous.

    >>> conv = nn.Conv2d(4, 36, 1)
    >>> pointwise_conv(conv, torch.randn(2, 4, 5, 3)).shape
    torch.Size([2, 36, 5, 3])
    """
    plain = (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not (plain and torch.is_grad_enabled() and x.dim() == 4):
        return conv(x)
    b, c, h, w = x.shape
    out = torch.bmm(conv.weight.view(1, conv.out_channels, c).expand(b, -1, -1), x.reshape(b, c, h * w))
    if conv.bias is not None:
        out.add_(conv.bias.view(1, -1, 1))  # in place: bmm's backward does not need its output
    return out.view(b, conv.out_channels, h, w)

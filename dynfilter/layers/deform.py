"""Modulated deformable convolution (DCNv2) whose offsets and mask come from a separate feature map.

This is the ``ModulatedDeformConvPack(extra_offset_mask=True)`` layer of the published ADFNet code
(spec §5), computed with :func:`dynfilter.functional.modulated_deform_conv2d` so that it runs on CPU and
GPU alike: by default the lean op, or ``torchvision.ops.deform_conv2d`` with ``impl = "torchvision"``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..functional import Switchable, modulated_deform_conv2d

__all__ = ["ModulatedDeformConv2d"]


class ModulatedDeformConv2d(nn.Module, Switchable):
    """DCNv2 ``k×k`` conv of ``x`` with offsets and modulation predicted from ``feat``.

    A zero-initialised ``conv3×3_{O→3·G·k²}(feat)`` is split into three equal chunks: offsets are
    ``cat(chunk1, chunk2)`` (group-major, tap-major, ``(dy, dx)`` pairs) and the mask is
    ``sigmoid(chunk3)``. At initialisation every offset is 0 and the mask is 0.5, so the layer starts
    as half a plain conv (plus its bias).

    Args:
        in_channels (int): channels of ``x``.
        out_channels (int): output channels.
        kernel_size (int): ``k`` (3 in ADFNet).
        offset_channels (int): ``O``, channels of ``feat`` (32 in ADFNet).
        deform_groups (int): ``G``, deformable groups; each covers ``in_channels / G`` contiguous channels.

    Attributes:
        impl (str): the implementation of :func:`~dynfilter.functional.modulated_deform_conv2d`
            (``"auto"``, ``"lean"`` or ``"torchvision"``); set it on a whole model with
            :func:`dynfilter.set_impls`.

    >>> ModulatedDeformConv2d(16, 16)(torch.randn(1, 16, 6, 5), torch.randn(1, 32, 6, 5)).shape
    torch.Size([1, 16, 6, 5])
    """

    impl_op = "modulated_deform_conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        offset_channels: int = 32,
        deform_groups: int = 8,
    ) -> None:
        super().__init__()
        if in_channels % deform_groups != 0:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by deform_groups ({deform_groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.deform_groups = deform_groups
        self.impl = "auto"
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset_mask = nn.Conv2d(
            offset_channels, 3 * deform_groups * kernel_size * kernel_size, kernel_size, padding=kernel_size // 2
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as nn.Conv2d for the main weight; the offset/mask conv starts at zero (spec §5).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        fan_in = self.in_channels * self.kernel_size * self.kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offset_and_mask(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets ``Tensor[B, 2·G·k², H, W]`` and mask ``Tensor[B, G·k², H, W]`` from ``feat``."""
        # cat(chunk1, chunk2) of the three equal chunks is the first two thirds: a view, no copy.
        out = self.conv_offset_mask(feat)
        split = 2 * out.shape[1] // 3
        return out[:, :split], torch.sigmoid(out[:, split:])

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offset_and_mask(feat)
        pad = self.kernel_size // 2
        return modulated_deform_conv2d(x, offset, self.weight, self.bias, padding=pad, mask=mask, impl=self.impl)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"deform_groups={self.deform_groups}"
        )

"""SEKG: spatially enhanced kernel generation (ADFNet, AAAI 2023, Fig. 3a; spec §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEKG", "sekg", "sekg_terms"]


def sekg_terms(
    x: torch.Tensor,
    spatial_weight: torch.Tensor,
    spatial_bias: torch.Tensor | None,
    channel_weight: torch.Tensor,
    channel_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEKG's two terms on explicit parameters: ``dwconv3×3(x)`` ``(B, C, H, W)`` and ``conv1d_3(avgpool(x))`` ``(B, C, 1, 1)``.

    Args:
        x (Tensor[B, C, H, W]): the features.
        spatial_weight (Tensor[C, 1, 3, 3]), spatial_bias (Tensor[C]): the depthwise conv.
        channel_weight (Tensor[1, 1, 3]), channel_bias (Tensor[1]): the 1-D conv across channels.
    """
    b, c = x.shape[:2]
    pooled = x.mean(dim=(2, 3)).view(b, 1, c)
    channel = F.conv1d(pooled, channel_weight, channel_bias, padding=1).view(b, c, 1, 1)
    return F.conv2d(x, spatial_weight, spatial_bias, padding=1, groups=c), channel


def sekg(x: torch.Tensor, *params: torch.Tensor | None) -> torch.Tensor:
    """``dwconv3×3(x) + conv1d_3(avgpool(x))``: :class:`SEKG` on explicit parameters (see :func:`sekg_terms`)."""
    spatial, channel = sekg_terms(x, *params)
    return spatial + channel


class SEKG(nn.Module):
    """Spatial context (depthwise 3×3) plus channel interaction (ECA-style 1-D conv), summed.

    ``SEKG(x) = dwconv3×3(x) + conv1d_3(avgpool(x))``, the channel term broadcast over ``H×W``.
    No normalisation, gating or activation, exactly as published. Parameters: ``10·C + 4``:

    >>> sum(p.numel() for p in SEKG(32).parameters())
    324

    Args:
        channels (int): ``C``, input and output channels.

    >>> SEKG(8)(torch.randn(2, 8, 5, 7)).shape
    torch.Size([2, 8, 5, 7])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.channel = nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sekg(x, *self.parameter_list())

    def parameter_list(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(spatial_weight, spatial_bias, channel_weight, channel_bias)``, the arguments of :func:`sekg`."""
        return self.spatial.weight, self.spatial.bias, self.channel.weight, self.channel.bias

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

"""SEKG: spatially enhanced kernel generation (ADFNet, AAAI 2023, Fig. 3a; spec §2)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEKG", "sekg_terms", "sekg_functions"]


def sekg_terms(
    x: torch.Tensor,
    spatial: Callable[[torch.Tensor], torch.Tensor],
    channel: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEKG's two terms: ``spatial(x)`` ``(B, C, H, W)`` and ``channel(avgpool(x))`` broadcast as ``(B, C, 1, 1)``.

    ``spatial`` is the depthwise 3×3 conv, ``channel`` the 1-D conv across the pooled ``(B, 1, C)`` channels:
    :class:`SEKG`'s own submodules, or :func:`sekg_functions` of their parameters (the fused path's recompute).
    """
    b, c = x.shape[:2]
    pooled = x.mean(dim=(2, 3)).view(b, 1, c)
    return spatial(x), channel(pooled).view(b, c, 1, 1)


def sekg_functions(
    spatial_weight: torch.Tensor,
    spatial_bias: torch.Tensor | None,
    channel_weight: torch.Tensor,
    channel_bias: torch.Tensor | None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """SEKG's two convs as functions of explicit parameters, for :func:`sekg_terms`."""
    groups = spatial_weight.shape[0]
    return (
        lambda x: F.conv2d(x, spatial_weight, spatial_bias, padding=1, groups=groups),
        lambda pooled: F.conv1d(pooled, channel_weight, channel_bias, padding=1),
    )


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
        spatial, channel = sekg_terms(x, self.spatial, self.channel)
        return spatial + channel

    def parameter_list(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(spatial_weight, spatial_bias, channel_weight, channel_bias)``, the arguments of :func:`sekg_functions`."""
        return self.spatial.weight, self.spatial.bias, self.channel.weight, self.channel.bias

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

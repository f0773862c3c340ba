"""SEKG: spatially enhanced kernel generation (ADFNet, AAAI 2023, Fig. 3a; spec §2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SEKG"]


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
        b, c = x.shape[:2]
        pooled = x.mean(dim=(2, 3)).view(b, 1, c)
        return self.spatial(x) + self.channel(pooled).view(b, c, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

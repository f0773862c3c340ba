"""DnCNN: residual learning of the noise with a plain conv-BN-ReLU stack.

Zhang et al., "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image Denoising", TIP 2017,
in the KAIR layout that the ADFNet extension experiments use as their baseline (spec §9).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_features, check_positive
from .registry import instantiate, register

__all__ = ["DnCNN", "BN_MOMENTUM", "BN_EPS"]

# KAIR passes momentum=0.9 straight to nn.BatchNorm2d, so in PyTorch's convention each training batch
# gets weight 0.9 in the running statistics. It is not Keras' 0.9 (which would be PyTorch's 0.1); the
# published baseline (559,363 parameters) comes from the KAIR code, so its literal setting is kept.
BN_MOMENTUM = 0.9
BN_EPS = 1e-4


class DnCNN(nn.Module):
    """DnCNN: ``out = x − body(x)``, the body predicting the noise.

    ``body`` = conv3×3 + ReLU, then ``depth − 2`` × (conv3×3 + BN + ReLU), then conv3×3; every conv has a
    bias (as in KAIR, even before BN), stride 1, padding 1. BatchNorm uses ``momentum = 0.9`` in PyTorch's
    convention and ``eps = 1e-4`` (KAIR). Parameters with BN:
    ``(9·in·c + c) + (depth − 2)·(9c² + 3c) + (9·c·in + in)``, 559,363 for the defaults:

    >>> sum(p.numel() for p in DnCNN().parameters())
    559363

    Args:
        in_channels (int): image channels (3 colour, 1 grey); input and output.
        depth (int): number of conv layers, at least 2 (17 in the paper).
        channels (int): width of the hidden layers (64 in the paper).
        batch_norm (bool): ``False`` drops the BN layers (the convs keep their biases).

    >>> DnCNN(depth=5, channels=16)(torch.rand(1, 3, 7, 9)).shape
    torch.Size([1, 3, 7, 9])
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, depth: int = 17, channels: int = 64, batch_norm: bool = True) -> None:
        super().__init__()
        check_positive(in_channels=in_channels, depth=depth, channels=channels)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm must be True or False, got {batch_norm!r}")
        if depth < 2:
            raise ValueError(f"depth counts the first and last conv, so it must be at least 2, got {depth}")
        self.in_channels = in_channels
        self.depth = depth
        self.channels = channels
        self.batch_norm = batch_norm
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM))
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x (Tensor[B, C, H, W])``, any ``H × W``; returns the same shape."""
        check_features(x, self.in_channels, "DnCNN")
        return x - self.body(x)

    def extra_repr(self) -> str:
        s = f"in_channels={self.in_channels}, depth={self.depth}, channels={self.channels}"
        return s + ("" if self.batch_norm else ", batch_norm=False")


def _create_dncnn(overrides: dict[str, Any], **defaults: Any) -> nn.Module:
    return instantiate(DnCNN, defaults, overrides)


@register
def dncnn(**kwargs: Any) -> nn.Module:
    """DnCNN-S: 17 layers of width 64 with BN (the KAIR / ADFNet-extension baseline, 559,363 parameters)."""
    return _create_dncnn(kwargs, depth=17, channels=64, batch_norm=True)

"""DCB and its static twin CB: residual blocks with a dynamic or a static middle (ADFNet Fig. 3b; spec §4)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ._checks import check_features
from .dconv import DConv

__all__ = ["DCB", "CB"]


def _conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1)


class DCB(nn.Module):
    """Dynamic convolution block: ``y = x + conv3×3(LReLU(DConv(conv3×3(x))))``.

    Parameters: ``2·(9C² + C) + DConv(C)``, e.g. 28,324 for ``C = 32``:

    >>> sum(p.numel() for p in DCB(32).parameters())
    28324

    Surgery facts (read by :mod:`dynfilter.surgery.replace`): ``residual_out``, the last layer of the
    residual branch (zeroed, the block is the identity); ``twin``, the static block it swaps with; and
    ``shared_with_twin``, its submodules that hold the same weights as the twin's (own → twin's).

    Args:
        channels (int): ``C``, input and output channels.
        init (str): initialisation of the DConv's kernel generator, ``"published"`` or ``"identity"``
            (the DConv starts as a pass-through, so the block starts as a CB whose middle conv is the
            identity); see :class:`~dynfilter.DConv`.

    >>> DCB(8)(torch.randn(1, 8, 7, 5)).shape
    torch.Size([1, 8, 7, 5])
    """

    dynamic: ClassVar[bool] = True
    residual_out: ClassVar[str] = "conv2"
    twin: ClassVar[type[nn.Module]]
    shared_with_twin: ClassVar[dict[str, str]] = {"conv1": "conv1", "conv2": "conv3"}

    def __init__(self, channels: int, init: str = "published") -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = _conv3x3(channels)
        self.dconv = DConv(channels, init=init)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = _conv3x3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "DCB")
        return x + self.conv2(self.act(self.dconv(self.conv1(x))))


class CB(nn.Module):
    """Convolution block, DCB's static twin: ``y = x + conv3×3(LReLU(conv3×3(conv3×3(x))))``.

    Parameters: ``3·(9C² + C)``, e.g. 442,752 for ``C = 128``:

    >>> sum(p.numel() for p in CB(128).parameters())
    442752

    Args:
        channels (int): ``C``, input and output channels.

    >>> CB(8)(torch.randn(1, 8, 7, 5)).shape
    torch.Size([1, 8, 7, 5])
    """

    dynamic: ClassVar[bool] = False
    residual_out: ClassVar[str] = "conv3"
    twin: ClassVar[type[nn.Module]] = DCB
    shared_with_twin: ClassVar[dict[str, str]] = {"conv1": "conv1", "conv3": "conv2"}

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = _conv3x3(channels)
        self.conv2 = _conv3x3(channels)
        self.act = nn.LeakyReLU(0.2)
        self.conv3 = _conv3x3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "CB")
        return x + self.conv3(self.act(self.conv2(self.conv1(x))))


DCB.twin = CB

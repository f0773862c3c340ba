"""MFI: multi-dimension feature integration (ADFNet, AAAI 2023, Eq. 2–5; spec §5 "MFI")."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MFI", "mfi"]


def mfi(x: torch.Tensor) -> torch.Tensor:
    r"""Channel, row and column gating with ``2·sigmoid`` gates; no parameters.

    ``x_c = 2σ(mean_{H,W} x) ⊙ x``, then ``out = x_c ⊙ (1 + 2σ(mean_{C,W} x_c) + 2σ(mean_{C,H} x_c))``.
    The row and column gates are computed from the channel-gated ``x_c``, as published.
    """
    xc = x * (2.0 * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True)))
    row = 2.0 * torch.sigmoid(xc.mean(dim=(1, 3), keepdim=True))
    col = 2.0 * torch.sigmoid(xc.mean(dim=(1, 2), keepdim=True))
    return xc * (1.0 + row + col)


class MFI(nn.Module):
    """Module form of :func:`mfi`; it has no parameters.

    >>> MFI()(torch.randn(2, 16, 5, 7)).shape
    torch.Size([2, 16, 5, 7])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mfi(x)

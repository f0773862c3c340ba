"""DConv: depthwise per-pixel dynamic convolution guided by SEKG (ADFNet, AAAI 2023, Fig. 3a; spec §3)."""

from __future__ import annotations

import torch
from torch import nn

from ..functional import Switchable, check_window
from ._checks import check_features
from ._init import check_kernel_init, init_kernel_generator
from ._pointwise import generated_filter, pointwise_conv
from .sekg import SEKG

__all__ = ["DConv"]


class DConv(nn.Module, Switchable):
    """Dynamic convolution: predict a ``k×k`` kernel per pixel and channel from ``x``, then filter ``x``.

    ``kernels = conv1×1_{C→k²C}(SEKG(x))``; ``out = dynamic_filter(x, kernels)``. Depthwise (no channel
    mixing), no bias in the filtering itself, kernels not normalised, zero padding — as published.
    Parameters: ``SEKG(C) + C·k²·C + k²·C`` with ``SEKG(C) = 10C + 4``, e.g. 9,828 for ``C = 32``:

    >>> sum(p.numel() for p in DConv(32).parameters())
    9828

    Args:
        channels (int): ``C``, input and output channels.
        kernel_size (int): ``k`` of the per-pixel kernel (the paper uses 3).
        dilation (int): tap spacing of the dynamic filter (the paper uses 1).
        init (str): ``"published"`` (PyTorch's default init of the kernel conv, as in the ADFNet code) or
            ``"identity"`` (every predicted kernel starts as the unit impulse, so ``DConv(x) = x`` at
            step 0; see :data:`dynfilter.layers.KERNEL_INITS`).

    >>> DConv(8)(torch.randn(2, 8, 7, 5)).shape
    torch.Size([2, 8, 7, 5])
    """

    impl_op = "dynamic_filter"

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1, init: str = "published") -> None:
        super().__init__()
        check_window(kernel_size, dilation)
        self.channels = channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.init = check_kernel_init(init)
        self.impl = "auto"
        self.sekg = SEKG(channels)
        self.kernel_conv = nn.Conv2d(channels, channels * kernel_size * kernel_size, 1)
        init_kernel_generator(self.kernel_conv, kernel_size, self.init)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter according to ``init``."""
        self.sekg.spatial.reset_parameters()
        self.sekg.channel.reset_parameters()
        self.kernel_conv.reset_parameters()
        init_kernel_generator(self.kernel_conv, self.kernel_size, self.init)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted per-pixel kernels, ``Tensor[B, C·k², H, W]``."""
        return pointwise_conv(self.kernel_conv, self.sekg(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "DConv")
        return generated_filter(self.impl, x, x, self.sekg, self.kernel_conv, self.kernel_size, (self.dilation,))[0]

    def extra_repr(self) -> str:
        s = f"channels={self.channels}, kernel_size={self.kernel_size}"
        s += f", dilation={self.dilation}" if self.dilation != 1 else ""
        return s + (f", init={self.init!r}" if self.init != "published" else "")

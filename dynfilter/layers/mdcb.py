"""MDCB and its static twin MCB: multi-scale blocks with shared dynamic or static dilated kernels.

ADFNet, AAAI 2023, Fig. 4; spec §5.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from ..functional import Switchable
from ._checks import check_features
from ._init import check_kernel_init, init_kernel_generator
from ._pointwise import generated_filter, pointwise_conv
from .deform import ModulatedDeformConv2d
from .mfi import MFI
from .sekg import SEKG

__all__ = ["MDCB", "MCB"]


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(dilations)
    if not dilations or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations!r}")
    return dilations


class _MultiScaleBase(nn.Module):
    """What MDCB and MCB share: the offset feature, the deformable conv, the reduction, MFI and the fuse.

    Surgery facts (see :class:`~dynfilter.DCB`): the residual branch ends with ``fuse``; the twins share
    the offset feature, the deformable conv and the fuse.
    """

    dynamic: ClassVar[bool]
    residual_out: ClassVar[str] = "fuse"
    twin: ClassVar[type[nn.Module]]
    shared_with_twin: ClassVar[dict[str, str]] = {"offset": "offset", "dcn": "dcn", "fuse": "fuse"}

    def __init__(
        self,
        channels: int,
        mid_channels: int | None,
        offset_channels: int,
        deform_groups: int,
        dilations: Sequence[int],
        use_mfi: bool,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.mid_channels = channels if mid_channels is None else mid_channels
        self.offset_channels = offset_channels
        self.deform_groups = deform_groups
        self.dilations = _check_dilations(dilations)
        mid = self.mid_channels
        self.offset = nn.Conv2d(channels, offset_channels, 3, padding=1)
        self.dcn = ModulatedDeformConv2d(channels, channels, 3, offset_channels, deform_groups)
        self.act = nn.LeakyReLU(0.2)
        self.reduce = nn.Conv2d(channels, mid, 1) if mid != channels else nn.Identity()
        self.mfi = MFI() if use_mfi else nn.Identity()
        self.fuse = nn.Conv2d((len(self.dilations) + 1) * mid, channels, 1)

    def deformed(self, x: torch.Tensor) -> torch.Tensor:
        """``LReLU(DCN(x))`` with offsets and mask from ``LReLU(conv3×3(x))``."""
        return self.act(self.dcn(x, self.act(self.offset(x))))

    def fuse_scales(self, x: torch.Tensor, scales: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.mfi(torch.cat(scales, dim=1))) + x

    def extra_repr(self) -> str:
        s = f"channels={self.channels}, mid_channels={self.mid_channels}"
        if self.offset_channels != 32 or self.deform_groups != 8:
            s += f", offset_channels={self.offset_channels}, deform_groups={self.deform_groups}"
        if self.dilations != (1, 3, 5):
            s += f", dilations={self.dilations}"
        return s


class MDCB(_MultiScaleBase, Switchable):
    """Multi-scale dynamic convolution block.

    One kernel set ``K = conv1×1_{C→9M}(SEKG(LReLU(DCN(x))))`` is shared by ``len(dilations)``
    depthwise dynamic filters of the reduced input ``x_r = conv1×1_{C→M}(x)`` (identity when
    ``M = C``); each branch is followed by its own ``LReLU(conv3×3_{M→M})``. Then
    ``out = conv1×1(MFI([x_r, x_1, x_3, x_5])) + x``.

    Args:
        channels (int): ``C``, input and output channels.
        mid_channels (int, optional): ``M``, channels of the dilated branches; defaults to ``C``.
        offset_channels (int): width of the feature that predicts the DCN offsets (32 in ADFNet).
        deform_groups (int): deformable groups of the DCN (8 in ADFNet); must divide ``C``.
        dilations (Sequence[int]): one branch per dilation of the shared 3×3 dynamic kernels.
        use_mfi (bool): ``False`` drops MFI (the paper's "w/o MFI" ablation).
        init (str): initialisation of the kernel generator, ``"published"`` or ``"identity"`` (every
            shared kernel starts as the unit impulse, so each dilated branch starts from the reduced
            input itself, as in MCB's dilation-1 branch); see :class:`~dynfilter.DConv`.

    >>> MDCB(16, 8)(torch.randn(1, 16, 9, 7)).shape
    torch.Size([1, 16, 9, 7])
    """

    dynamic = True
    impl_op = "dynamic_filter"

    def __init__(
        self,
        channels: int,
        mid_channels: int | None = None,
        offset_channels: int = 32,
        deform_groups: int = 8,
        dilations: Sequence[int] = (1, 3, 5),
        use_mfi: bool = True,
        init: str = "published",
    ) -> None:
        super().__init__(channels, mid_channels, offset_channels, deform_groups, dilations, use_mfi)
        mid = self.mid_channels
        self.init = check_kernel_init(init)
        self.impl = "auto"
        self.sekg = SEKG(channels)
        self.kernel_conv = nn.Conv2d(channels, 9 * mid, 1)
        init_kernel_generator(self.kernel_conv, 3, self.init)
        self.branches = nn.ModuleList(nn.Conv2d(mid, mid, 3, padding=1) for _ in self.dilations)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", init={self.init!r}" if self.init != "published" else "")

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The shared per-pixel kernels, ``Tensor[B, 9·M, H, W]``."""
        return pointwise_conv(self.kernel_conv, self.sekg(self.deformed(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "MDCB")
        xr = self.reduce(x)
        filtered = generated_filter(self.impl, xr, self.deformed(x), self.sekg, self.kernel_conv, 3, self.dilations)
        scales = [xr] + [self.act(conv(f)) for f, conv in zip(filtered, self.branches)]
        return self.fuse_scales(x, scales)


class MCB(_MultiScaleBase):
    """Multi-scale convolution block, MDCB's static twin.

    ``x0 = conv1×1_{C→M}(conv3×3(LReLU(DCN(x))))`` (reduction after the DCN path, as published),
    then static dilated ``LReLU(conv3×3_d(x0))`` branches, ``out = conv1×1(MFI([x0, x_1, x_3, x_5])) + x``.

    Args: as :class:`MDCB`.

    >>> MCB(16, 8)(torch.randn(1, 16, 9, 7)).shape
    torch.Size([1, 16, 9, 7])
    """

    dynamic = False
    twin = MDCB

    def __init__(
        self,
        channels: int,
        mid_channels: int | None = None,
        offset_channels: int = 32,
        deform_groups: int = 8,
        dilations: Sequence[int] = (1, 3, 5),
        use_mfi: bool = True,
    ) -> None:
        super().__init__(channels, mid_channels, offset_channels, deform_groups, dilations, use_mfi)
        mid = self.mid_channels
        self.post = nn.Conv2d(channels, channels, 3, padding=1)
        self.branches = nn.ModuleList(nn.Conv2d(mid, mid, 3, padding=d, dilation=d) for d in self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "MCB")
        x0 = self.reduce(self.post(self.deformed(x)))
        scales = [x0] + [self.act(conv(x0)) for conv in self.branches]
        return self.fuse_scales(x, scales)


MDCB.twin = MCB

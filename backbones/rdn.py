"""RDN for denoising: residual dense blocks with local and global feature fusion.

Zhang et al., "Residual Dense Network for Image Super-Resolution", CVPR 2018 (and its image-restoration
version, TPAMI 2020), at the small size of the ADFNet extension experiments (spec §9).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_features, check_positive
from .registry import instantiate, register

__all__ = ["RDB", "RDN"]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class RDB(nn.Module):
    """Residual dense block: ``layers`` densely connected conv3×3+ReLU, 1×1 local fusion, local residual.

    Layer ``i`` maps the concatenation ``[x, y_1, …, y_i]`` (``G0 + i·G`` channels) to ``G`` channels;
    ``out = conv1×1_{G0+layers·G→G0}([x, y_1, …, y_layers]) + x``. Parameters:
    ``Σ_i (9·(G0 + i·G)·G + G) + (G0 + layers·G)·G0 + G0``.

    Args:
        channels (int): ``G0``, input and output channels.
        growth (int): ``G``, the growth rate (channels each layer adds).
        layers (int): ``C``, conv layers in the block.

    >>> RDB(16, 8, 3)(torch.randn(1, 16, 5, 7)).shape
    torch.Size([1, 16, 5, 7])
    """

    def __init__(self, channels: int, growth: int, layers: int) -> None:
        super().__init__()
        check_positive(channels=channels, growth=growth, layers=layers)
        self.channels = channels
        self.growth = growth
        self.layers = layers
        self.convs = nn.ModuleList(
            nn.Sequential(_conv3x3(channels + i * growth, growth), nn.ReLU()) for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, "RDB")
        features = x
        for conv in self.convs:
            features = torch.cat((features, conv(features)), dim=1)
        return self.fuse(features) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, growth={self.growth}, layers={self.layers}"


class RDN(nn.Module):
    """Residual dense network for denoising.

    ``f₋₁ = SFE1(x)``, ``h₀ = SFE2(f₋₁)``, ``h_d = blocks[d](h_{d−1})``;
    ``out = tail(GFF([h_1, …, h_D]) + f₋₁) + x``, where GFF is a 1×1 conv ``D·G0→G0`` then a 3×3 conv,
    and the last ``+ x`` is the global input residual (``input_residual=True``). There is no upsampler.

    Any module mapping ``G0`` to ``G0`` channels at the same size may replace an element of ``blocks``:
    ``forward`` calls the elements in order and fuses all their outputs.

    Args:
        in_channels (int): image channels (3 colour, 1 grey); input and output.
        num_blocks (int): ``D``, residual dense blocks.
        channels (int): ``G0``, the feature width between blocks.
        layers_per_block (int): ``C``, conv layers per block.
        growth (int, optional): ``G``, the growth rate; defaults to ``channels`` (``G = G0`` as in the
            published small RDN).
        input_residual (bool): add the input to the output (the network predicts ``clean − noisy``).
            ``False`` is the published RDN cache, which has only the feature-level ``+ f₋₁`` residual.

    >>> RDN(num_blocks=2, channels=8, layers_per_block=2)(torch.rand(1, 3, 7, 9)).shape
    torch.Size([1, 3, 7, 9])
    """

    size_multiple = 1

    def __init__(
        self,
        in_channels: int = 3,
        num_blocks: int = 3,
        channels: int = 32,
        layers_per_block: int = 8,
        growth: int | None = None,
        input_residual: bool = True,
    ) -> None:
        super().__init__()
        growth = channels if growth is None else growth
        check_positive(
            in_channels=in_channels,
            num_blocks=num_blocks,
            channels=channels,
            layers_per_block=layers_per_block,
            growth=growth,
        )
        if not isinstance(input_residual, bool):
            raise ValueError(f"input_residual must be True or False, got {input_residual!r}")
        self.in_channels = in_channels
        self.channels = channels
        self.input_residual = input_residual
        self.sfe1 = _conv3x3(in_channels, channels)
        self.sfe2 = _conv3x3(channels, channels)
        self.blocks = nn.ModuleList(RDB(channels, growth, layers_per_block) for _ in range(num_blocks))
        self.gff = nn.Sequential(nn.Conv2d(num_blocks * channels, channels, 1), _conv3x3(channels, channels))
        self.tail = _conv3x3(channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x (Tensor[B, C, H, W])``, any ``H × W``; returns the same shape."""
        check_features(x, self.in_channels, "RDN")
        shallow = self.sfe1(x)
        h = self.sfe2(shallow)
        outputs = []
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        fused = torch.cat(outputs, dim=1)
        if fused.shape[1] != self.gff[0].in_channels:
            raise ValueError(
                f"RDN's global fusion takes {self.gff[0].in_channels} channels but its {len(self.blocks)} blocks "
                f"gave {[o.shape[1] for o in outputs]}; replaced blocks must map {self.channels} to "
                f"{self.channels} channels and keep their number"
            )
        out = self.tail(self.gff(fused) + shallow)
        return x + out if self.input_residual else out

    def extra_repr(self) -> str:
        return "" if self.input_residual else "input_residual=False"


def _create_rdn(overrides: dict[str, Any], **defaults: Any) -> nn.Module:
    return instantiate(RDN, defaults, overrides)


@register
def rdn(**kwargs: Any) -> nn.Module:
    """The paper's small RDN: 3 blocks of 8 layers, G = G0 = 32, plus a global input residual."""
    return _create_rdn(kwargs, num_blocks=3, channels=32, layers_per_block=8)

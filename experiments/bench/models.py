"""The ADFNet that the whole-model suites (``adfnet``, ``model``) time, built one way for both."""

from __future__ import annotations

from torch import nn

import dynfilter

from .harness import BenchConfig

__all__ = ["benchmark_adfnet"]


def benchmark_adfnet(config: BenchConfig) -> tuple[nn.Module, int, tuple[int, int]]:
    """ADFNet (colour, base widths; tiny widths in quick mode) on ``config.device``, its deformable offsets
    made non-zero, with the inference image side and the training batch ``(B, patch)`` to time it at.

    Trained offsets move the taps by pixels; zero-initialised ones would sample the grid points only.

    >>> model, side, (batch, patch) = benchmark_adfnet(BenchConfig(quick=True))
    >>> side, batch, patch, model.widths
    (32, 2, 16, (8, 8, 8, 16))
    """
    import backbones

    if config.quick:
        model, infer_size, train = backbones.build("adfnet", widths=(8, 8, 8, 16)), 32, (2, 16)
    else:
        model, infer_size, train = backbones.build("adfnet"), 512, (16, 128)
    for m in model.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            nn.init.normal_(m.conv_offset_mask.weight, std=0.01)
    return model.to(config.device), infer_size, train

"""inspect_plot draws every figure a capture has data for, in forward order, and refuses an empty capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynfilter import MDCB
from dynfilter.inspect import capture
from experiments.inspect_plot import feature_rows, plot_capture, plot_features, plot_kernel_maps


def test_every_figure_is_written_as_png_and_svg(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), MDCB(8, offset_channels=8))
    image = torch.rand(3, 20, 24)
    c = capture(model, image, pixels=[(4, 5)])
    paths = plot_capture(c, tmp_path, image, {"p": (4, 5)}, prefix="x-", dpi=40)
    assert sorted(p.name for p in paths) == sorted(
        f"x-{stem}.{ext}" for stem in ("features", "spectra", "kernel_maps", "kernel_tiles") for ext in ("png", "svg"))
    assert all(p.stat().st_size > 0 for p in paths)
    (block, inner), = feature_rows(c)
    assert block.name == "1" and [a.name for a in inner][-2:] == ["1.mfi", "1.fuse"]  # forward order


def test_an_empty_capture_is_refused_with_the_reason(tmp_path):
    c = capture(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.rand(3, 8, 8), [])
    with pytest.raises(ValueError, match="no 4-D feature maps"):
        plot_features(c, tmp_path)
    with pytest.raises(ValueError, match="no predicted kernels"):
        plot_kernel_maps(c, tmp_path)
    assert not list(tmp_path.iterdir())

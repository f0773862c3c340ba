"""DnCNN: layer order, KAIR settings, parameter counts by hand and from the published cache, residual."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.dncnn import DnCNN


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def dncnn_params_by_hand(in_ch: int, depth: int, c: int, bn: bool) -> int:
    first = 9 * in_ch * c + c
    middle = 9 * c * c + c + (2 * c if bn else 0)  # conv with bias, BN weight + bias
    last = 9 * c * in_ch + in_ch
    return first + (depth - 2) * middle + last


def test_published_baseline_count():
    # Spec §9: the KAIR-style baseline of the extension experiments has 559,363 parameters.
    assert n_params(backbones.build("dncnn")) == 559_363


@pytest.mark.parametrize("depth", [5, 10, 15])
@pytest.mark.parametrize("channels", [32, 64])
@pytest.mark.parametrize("bn", [True, False])
def test_sweep_grid_counts_by_hand(depth, channels, bn):
    with torch.device("meta"):
        model = DnCNN(3, depth, channels, bn)
    assert n_params(model) == dncnn_params_by_hand(3, depth, channels, bn)


def test_body_layer_order_and_settings():
    body = DnCNN(in_channels=1, depth=5, channels=16).body
    expected = [nn.Conv2d, nn.ReLU] + [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3 + [nn.Conv2d]
    assert [type(m) for m in body] == expected
    convs = [m for m in body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 16)] + [(16, 16)] * 3 + [(16, 1)]
    for c in convs:
        assert c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) and c.bias is not None
    for bn in (m for m in body if isinstance(m, nn.BatchNorm2d)):
        assert bn.momentum == 0.9 and bn.eps == 1e-4 and bn.affine  # KAIR's literal settings


def test_without_batch_norm_has_no_bn():
    body = DnCNN(depth=4, channels=8, batch_norm=False).body
    assert [type(m) for m in body] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]


def test_output_is_input_minus_predicted_noise():
    model = DnCNN(depth=4, channels=8).eval()
    x = torch.rand(2, 3, 11, 6)
    torch.testing.assert_close(model(x), x - model.body(x), rtol=0, atol=0)
    nn.init.zeros_(model.body[-1].weight)
    nn.init.zeros_(model.body[-1].bias)
    torch.testing.assert_close(model(x), x, rtol=0, atol=0, msg="zero noise estimate must return the input")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 1}, "at least 2"),
        ({"channels": 0}, "channels must be a positive int"),
        ({"in_channels": 2.0}, "in_channels must be a positive int"),
        ({"batch_norm": 1}, "batch_norm must be True or False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DnCNN(**kwargs)


def test_wrong_input_channels():
    with pytest.raises(ValueError, match="DnCNN expects 3 input channels, got 1"):
        DnCNN(depth=3, channels=4)(torch.rand(1, 1, 8, 8))

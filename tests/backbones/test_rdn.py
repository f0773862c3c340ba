"""RDN: parameter counts by hand, dense wiring, global fusion over whatever sits in ``blocks``, residuals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.rdn import RDB, RDN
from dynfilter import MDCB


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv(cin: int, cout: int, k: int) -> int:
    return cout * cin * k * k + cout


def rdn_params_by_hand(in_ch: int, d: int, g0: int, c: int, g: int) -> int:
    rdb = sum(conv(g0 + i * g, g, 3) for i in range(c)) + conv(g0 + c * g, g0, 1)
    return conv(in_ch, g0, 3) + conv(g0, g0, 3) + d * rdb + conv(d * g0, g0, 1) + conv(g0, g0, 3) + conv(g0, in_ch, 3)


def test_default_is_the_published_small_rdn():
    # Spec §9: D = 3, C = 8, G = G0 = 32, about 1.05M parameters (the input residual adds none).
    model = backbones.build("rdn")
    assert (len(model.blocks), model.channels, model.blocks[0].layers, model.blocks[0].growth) == (3, 32, 8, 32)
    assert n_params(model) == rdn_params_by_hand(3, 3, 32, 8, 32) == 1_047_203
    assert round(n_params(model) / 1e6, 2) == 1.05


@pytest.mark.parametrize("blocks", [3, 6, 9])
@pytest.mark.parametrize("channels", [16, 32])
def test_sweep_grid_counts_by_hand(blocks, channels):
    with torch.device("meta"):
        model = RDN(num_blocks=blocks, channels=channels)
    assert n_params(model) == rdn_params_by_hand(3, blocks, channels, 8, channels)


def test_explicit_growth():
    with torch.device("meta"):
        model = RDN(in_channels=1, num_blocks=2, channels=16, layers_per_block=3, growth=8)
    assert n_params(model) == rdn_params_by_hand(1, 2, 16, 3, 8)


def test_rdb_is_densely_connected_with_local_residual():
    block = RDB(channels=6, growth=4, layers=3)
    assert [s[0].in_channels for s in block.convs] == [6, 10, 14]
    assert block.fuse.in_channels == 18 and block.fuse.kernel_size == (1, 1)
    x = torch.randn(2, 6, 5, 7)
    nn.init.zeros_(block.fuse.weight)
    nn.init.zeros_(block.fuse.bias)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_forward_wiring_with_identity_blocks():
    # With identity blocks every block output is SFE2's output, so the whole forward can be written out.
    model = RDN(num_blocks=3, channels=8, layers_per_block=2)
    for i in range(3):
        model.blocks[i] = nn.Identity()
    x = torch.rand(1, 3, 9, 10)
    shallow = model.sfe1(x)
    h0 = model.sfe2(shallow)
    expected = x + model.tail(model.gff(torch.cat([h0, h0, h0], dim=1)) + shallow)
    torch.testing.assert_close(model(x), expected)


def test_any_c_to_c_module_can_replace_a_block():
    model = RDN(num_blocks=3, channels=16, layers_per_block=2)
    x = torch.rand(1, 3, 12, 9)
    before = model(x)
    model.blocks[1] = nn.Sequential(MDCB(16), MDCB(16), MDCB(16))
    after = model(x)
    assert after.shape == x.shape and not torch.allclose(before, after)


def test_changed_block_count_is_a_clear_error():
    model = RDN(num_blocks=2, channels=8, layers_per_block=2)
    model.blocks.append(nn.Identity())
    with pytest.raises(ValueError, match="global fusion takes 16 channels but its 3 blocks"):
        model(torch.rand(1, 3, 8, 8))


def test_global_input_residual_and_published_variant():
    x = torch.rand(2, 3, 7, 5)
    with_residual = RDN(num_blocks=2, channels=8, layers_per_block=2)
    without = RDN(num_blocks=2, channels=8, layers_per_block=2, input_residual=False)
    for model in (with_residual, without):
        nn.init.zeros_(model.tail.weight)
        nn.init.zeros_(model.tail.bias)
    torch.testing.assert_close(with_residual(x), x, rtol=0, atol=0)
    torch.testing.assert_close(without(x), torch.zeros_like(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_blocks": 0}, "num_blocks must be a positive int"),
        ({"growth": -1}, "growth must be a positive int"),
        ({"layers_per_block": 1.5}, "layers_per_block must be a positive int"),
        ({"input_residual": "yes"}, "input_residual must be True or False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RDN(**kwargs)

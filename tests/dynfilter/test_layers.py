"""The ADFNet blocks: parameter counts from spec §7, shapes, gradients, formulas and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynfilter
from dynfilter import CB, DCB, MCB, MDCB, MFI, SEKG, DConv

from .naive import dynamic_filter_loop, mfi_formula


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Spec §7, block by block (colour ADFNet, base widths).
@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: DCB(32), 28_324),
        (lambda: DCB(64), 111_940),
        (lambda: DCB(128), 445_060),
        (lambda: MDCB(32, 32), 122_620),
        (lambda: MDCB(64, 64), 283_132),
        (lambda: MDCB(128, 64), 474_428),
        (lambda: CB(32), 27_744),
        (lambda: CB(128), 442_752),
        (lambda: CB(256), 1_770_240),
        (lambda: MCB(32, 32), 122_040),
        (lambda: MCB(64, 64), 281_976),
        (lambda: MCB(128, 64), 546_424),
        (lambda: MCB(256, 128), 1_923_320),
        (lambda: MFI(), 0),
    ],
)
def test_parameter_counts_match_spec(make, expected):
    assert n_params(make()) == expected


@pytest.mark.parametrize("c", [1, 8, 32, 128])
def test_sekg_params(c):
    assert n_params(SEKG(c)) == 10 * c + 4


def test_dconv_params_by_hand():
    # SEKG 10C+4, then a 1×1 conv C→9C with bias.
    assert n_params(DConv(32)) == (10 * 32 + 4) + (32 * 9 * 32 + 9 * 32) == 9_828


def test_sekg_formula():
    m = SEKG(4)
    x = torch.randn(2, 4, 5, 6)
    spatial = nn.functional.conv2d(x, m.spatial.weight, m.spatial.bias, padding=1, groups=4)
    pooled = x.mean(dim=(2, 3))  # (B, C)
    w, b = m.channel.weight.view(3), m.channel.bias
    padded = nn.functional.pad(pooled, (1, 1))
    chan = torch.stack([padded[:, i : i + 3] @ w for i in range(4)], dim=1) + b  # 1-D conv along channels
    torch.testing.assert_close(m(x), spatial + chan.view(2, 4, 1, 1), rtol=1e-5, atol=1e-6)


def test_dconv_matches_naive_filter_of_its_kernels():
    m = DConv(3).double()
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    kernels = m.kernel_conv(m.sekg(x))
    torch.testing.assert_close(m(x), dynamic_filter_loop(x, kernels, 3, 1))


def test_mfi_matches_spec_formula():
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(MFI()(x), mfi_formula(x))


def test_mfi_gates_lie_in_0_2():
    # Constant input c: channel gate 2σ(c), so output = xc·(1 + 2σ(mean xc)·2) with xc = 2σ(c)·c.
    c = 0.7
    x = torch.full((1, 3, 4, 4), c, dtype=torch.float64)
    xc = 2 * torch.sigmoid(torch.tensor(c, dtype=torch.float64)) * c
    expected = xc * (1 + 2 * 2 * torch.sigmoid(xc))
    torch.testing.assert_close(MFI()(x), torch.full_like(x, expected.item()))


def test_mdcb_matches_naive_composition():
    torch.manual_seed(1)
    m = MDCB(8, 4, offset_channels=8, deform_groups=2).double()
    with torch.no_grad():  # non-zero offsets so the DCN path is exercised
        m.dcn.conv_offset_mask.weight.normal_(0, 0.1)
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    act = nn.LeakyReLU(0.2)
    kernels = m.kernel_conv(m.sekg(act(m.dcn(x, act(m.offset(x))))))
    xr = m.reduce(x)
    branches = [act(conv(dynamic_filter_loop(xr, kernels, 3, d))) for d, conv in zip((1, 3, 5), m.branches)]
    expected = m.fuse(mfi_formula(torch.cat([xr] + branches, dim=1))) + x
    torch.testing.assert_close(m(x), expected)


def test_mcb_reduces_after_dcn_path():
    m = MCB(8, 4, offset_channels=8, deform_groups=2).double()
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    act = nn.LeakyReLU(0.2)
    x0 = m.reduce(m.post(act(m.dcn(x, act(m.offset(x))))))
    scales = [x0] + [act(nn.functional.conv2d(x0, c.weight, c.bias, padding=d, dilation=d)) for d, c in zip((1, 3, 5), m.branches)]
    torch.testing.assert_close(m(x), m.fuse(mfi_formula(torch.cat(scales, 1))) + x)


def test_dcn_starts_as_half_a_plain_conv():
    dcn = dynfilter.ModulatedDeformConv2d(16, 16, offset_channels=32, deform_groups=8)
    x = torch.randn(1, 16, 6, 7)
    plain = nn.functional.conv2d(x, dcn.weight, None, padding=1)
    torch.testing.assert_close(dcn(x, torch.randn(1, 32, 6, 7)), 0.5 * plain + dcn.bias.view(1, -1, 1, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [lambda: SEKG(16), lambda: DConv(16), lambda: DCB(16), lambda: CB(16), lambda: MDCB(16, 8), lambda: MCB(16, 8), lambda: MFI()],
)
@pytest.mark.parametrize("shape", [(1, 16, 37, 53), (3, 16, 7, 5)])
def test_shapes_odd_sizes_and_batches(make, shape):
    assert make()(torch.randn(shape)).shape == shape


@pytest.mark.parametrize("make", [lambda: DConv(2), lambda: MDCB(8, 4, offset_channels=4, deform_groups=2)])
def test_gradcheck_blocks(make):
    m = make().double()
    with torch.no_grad():
        for p in m.parameters():  # move the zero-initialised offsets away from 0, where bilinear is kinked at integers
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    x = torch.randn(1, m.channels, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), atol=1e-6)


@pytest.mark.parametrize("make", [lambda: DCB(8), lambda: MDCB(8, 4), lambda: MCB(8, 4), lambda: CB(8), lambda: DConv(8)])
def test_every_parameter_gets_a_gradient(make):
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    m(torch.randn(2, 8, 9, 7)).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize("make, name", [(lambda: DConv(8), "DConv"), (lambda: DCB(8), "DCB"), (lambda: CB(8), "CB"), (lambda: MDCB(8), "MDCB"), (lambda: MCB(8), "MCB")])
def test_wrong_channels_and_rank_raise(make, name):
    m = make()
    with pytest.raises(ValueError, match=rf"{name} expects 8 input channels, got 3"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=rf"{name} expects a 4-D tensor .* got shape \(8, 5, 5\)"):
        m(torch.randn(8, 5, 5))


def test_constructor_errors():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DConv(8, kernel_size=4)
    with pytest.raises(ValueError, match="divisible by deform_groups"):
        MDCB(12)
    with pytest.raises(ValueError, match="dilations must be"):
        MDCB(8, dilations=(1, 0))


def test_use_mfi_false_drops_mfi():
    assert isinstance(MDCB(8, use_mfi=False).mfi, nn.Identity)
    assert n_params(MDCB(8, use_mfi=False)) == n_params(MDCB(8))


def test_dconv_in_a_users_sequential():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), DConv(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 3, 3, padding=1))
    out = net(torch.randn(2, 3, 21, 17))
    out.mean().backward()
    assert out.shape == (2, 3, 21, 17) and net[1].kernel_conv.weight.grad is not None

"""Kernel-generator initialisations: the published default and the pass-through ``identity``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynfilter import DCB, MDCB, SEKG, DConv

from .naive import mfi_formula


def test_published_init_is_pytorch_default_in_published_order():
    # Same random stream as building SEKG then the 1×1 conv by hand (what the ADFNet code does).
    torch.manual_seed(3)
    m = DConv(8)
    torch.manual_seed(3)
    sekg, conv = SEKG(8), nn.Conv2d(8, 72, 1)
    torch.testing.assert_close(m.kernel_conv.weight, conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(m.sekg.spatial.weight, sekg.spatial.weight, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_identity_dconv_is_exact_pass_through(k):
    m = DConv(6, kernel_size=k, init="identity")
    x = torch.randn(2, 6, 9, 7)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_identity_dconv_learns_from_the_first_step():
    m = DConv(4, init="identity")
    x = torch.randn(2, 4, 8, 8)
    (m(x) - x.flip(-1)).square().mean().backward()
    assert m.kernel_conv.weight.grad.abs().sum() > 0
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert not torch.allclose(m(x), x)


def test_identity_dcb_is_cb_with_identity_middle():
    m = DCB(8, init="identity")
    x = torch.randn(1, 8, 7, 5)
    expected = x + m.conv2(nn.functional.leaky_relu(m.conv1(x), 0.2))
    torch.testing.assert_close(m(x), expected)


def test_identity_mdcb_branches_start_from_reduced_input():
    m = MDCB(8, 4, offset_channels=8, deform_groups=2, init="identity")
    x = torch.randn(1, 8, 9, 6)
    xr = m.reduce(x)
    scales = [xr] + [nn.functional.leaky_relu(conv(xr), 0.2) for conv in m.branches]
    torch.testing.assert_close(m(x), m.fuse(mfi_formula(torch.cat(scales, 1))) + x, rtol=1e-5, atol=1e-5)


def test_reset_parameters_reapplies_init():
    m = DConv(4, init="identity")
    with torch.no_grad():
        m.kernel_conv.weight.normal_()
    m.reset_parameters()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: DConv(4, init="zero"), lambda: DCB(4, init="Identity"), lambda: MDCB(8, init="")])
def test_unknown_init_raises(make):
    with pytest.raises(ValueError, match=r"unknown init .* expected one of \['published', 'identity'\]"):
        make()


def test_init_shows_in_repr_only_when_not_default():
    assert "init" not in repr(DConv(4)) and "init='identity'" in repr(DConv(4, init="identity"))
    assert "init='identity'" in repr(MDCB(8, init="identity"))

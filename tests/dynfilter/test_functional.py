"""dynamic_filter against a naive per-pixel loop, its gradients, and its input checks."""

from __future__ import annotations

import pytest
import torch

from dynfilter.functional import dynamic_filter, dynamic_filter_impls

from .naive import dynamic_filter_loop

IMPLS = dynamic_filter_impls()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dilation", [1, 2, 3, 5])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_matches_naive_loop(impl, kernel_size, dilation):
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    kernels = torch.randn(2, 3 * kernel_size**2, 7, 5, dtype=torch.float64)
    expected = dynamic_filter_loop(x, kernels, kernel_size, dilation)
    got = dynamic_filter(x, kernels, kernel_size, dilation, impl=impl)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"impl={impl}")


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    x = torch.randn(1, 2, 6, 9, dtype=torch.float64).transpose(2, 3)  # (1, 2, 9, 6), non-contiguous
    kernels = torch.randn(1, 18, 6, 9, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(dynamic_filter(x, kernels, impl=impl), dynamic_filter_loop(x, kernels, 3, 1))


def test_is_correlation_not_convolution():
    # A kernel with a single 1 at tap (row 0, col 1) reads the pixel *above*: no flip.
    x = torch.arange(20.0).view(1, 1, 4, 5)
    kernels = torch.zeros(1, 9, 4, 5)
    kernels[:, 1] = 1.0
    out = dynamic_filter(x, kernels)
    torch.testing.assert_close(out[0, 0, 1:], x[0, 0, :-1])
    torch.testing.assert_close(out[0, 0, 0], torch.zeros(5))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dilation", [1, 3])
def test_gradcheck(impl, dilation):
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(2, 18, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: dynamic_filter(a, k, 3, dilation, impl=impl), (x, kernels))


def test_empty_batch():
    assert dynamic_filter(torch.randn(0, 3, 5, 4), torch.randn(0, 27, 5, 4)).shape == (0, 3, 5, 4)


@pytest.mark.parametrize(
    "x_shape, k_shape, kwargs, match",
    [
        ((3, 5, 4), (27, 5, 4), {}, r"x must be a 4-D tensor .* got shape \(3, 5, 4\)"),
        ((1, 3, 5, 4), (1, 26, 5, 4), {}, r"kernels must have shape .* \(1, 27, 5, 4\).* got \(1, 26, 5, 4\)"),
        ((1, 3, 5, 4), (1, 27, 5, 5), {}, r"kernels must have shape"),
        ((1, 3, 5, 4), (2, 27, 5, 4), {}, r"kernels must have shape"),
        ((1, 3, 5, 4), (1, 48, 5, 4), {"kernel_size": 4}, r"kernel_size must be odd.* got 4"),
        ((1, 3, 5, 4), (1, 27, 5, 4), {"kernel_size": 0}, r"kernel_size must be a positive int, got 0"),
        ((1, 3, 5, 4), (1, 27, 5, 4), {"dilation": 0}, r"dilation must be a positive int, got 0"),
        ((1, 3, 5, 4), (1, 27, 5, 4), {"dilation": -2}, r"dilation must be a positive int, got -2"),
        ((1, 3, 5, 4), (1, 27, 5, 4), {"impl": "nope"}, r"unknown impl 'nope'"),
        ((1, 3, 5, 4), (1, 27, 5, 4), {"kernel_dtype": torch.int64},
         r"x and kernels must be floating-point tensors, got torch.float32 and torch.int64"),
    ],
)
def test_bad_input_raises_value_error(x_shape, k_shape, kwargs, match):
    dtype = kwargs.pop("kernel_dtype", torch.float32)
    with pytest.raises(ValueError, match=match):
        dynamic_filter(torch.randn(x_shape), torch.randn(k_shape).to(dtype), **kwargs)


def test_set_impls_touches_only_switchable_modules():
    from torch import nn

    from dynfilter import DCB, set_impls
    from dynfilter.functional import Switchable

    class Users(nn.Module):  # a module of a user's own that happens to have a string `impl`
        impl = "mine"

    class Opted(nn.Module, Switchable):
        impl_op = "dynamic_filter"

    model = nn.Sequential(DCB(4), Users(), Opted())
    set_impls(model, dynamic_filter="unfold")
    assert model[0].dconv.impl == "unfold" and model[2].impl == "unfold"
    assert model[1].impl == "mine"

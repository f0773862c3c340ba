"""Functional ops of dynfilter: per-pixel dynamic filtering.

The modules in :mod:`dynfilter.layers` hold parameters and call these functions, as
``torchvision.ops.DeformConv2d`` calls ``deform_conv2d``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._reference import dynamic_filter_unfold

__all__ = ["dynamic_filter", "dynamic_filter_impls"]

_DYNAMIC_FILTER_IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]] = {
    "unfold": dynamic_filter_unfold,
}
_DEFAULT_IMPL = "unfold"


def dynamic_filter_impls() -> list[str]:
    """Names accepted by ``dynamic_filter(..., impl=...)`` besides ``"auto"``."""
    return sorted(_DYNAMIC_FILTER_IMPLS)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_dynamic_filter_args(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> None:
    """Raise ``ValueError`` unless ``x``, ``kernels``, ``kernel_size`` and ``dilation`` fit together."""
    _check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so the window has a centre tap, got {kernel_size}")
    _check_positive_int("dilation", dilation)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got shape {got}")
    b, c, h, w = x.shape
    expected = (b, c * kernel_size * kernel_size, h, w)
    if not isinstance(kernels, torch.Tensor) or tuple(kernels.shape) != expected:
        got = tuple(kernels.shape) if isinstance(kernels, torch.Tensor) else type(kernels).__name__
        raise ValueError(
            f"kernels must have shape (B, C·k², H, W) = {expected} for x of shape {tuple(x.shape)} "
            f"and kernel_size={kernel_size}, got {got}"
        )
    if kernels.device != x.device:
        raise ValueError(f"x is on {x.device} but kernels are on {kernels.device}")


def dynamic_filter(
    x: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int = 3,
    dilation: int = 1,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Apply a different depthwise ``k×k`` kernel at every pixel and channel.

    .. math::
        \text{out}[b, c, h, w] = \sum_{i, j} x[b, c, h + (i - r) d, w + (j - r) d]
        \cdot \text{kernels}[b, c k^2 + i k + j, h, w], \qquad r = (k - 1) / 2

    This is a *correlation* (the kernel is not flipped), as in ``nn.Conv2d``. Taps are row-major
    within a channel and the channel axis is outermost (``index = c·k² + tap``), which is the layout
    of the ADFNet kernel generator (spec §2–§3). Outside the image ``x`` is zero (padding
    ``d·(k−1)/2``), so the output has the input's size.

    Args:
        x (Tensor[B, C, H, W]): the features to filter.
        kernels (Tensor[B, C·k², H, W]): one kernel per pixel and channel; not normalised.
        kernel_size (int): ``k``, odd and positive.
        dilation (int): ``d``, the spacing between taps; positive.
        impl (str): ``"auto"`` (the fastest available) or one of :func:`dynamic_filter_impls`;
            ``"unfold"`` is the published unfold–multiply–sum reference.

    Returns:
        Tensor[B, C, H, W]

    >>> x = torch.randn(2, 4, 7, 5)
    >>> dynamic_filter(x, torch.randn(2, 4 * 9, 7, 5), kernel_size=3, dilation=3).shape
    torch.Size([2, 4, 7, 5])
    """
    check_dynamic_filter_args(x, kernels, kernel_size, dilation)
    name = _DEFAULT_IMPL if impl == "auto" else impl
    try:
        fn = _DYNAMIC_FILTER_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {dynamic_filter_impls()}") from None
    return fn(x, kernels, kernel_size, dilation)

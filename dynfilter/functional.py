"""Functional ops of dynfilter: per-pixel dynamic filtering and modulated deformable convolution.

The modules in :mod:`dynfilter.layers` hold parameters and call these functions, as
``torchvision.ops.DeformConv2d`` calls ``deform_conv2d``. This is the public face of :mod:`dynfilter.ops`:
it validates the arguments and picks the implementation (``impl=``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torchvision

from torch import nn

from .ops.deform_conv import modulated_deform_conv2d_op
from .ops.dynamic_filter import dynamic_filter_op
from .ops.dynamic_filter_unfold import dynamic_filter_unfold
from .ops.fused_dynamic_filter import fused_dynamic_filter_op

__all__ = [
    "Switchable",
    "dynamic_filter",
    "dynamic_filter_impls",
    "fused_dynamic_filter",
    "check_fused_dynamic_filter_args",
    "module_impl",
    "FUSED_MIN_KERNEL_VALUES",
    "unfused",
    "MODULE_IMPLS",
    "set_dynamic_filter_impl",
    "modulated_deform_conv2d",
    "modulated_deform_conv2d_impls",
    "set_impls",
    "REFERENCE_IMPLS",
]

_DYNAMIC_FILTER_IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]] = {
    "unfold": dynamic_filter_unfold,
    # The registered op ``dynfilter::dynamic_filter``: shifted-view accumulation, one graph node.
    "lean": dynamic_filter_op,
}
_DEFAULT_IMPL = "lean"

#: Implementations that only modules generating their own kernels (DConv, MDCB) take: ``"fused"`` makes the
#: kernels from the guide row by row inside the filter (:func:`fused_dynamic_filter`), so the kernel map is
#: never held. A functional call is handed the kernels, so it has nothing to fuse.
MODULE_IMPLS: dict[str, tuple[str, ...]] = {"dynamic_filter": ("fused",)}
# What ``impl="auto"`` means in those modules: fused on CPU where the kernel map would hold at least this many
# values (32 MiB in float32). Smaller maps stay in a 32 MiB last-level cache, the 1×1 conv's arithmetic decides
# the time, and oneDNN's 1×1 conv beats the fused kernel's loop there (docs/performance.md, fused section).
FUSED_MIN_KERNEL_VALUES = 1 << 23


class Switchable:
    """A module that calls one of the ops here and lets :func:`set_impls` choose its implementation.

    Subclasses name the op in the class attribute ``impl_op`` (``"dynamic_filter"`` or
    ``"modulated_deform_conv2d"``) and keep the chosen implementation in the instance attribute ``impl``
    (``"auto"`` by default). DConv, MDCB and ModulatedDeformConv2d are switchable; a module of your own
    becomes so by subclassing this mixin. :func:`set_impls` changes these modules and no others.
    """

    impl_op: str
    impl: str = "auto"


def dynamic_filter_impls() -> list[str]:
    """Names accepted by ``dynamic_filter(..., impl=...)`` besides ``"auto"``."""
    return sorted(_DYNAMIC_FILTER_IMPLS)


def set_dynamic_filter_impl(model: nn.Module, impl: str) -> nn.Module:
    """``set_impls(model, dynamic_filter=impl)``: the dynamic filter's ``impl`` on DConv and MDCB.

    >>> from dynfilter import DCB
    >>> set_dynamic_filter_impl(DCB(4), "unfold").dconv.impl
    'unfold'
    """
    return set_impls(model, dynamic_filter=impl)


def set_impls(
    model: nn.Module, *, dynamic_filter: str | None = None, modulated_deform_conv2d: str | None = None
) -> nn.Module:
    """Choose the implementation of each op for every module of ``model`` that calls it, in place.

    The modules changed are the :class:`Switchable` ones: each names its op in ``impl_op`` (DConv and
    MDCB call ``"dynamic_filter"``, ModulatedDeformConv2d ``"modulated_deform_conv2d"``) and keeps its
    implementation in ``impl``. Other modules are left alone, whatever attributes they have. ``None``
    leaves that op's modules as they are. ``set_impls(model, **REFERENCE_IMPLS)`` gives the published computation (unfold
    dynamic filtering, torchvision's deformable conv).

    Args:
        model (nn.Module): any module tree.
        dynamic_filter (str, optional): ``"auto"`` or one of :func:`dynamic_filter_impls`.
        modulated_deform_conv2d (str, optional): ``"auto"`` or one of :func:`modulated_deform_conv2d_impls`.

    Returns:
        nn.Module: ``model`` itself, for chaining.

    >>> from dynfilter import MDCB
    >>> block = set_impls(MDCB(8), **REFERENCE_IMPLS)
    >>> block.impl, block.dcn.impl
    ('unfold', 'torchvision')
    """
    chosen = {"dynamic_filter": dynamic_filter, "modulated_deform_conv2d": modulated_deform_conv2d}
    for op, impl in chosen.items():
        known = sorted([*_IMPLS[op], *MODULE_IMPLS.get(op, ())])
        if impl is not None and impl != "auto" and impl not in known:
            raise ValueError(f"unknown {op} impl {impl!r}; expected 'auto' or one of {known}")
    for module in model.modules():
        if isinstance(module, Switchable):
            impl = chosen.get(module.impl_op)
            if impl is not None:
                module.impl = impl
    return model


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_window(kernel_size: int, dilation: int) -> None:
    """Raise ``ValueError`` unless ``kernel_size`` is a positive odd int and ``dilation`` a positive int."""
    _check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so the window has a centre tap, got {kernel_size}")
    _check_positive_int("dilation", dilation)


def check_dynamic_filter_args(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> None:
    """Raise ``ValueError`` unless ``x``, ``kernels``, ``kernel_size`` and ``dilation`` fit together."""
    check_window(kernel_size, dilation)
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
    if not (x.dtype.is_floating_point and kernels.dtype.is_floating_point):
        raise ValueError(f"x and kernels must be floating-point tensors, got {x.dtype} and {kernels.dtype}")


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


def check_fused_dynamic_filter_args(
    x: torch.Tensor,
    guide: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: int,
    dilations: Sequence[int],
) -> torch.Tensor:
    """Raise ``ValueError`` unless the arguments of :func:`fused_dynamic_filter` fit; return ``weight`` as 2-D."""
    dilations = tuple(dilations)
    if not dilations:
        raise ValueError("dilations must name at least one dilation, e.g. (1,)")
    for d in dilations:
        check_window(kernel_size, d)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    b, c, h, w = x.shape
    if not isinstance(guide, torch.Tensor) or guide.dim() != 4 or (guide.shape[0], *guide.shape[2:]) != (b, h, w):
        got = tuple(guide.shape) if isinstance(guide, torch.Tensor) else type(guide).__name__
        raise ValueError(f"guide must have shape (B, G, H, W) with (B, H, W) = {(b, h, w)} of x, got {got}")
    taps = c * kernel_size * kernel_size
    if weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1):
        weight = weight.flatten(1)
    if tuple(weight.shape) != (taps, guide.shape[1]):
        raise ValueError(
            f"weight must have shape (C·k², G) = {(taps, guide.shape[1])} (or with trailing 1, 1) for x of shape "
            f"{tuple(x.shape)}, guide of shape {tuple(guide.shape)} and kernel_size={kernel_size}, got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (taps,):
        raise ValueError(f"bias must have shape (C·k²,) = {(taps,)}, got {tuple(bias.shape)}")
    tensors = [t for t in (x, guide, weight, bias) if t is not None]
    if any(t.device != x.device for t in tensors):
        raise ValueError(f"x, guide, weight and bias must be on one device, got {[str(t.device) for t in tensors]}")
    if not all(t.dtype.is_floating_point for t in tensors):
        raise ValueError(f"x, guide, weight and bias must be floating-point, got {[t.dtype for t in tensors]}")
    return weight


def fused_dynamic_filter(
    x: torch.Tensor,
    guide: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel_size: int = 3,
    dilations: Sequence[int] = (1,),
) -> list[torch.Tensor]:
    """``dynamic_filter(x, conv1×1(guide), kernel_size, d)`` for each ``d`` in ``dilations``, without the kernel map.

    The kernels ``weight · guide + bias`` are made a row at a time inside the filter and never stored; the
    backward pass makes them again (first-order gradients only). Same values as the unfused computation.

    Args:
        x (Tensor[B, C, H, W]): the features to filter.
        guide (Tensor[B, G, H, W]): what the kernels are predicted from (SEKG's output in DConv and MDCB).
        weight (Tensor[C·k², G] or Tensor[C·k², G, 1, 1]): the 1×1 conv's weight; channel-major taps.
        bias (Tensor[C·k²], optional): the 1×1 conv's bias.
        kernel_size (int): ``k``, odd.
        dilations (Sequence[int]): one output per dilation, all filtered with the same kernels.

    Returns:
        list[Tensor[B, C, H, W]]: one per dilation.

    >>> x, guide, conv = torch.randn(2, 4, 7, 5), torch.randn(2, 6, 7, 5), nn.Conv2d(6, 36, 1)
    >>> out = fused_dynamic_filter(x, guide, conv.weight, conv.bias, 3, (1, 3))
    >>> len(out), out[1].shape
    (2, torch.Size([2, 4, 7, 5]))
    >>> torch.allclose(out[1], dynamic_filter(x, conv(guide), 3, 3), atol=1e-5)
    True
    """
    weight = check_fused_dynamic_filter_args(x, guide, weight, bias, kernel_size, dilations)
    dilations = tuple(dilations)
    return fused_dynamic_filter_op(x, guide, weight, bias, kernel_size, list(dilations))


@contextlib.contextmanager
def unfused(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, kernel-generating modules on the fused path (``impl`` ``"fused"``, or ``"auto"``) run
    the lean path instead, which makes the kernel map with ``kernel_conv`` as a module call: for tools that
    hook or trace that call (:func:`dynfilter.inspect.capture`, :func:`dynfilter.complexity.profile`).
    Values are the same; each module's ``impl`` is restored afterwards.

    >>> from dynfilter import DConv
    >>> block = DConv(4)
    >>> with unfused(block):
    ...     block.impl
    'lean'
    >>> block.impl
    'auto'
    """
    changed = [
        (m, m.impl)
        for m in model.modules()
        if isinstance(m, Switchable) and m.impl_op == "dynamic_filter" and m.impl in ("auto", *MODULE_IMPLS["dynamic_filter"])
    ]
    for m, _ in changed:
        m.impl = _DEFAULT_IMPL
    try:
        yield model
    finally:
        for m, impl in changed:
            m.impl = impl


def module_impl(impl: str, x: torch.Tensor, kernel_channels: int) -> str:
    """What a kernel-generating module's ``impl`` (DConv's, MDCB's) means for its input ``x``: ``"auto"`` resolved.

    ``"auto"`` is ``"fused"`` on CPU when the kernel map, ``B·kernel_channels·H·W`` values, reaches
    :data:`FUSED_MIN_KERNEL_VALUES`, else ``"lean"``; other values are returned as they are.

    >>> module_impl("auto", torch.empty(16, 32, 128, 128), 288), module_impl("auto", torch.empty(1, 32, 64, 64), 288)
    ('fused', 'lean')
    """
    if impl != "auto":
        return impl
    b, _, h, w = x.shape
    large = b * kernel_channels * h * w >= FUSED_MIN_KERNEL_VALUES
    return "fused" if x.device.type == "cpu" and large else _DEFAULT_IMPL


def _deform_conv2d_torchvision(input, offset, weight, bias, mask, stride, padding, dilation):
    return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


_DEFORM_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    # The reference: torchvision's op (the published CUDA kernel's conventions, CPU and CUDA).
    "torchvision": _deform_conv2d_torchvision,
    # The registered op ``dynfilter::modulated_deform_conv2d``: grid_sample columns, chunked matmul.
    "lean": modulated_deform_conv2d_op,
}
# What "auto" picks, per device type: on CPU the lean op (3–9× faster than torchvision's serial column
# loop, docs/performance.md); on CUDA torchvision's fused kernel was 2–8× faster than the lean op's
# grid_sample + matmul chunks on an H200 (the lean op keeps its smaller memory; ask for it by name).
_AUTO_DEFORM_IMPL = {"cuda": "torchvision"}
_DEFAULT_DEFORM_IMPL = "lean"
_IMPLS = {"dynamic_filter": _DYNAMIC_FILTER_IMPLS, "modulated_deform_conv2d": _DEFORM_IMPLS}

# The published computation, for ``set_impls(model, **REFERENCE_IMPLS)``.
REFERENCE_IMPLS = {"dynamic_filter": "unfold", "modulated_deform_conv2d": "torchvision"}


def modulated_deform_conv2d_impls() -> list[str]:
    """Names accepted by ``modulated_deform_conv2d(..., impl=...)`` besides ``"auto"``."""
    return sorted(_DEFORM_IMPLS)


def _pair(name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return pair


def _check_tensor(name: str, t: object, shape: tuple[int, ...], what: str, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {what} = {shape}, got {got}")
    if t.device != device:
        raise ValueError(f"input is on {device} but {name} is on {t.device}")


def check_modulated_deform_conv2d_args(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    """Raise ``ValueError`` unless the operands of :func:`modulated_deform_conv2d` fit together."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor, got shape {got}")
    b, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_per_group < 1 or c % c_per_group != 0 or c_out % (c // c_per_group) != 0:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not fit input channels {c}: weight.shape[1] must "
            f"divide {c} into groups, and the groups must divide the {c_out} output channels"
        )
    taps = kh * kw
    if taps < 1 or offset.shape[1] < 2 * taps or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"offset must have 2·G·kh·kw channels for a {kh}×{kw} kernel (a multiple of {2 * taps}), "
            f"got {offset.shape[1]}"
        )
    groups = offset.shape[1] // (2 * taps)
    if c % groups != 0:
        raise ValueError(f"input channels ({c}) must be divisible by the {groups} offset groups")
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"input of size {h}×{w} is too small for a {kh}×{kw} kernel with stride {stride}, padding {padding} "
            f"and dilation {dilation}"
        )
    _check_tensor("offset", offset, (b, 2 * groups * taps, h_out, w_out), "(B, 2·G·kh·kw, H_out, W_out)", input.device)
    if mask is not None:
        _check_tensor("mask", mask, (b, groups * taps, h_out, w_out), "(B, G·kh·kw, H_out, W_out)", input.device)
    if bias is not None:
        _check_tensor("bias", bias, (c_out,), "(C_out,)", input.device)
    if weight.device != input.device:
        raise ValueError(f"input is on {input.device} but weight is on {weight.device}")


def modulated_deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    mask: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Modulated deformable convolution (DCNv2) with ``torchvision.ops.deform_conv2d``'s conventions.

    .. math::
        \text{out}[b, o, p] = \text{bias}[o] + \sum_{c, k} W[o, c, k]\,
        m_{g(c), k}[b, p]\; x_c\big(p_0(p) + p_k + \Delta p_{g(c), k}[b, p]\big)

    where ``p_0 = p·stride − padding``, ``p_k`` is tap ``k`` of the dilated ``kh×kw`` window
    (row-major), ``g(c)`` is the offset group of input channel ``c`` (``G`` contiguous blocks of
    ``Cin/G`` channels) and ``x_c(·)`` is bilinear interpolation with zeros outside the image: a
    location contributes only if ``−1 < y < H`` and ``−1 < x < W``, and each of its four
    neighbours only if inside. Offsets are group-major, then tap-major, ``(Δy, Δx)`` pairs:
    channel ``2·(g·kh·kw + k)`` holds Δy. The mask ``m`` (channel ``g·kh·kw + k``) multiplies each
    sample; ``mask=None`` means 1 (DCNv1).

    Args:
        input (Tensor[B, Cin, H, W]): the features.
        offset (Tensor[B, 2·G·kh·kw, H_out, W_out]): the sampling offsets, in pixels.
        weight (Tensor[Cout, Cin/groups, kh, kw]): the convolution weight; ``groups`` is inferred.
        bias (Tensor[Cout], optional): added to every output.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        mask (Tensor[B, G·kh·kw, H_out, W_out], optional): the modulation scalars.
        impl (str): ``"auto"`` (``"lean"``; ``"torchvision"`` on CUDA, where its kernel is faster) or one
            of :func:`modulated_deform_conv2d_impls`:
            ``"torchvision"`` is the reference; ``"lean"`` samples with ``grid_sample`` and multiplies
            in chunks of at most :data:`dynfilter.ops.deform_conv.COLUMNS_BUDGET_BYTES` of columns. They agree
            to float rounding of the sampling positions (see ``docs/performance.md``).

    Returns:
        Tensor[B, Cout, H_out, W_out]

    >>> x, w = torch.randn(2, 8, 7, 5), torch.randn(6, 8, 3, 3)
    >>> offset, mask = torch.randn(2, 2 * 4 * 9, 7, 5), torch.rand(2, 4 * 9, 7, 5)  # 4 offset groups
    >>> modulated_deform_conv2d(x, offset, w, padding=1, mask=mask).shape
    torch.Size([2, 6, 7, 5])
    """
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    check_modulated_deform_conv2d_args(input, offset, weight, bias, mask, stride, padding, dilation)
    name = _AUTO_DEFORM_IMPL.get(input.device.type, _DEFAULT_DEFORM_IMPL) if impl == "auto" else impl
    try:
        fn = _DEFORM_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {modulated_deform_conv2d_impls()}") from None
    return fn(input, offset, weight, bias, mask, list(stride), list(padding), list(dilation))

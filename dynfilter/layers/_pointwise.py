"""The kernel generators' 1×1 conv and the filters it feeds (DConv, MDCB), fused where that is the module's impl.

:func:`pointwise_conv` computes the 1×1 conv so that training holds one kernels-sized buffer, not two;
:func:`generated_filter` skips the buffer altogether on the fused path.
"""

from __future__ import annotations

import torch
from typing import Sequence

from torch import nn

from ..functional import check_fused_dynamic_filter_args, dynamic_filter, module_impl
from ..ops.fused_dynamic_filter import fused_dynamic_filter_backward_op, fused_dynamic_filter_op
from .sekg import SEKG, sekg_functions, sekg_terms

__all__ = ["pointwise_conv", "generated_filter"]


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1 conv; while gradients are recorded, as one batched GEMM.

    oneDNN's 1×1 conv passes its output (forward) and its output's gradient (backward) through a
    blocked-layout copy. For the ``C → C·k²`` kernel generators that copy is a second tensor the size
    of the per-pixel kernels, held at the memory peak of a training step. ``bmm`` writes the NCHW
    result in place and its backward reads the gradient as it is, so the copy never exists. Without
    gradients (inference, FLOP profiles) the conv runs unchanged. Other convs are called as they are.

    Args:
        conv (nn.Conv2d): the layer, whose parameters are used.
        x (Tensor[B, C_in, H, W]): its input.

    Returns:
        Tensor[B, C_out, H, W], contiguous.

    >>> conv = nn.Conv2d(4, 36, 1)
    >>> pointwise_conv(conv, torch.randn(2, 4, 5, 3)).shape
    torch.Size([2, 36, 5, 3])
    """
    plain = (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not (plain and torch.is_grad_enabled() and x.dim() == 4):
        return conv(x)
    b, c, h, w = x.shape
    out = torch.bmm(conv.weight.view(1, conv.out_channels, c).expand(b, -1, -1), x.reshape(b, c, h * w))
    if conv.bias is not None:
        out.add_(conv.bias.view(1, -1, 1))  # in place: bmm's backward does not need its output
    return out.view(b, conv.out_channels, h, w)


class _FusedGeneratedFilter(torch.autograd.Function):
    """``fused_dynamic_filter(x, SEKG(f), conv)`` saving ``x`` and ``f`` only: backward remakes ``SEKG(f)``.

    The guide is a features-sized tensor that the fused op would otherwise keep for its backward pass; SEKG
    (a depthwise 3×3 conv and a pooled 1-D conv) costs a small fraction of the kernel generation to redo.
    Both times the channel term is added into the depthwise conv's output in place, so the guide is one
    features-sized tensor, not two. Inputs: ``x, f, *sekg_params, weight, bias``; ``f`` may be ``x`` (DConv).
    """

    @staticmethod
    def forward(ctx, kernel_size, dilations, x, f, sw, sb, cw, cb, weight, bias):
        spatial, channel = sekg_terms(f, *sekg_functions(sw, sb, cw, cb))
        outs = fused_dynamic_filter_op(x, spatial.add_(channel), weight.flatten(1), bias, kernel_size, list(dilations))
        ctx.kernel_size, ctx.dilations = kernel_size, list(dilations)
        # Backward remakes SEKG's output under the autocast state forward saw, so it is the same tensor.
        device = f.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, f, sw, sb, cw, cb, weight, bias)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():  # backward(create_graph=True): a gradient of the gradient is wanted
            raise RuntimeError(
                "the fused DConv/MDCB path (impl='fused', or 'auto' on CPU for large kernel maps) has first-order gradients only; "
                "for double backward set dynfilter.set_dynamic_filter_impl(model, 'lean')"
            )
        x, f, sw, sb, cw, cb, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        device, autocast, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=autocast):
            leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip((f, sw, sb, cw, cb), needs[3:8])]
            spatial, channel = sekg_terms(leaves[0], *sekg_functions(*leaves[1:]))
        sekg_grads: list[torch.Tensor | None] = [None] * 5
        wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
        # The depthwise conv's backward needs its input and weight, not its output: adding into it is safe.
        guide = spatial.detach().add_(channel.detach())
        mask = [needs[2], bool(wanted), needs[8], needs[9] and bias is not None]
        # An output that did not reach the loss has no gradient: it contributes nothing.
        grads = [torch.zeros_like(x) if g is None else g for g in grads]
        gx, gguide, gw, gb = fused_dynamic_filter_backward_op(
            grads, x, guide, weight.flatten(1), bias, ctx.kernel_size, ctx.dilations, mask
        )
        del guide
        if wanted:
            outputs = [spatial, channel]
            upstream = [gguide, gguide.sum(dim=(2, 3), keepdim=True)]
            for i, g in zip(wanted, torch.autograd.grad(outputs, [leaves[i] for i in wanted], upstream, allow_unused=True)):
                sekg_grads[i] = g
        # When f is x (DConv), autograd adds the two gradients it gets for the one tensor.
        return (None, None, gx if mask[0] else None, *sekg_grads, gw.view_as(weight) if mask[2] else None, gb if mask[3] else None)


def generated_filter(
    impl: str, x: torch.Tensor, f: torch.Tensor, generator: SEKG, conv: nn.Conv2d, kernel_size: int, dilations: Sequence[int]
) -> list[torch.Tensor]:
    """``[dynamic_filter(x, conv(generator(f)), kernel_size, d) for d in dilations]``, the kernels made once.

    ``impl`` is the module's: ``"fused"`` (what ``"auto"`` means on CPU for large kernel maps, see
    :func:`~dynfilter.functional.module_impl`) makes the kernels inside the filter
    (:func:`~dynfilter.functional.fused_dynamic_filter`) and keeps neither them nor the guide ``generator(f)``
    for the backward pass, which remakes both; any other makes the kernel map with :func:`pointwise_conv` and
    filters it with ``dynamic_filter(..., impl=impl)``.
    """
    impl = module_impl(impl, x, conv.out_channels)
    if impl == "fused":
        check_fused_dynamic_filter_args(x, f, conv.weight, conv.bias, kernel_size, dilations)  # SEKG keeps f's shape
        params = (*generator.parameter_list(), conv.weight, conv.bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, f, *params)):
            return list(_FusedGeneratedFilter.apply(kernel_size, tuple(dilations), x, f, *params))
        # Nothing to differentiate (inference, FLOP profiles, export): the op itself, one node in a trace.
        spatial, channel = sekg_terms(f, generator.spatial, generator.channel)
        return fused_dynamic_filter_op(x, spatial.add_(channel), conv.weight.flatten(1), conv.bias, kernel_size, list(dilations))
    kernels = pointwise_conv(conv, generator(f))
    return [dynamic_filter(x, kernels, kernel_size, d, impl=impl) for d in dilations]

"""Kernel generation fused with the dynamic filter, so that the per-pixel kernel map is never held.

DConv and MDCB compute ``kernels = conv1×1(guide)`` (``guide = SEKG(·)``) and filter with them. Unfused, the
``(B, C·k², H, W)`` kernel map, nine times the features, is written, read back, and kept for the backward
pass with its gradient. The fused op makes each image row's kernels from the guide and uses them at once:

* ``dynfilter::fused_dynamic_filter(x, guide, weight, bias, kernel_size, dilations) -> Tensor[]``: one
  ``(B, C, H, W)`` output per dilation, all from the same kernels (MDCB's branches read them once);
* ``dynfilter::fused_dynamic_filter_backward(grads, x, guide, weight, bias, kernel_size, dilations, output_mask)
  -> (gx, gguide, gweight, gbias)``: the backward pass remakes the kernels a block of rows needs instead of
  storing them, so training memory does not grow with ``k²·C·H·W``.

``weight`` is the 1×1 conv's ``(C·k², G)`` matrix, ``bias`` its ``(C·k²)`` vector or ``None``. Autograd through
the backward op is not registered: gradients of first order only (``impl="lean"`` has every order).

Backends: the native C++ kernels of :mod:`.dynamic_filter_native` for CPU tensors of one dtype (float32,
float64, bfloat16); the Triton kernels of :mod:`.fused_dynamic_filter_triton` for CUDA tensors of one
floating dtype (up to three dilations); elsewhere :func:`_tiled_forward` / :func:`_tiled_backward`, torch
ops on blocks of rows (the 1×1 conv as one GEMM per block, then the unfused filter ops of
:mod:`.dynamic_filter` on the block), whose memory is one block's kernels.

MACs: ``B·H·W·C·k²·G`` for the kernels plus ``D·B·C·H·W·k²`` for the filters, the same as the unfused
1×1 conv and ``D`` dynamic filters (registered with :mod:`torch.utils.flop_counter` as twice that many
FLOPs; the backward op as twice the forward's, the gradients of the GEMM, plus ``2·D`` filters).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from . import dynamic_filter_native, fused_dynamic_filter_triton
from .dynamic_filter import filter_forward, filter_grad_input, filter_grad_kernels

__all__ = [
    "fused_forward",
    "fused_backward",
    "fused_dynamic_filter_op",
    "fused_dynamic_filter_backward_op",
    "fused_macs",
    "backend_for",
    "BLOCK_ELEMENTS",
]

# Pixels of kernels per block in the tiled torch path: a block's kernel map is BLOCK_ELEMENTS·C·k² values.
BLOCK_ELEMENTS = 1 << 14


def _halo(kernel_size: int, dilations: Sequence[int]) -> int:
    return (kernel_size - 1) // 2 * max(dilations)


def _row_blocks(height: int, width: int, halo: int) -> list[tuple[int, int]]:
    rows = max(1, BLOCK_ELEMENTS // max(width, 1), 2 * halo)
    return [(y0, min(height, y0 + rows)) for y0 in range(0, height, rows)]


def _kernels(guide: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv1×1(guide)`` on a block: ``(B, G, h, W) → (B, C·k², h, W)``."""
    b, g, h, w = guide.shape
    k = torch.matmul(weight, guide.reshape(b, g, h * w))
    if bias is not None:
        k = k + bias.view(1, -1, 1)
    return k.view(b, -1, h, w)


def _tiled_forward(x, guide, weight, bias, kernel_size: int, dilations: Sequence[int]) -> list[torch.Tensor]:
    h, w = x.shape[2:]
    out = [torch.empty_like(x) for _ in dilations]
    halo = _halo(kernel_size, dilations)
    for y0, y1 in _row_blocks(h, w, halo):
        # The block and its halo are filtered as an image of their own: the halo rows give the taps of the
        # block's rows their true neighbours, and past the image border both see zeros.
        a, e = max(0, y0 - halo), min(h, y1 + halo)
        k = _kernels(guide[:, :, a:e], weight, bias)
        xs = x[:, :, a:e].contiguous()
        for i, d in enumerate(dilations):
            out[i][:, :, y0:y1] = filter_forward(xs, k, kernel_size, d)[:, :, y0 - a : y1 - a]
    return out


def _tiled_backward(grads, x, guide, weight, bias, kernel_size: int, dilations: Sequence[int], mask: Sequence[bool]):
    b, _, h, w = x.shape
    g = guide.shape[1]
    halo = _halo(kernel_size, dilations)
    gx = torch.empty_like(x) if mask[0] else None
    gguide = torch.empty_like(guide) if mask[1] else None
    gweight = torch.zeros_like(weight) if mask[2] else None
    gbias = torch.zeros_like(bias) if (mask[3] and bias is not None) else None
    for y0, y1 in _row_blocks(h, w, halo):
        a, e = max(0, y0 - halo), min(h, y1 + halo)
        inner = slice(y0 - a, y1 - a)
        xs = x[:, :, a:e].contiguous()
        if gx is not None:
            # gx at the block's rows gathers grad · kernels from the halo rows too: both cover [a, e).
            k = _kernels(guide[:, :, a:e], weight, bias)
            acc = sum(filter_grad_input(grads[i][:, :, a:e].contiguous(), k, kernel_size, d) for i, d in enumerate(dilations))
            gx[:, :, y0:y1] = acc[:, :, inner]
        if gguide is None and gweight is None and gbias is None:
            continue
        # gK at the block's rows: grad there times x shifted, x from the halo rows.
        gk = sum(
            filter_grad_kernels(grads[i][:, :, a:e].contiguous(), xs, kernel_size, d)[:, :, inner]
            for i, d in enumerate(dilations)
        )
        gk = gk.reshape(b, -1, (y1 - y0) * w)
        if gguide is not None:
            gguide[:, :, y0:y1] = torch.matmul(weight.t(), gk).view(b, g, y1 - y0, w)
        if gweight is not None:
            gweight += torch.matmul(gk, guide[:, :, y0:y1].reshape(b, g, -1).transpose(1, 2)).sum(0)
        if gbias is not None:
            gbias += gk.sum((0, 2))
    return gx, gguide, gweight, gbias


def _native(a: torch.Tensor, *others: torch.Tensor | None):
    """The native library where every operand is a CPU tensor of ``a``'s dtype and it serves that dtype."""
    if not all(t is None or (t.device.type == "cpu" and t.dtype == a.dtype) for t in (a, *others)):
        return None
    return dynamic_filter_native.fused_library(a)


def _triton(x: torch.Tensor, *others: torch.Tensor | None, dilations: Sequence[int]) -> bool:
    return fused_dynamic_filter_triton.usable(x, *others, dilations=dilations)


def backend_for(x: torch.Tensor, guide: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                dilations: Sequence[int] = (1,)) -> str:
    """``"native"``, ``"triton"`` or ``"tiled"``: which backend computes the fused op on these operands."""
    if _native(x, guide, weight, bias) is not None:
        return "native"
    return "triton" if _triton(x, guide, weight, bias, dilations=dilations) else "tiled"


def _shape(x: torch.Tensor, guide: torch.Tensor, kernel_size: int) -> tuple[int, ...]:
    b, c, h, w = x.shape
    return (b, c, guide.shape[1], h, w, kernel_size)


def _threads(x: torch.Tensor, guide: torch.Tensor, kernel_size: int) -> int:
    b, c, h, w = x.shape
    work = b * c * h * w * kernel_size * kernel_size * guide.shape[1]
    return torch.get_num_threads() if work >= dynamic_filter_native.PARALLEL_THRESHOLD else 1


def _out_dtype(x, guide, weight) -> torch.dtype:
    """The dtype the op computes and returns in: the operands' promoted dtype."""
    return torch.promote_types(torch.promote_types(x.dtype, guide.dtype), weight.dtype)


def fused_forward(x, guide, weight, bias, kernel_size: int, dilations: Sequence[int]) -> list[torch.Tensor]:
    """``out[i] = dynamic_filter(x, conv1×1(guide), kernel_size, dilations[i])``; inputs assumed validated.

    Returns:
        One Tensor[B, C, H, W] per dilation, in the promoted dtype of the operands.
    """
    dtype = _out_dtype(x, guide, weight)
    x, guide, weight = x.to(dtype), guide.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    lib = _native(x, guide, weight, bias)
    if lib is None:
        if _triton(x, guide, weight, bias, dilations=dilations):
            return fused_dynamic_filter_triton.forward(x, guide, weight, bias, kernel_size, dilations)
        return _tiled_forward(x, guide, weight, bias, kernel_size, dilations)
    x, guide, weight = x.contiguous(), guide.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = [torch.empty_like(x) for _ in dilations]
    if x.numel():
        lib.forward(x, guide, weight, bias, out, _shape(x, guide, kernel_size), dilations, _threads(x, guide, kernel_size))
    return out


def fused_backward(grads, x, guide, weight, bias, kernel_size: int, dilations: Sequence[int], mask: Sequence[bool]):
    """Gradients of :func:`fused_forward` (``grads``: one per output) in ``(x, guide, weight, bias)``; ``None``
    where ``mask`` says not needed."""
    dtype = _out_dtype(x, guide, weight)
    grads = [g.to(dtype) for g in grads]
    x, guide, weight = x.to(dtype), guide.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    lib = _native(x, *grads, guide, weight, bias)
    if lib is None:
        if _triton(x, *grads, guide, weight, bias, dilations=dilations):
            return fused_dynamic_filter_triton.backward(grads, x, guide, weight, bias, kernel_size, dilations, mask)
        return _tiled_backward(grads, x, guide, weight, bias, kernel_size, dilations, mask)
    grads = [g.contiguous() for g in grads]
    x, guide, weight = x.contiguous(), guide.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    gx = torch.empty_like(x) if mask[0] else None
    gguide = torch.empty_like(guide) if mask[1] else None
    gweight = torch.empty_like(weight) if mask[2] else None
    gbias = torch.empty_like(bias) if (mask[3] and bias is not None) else None
    if x.numel() and guide.shape[1]:
        lib.backward(grads, x, guide, weight, bias, gx, gguide, gweight, gbias, _shape(x, guide, kernel_size), dilations,
                     _threads(x, guide, kernel_size))
    else:  # nothing to sum over: the gradients that exist are zero
        for t in (gx, gguide, gweight, gbias):
            if t is not None:
                t.zero_()
    return gx, gguide, gweight, gbias


def fused_macs(x_shape: Sequence[int], guide_channels: int, kernel_size: int, dilations: int) -> tuple[int, int]:
    """``(kernel-generation MACs, filtering MACs)`` of one fused call over ``x`` of shape ``(B, C, H, W)``."""
    b, c, h, w = x_shape
    pixels_taps = b * c * h * w * kernel_size * kernel_size
    return pixels_taps * guide_channels, pixels_taps * dilations


@torch.library.custom_op(
    "dynfilter::fused_dynamic_filter",
    mutates_args=(),
    schema="(Tensor x, Tensor guide, Tensor weight, Tensor? bias, int kernel_size, int[] dilations) -> Tensor[]",
)
def fused_dynamic_filter_op(x, guide, weight, bias, kernel_size: int, dilations: Sequence[int]) -> list[torch.Tensor]:
    """See :func:`dynfilter.functional.fused_dynamic_filter`."""
    return fused_forward(x, guide, weight, bias, kernel_size, dilations)


@torch.library.custom_op(
    "dynfilter::fused_dynamic_filter_backward",
    mutates_args=(),
    schema="(Tensor[] grads, Tensor x, Tensor guide, Tensor weight, Tensor? bias, int kernel_size, int[] dilations, "
    "bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
)
def fused_dynamic_filter_backward_op(grads, x, guide, weight, bias, kernel_size: int, dilations: Sequence[int], output_mask: Sequence[bool]):
    """Gradients in ``(x, guide, weight, bias)``; an unwanted one (``output_mask``) comes back empty."""
    grads = fused_backward(grads, x, guide, weight, bias, kernel_size, dilations, output_mask)
    # Ops return tensors, never None, and never an input itself (aliasing is not allowed).
    return tuple(x.new_empty(0) if t is None else t for t in grads)


@fused_dynamic_filter_op.register_fake
def _(x, guide, weight, bias, kernel_size, dilations):
    return [x.new_empty(x.shape, dtype=_out_dtype(x, guide, weight)) for _ in dilations]


@fused_dynamic_filter_backward_op.register_fake
def _(grads, x, guide, weight, bias, kernel_size, dilations, output_mask):
    dtype = _out_dtype(x, guide, weight)
    shapes = (x.shape, guide.shape, weight.shape, None if bias is None else bias.shape)
    return tuple(
        x.new_empty(shape, dtype=dtype) if wanted and shape is not None else x.new_empty(0, dtype=dtype)
        for wanted, shape in zip(output_mask, shapes)
    )


def _setup(ctx, inputs, output) -> None:
    x, guide, weight, bias, ctx.kernel_size, ctx.dilations = inputs
    ctx.dtypes = (x.dtype, guide.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.save_for_backward(x, guide, weight, bias)


def _backward(ctx, grads):
    x, guide, weight, bias = ctx.saved_tensors
    # An output that did not reach the loss has no gradient; it contributes nothing.
    grads = [torch.zeros_like(x) if g is None else g for g in grads]
    mask = [bool(n) for n in ctx.needs_input_grad[:4]]
    mask[3] = mask[3] and bias is not None
    grads = fused_dynamic_filter_backward_op(grads, x, guide, weight, bias, ctx.kernel_size, ctx.dilations, mask)
    out = [g.to(dt) if wanted else None for g, wanted, dt in zip(grads, mask, ctx.dtypes)]
    return (*out, None, None)


fused_dynamic_filter_op.register_autograd(_backward, setup_context=_setup)


@register_flop_formula(torch.ops.dynfilter.fused_dynamic_filter)
def _flops(x_shape, guide_shape, weight_shape, bias_shape, kernel_size, dilations, *args, out_shape=None, **kwargs) -> int:
    return 2 * sum(fused_macs(x_shape, guide_shape[1], kernel_size, len(dilations)))


@register_flop_formula(torch.ops.dynfilter.fused_dynamic_filter_backward)
def _flops_backward(grads_shape, x_shape, guide_shape, weight_shape, bias_shape, kernel_size, dilations, output_mask,
                    *args, out_shape=None, **kwargs) -> int:
    generate, filtering = fused_macs(x_shape, guide_shape[1], kernel_size, len(dilations))
    return 2 * (2 * generate + 2 * filtering)

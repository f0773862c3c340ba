"""Lean modulated deformable convolution (DCNv2): bilinear sampling by ``grid_sample``, then one matmul.

``torchvision.ops.deform_conv2d`` builds its columns on CPU with a scalar loop per sample. Here the
``k²`` deformed taps of every deformable group are sampled by one fused, vectorised
``grid_sample`` call per chunk (bilinear, zeros outside, which is torchvision's corner rule), multiplied
by the mask in place, and contracted with the weight by one matrix multiply. The backward pass uses
``grid_sample``'s own backward kernel for the input and the sampling positions.

The work is cut into chunks of whole images or whole output rows so that the sampled columns of one
chunk stay within :data:`COLUMNS_BUDGET_BYTES`. That bounds the memory and is also faster: a chunk of
a few MiB is multiplied while it is still in cache, and the allocator reuses its block.

Registered as ``dynfilter::modulated_deform_conv2d`` (one graph node, with a fake kernel and
autograd) and ``dynfilter::modulated_deform_conv2d_backward``. Inputs are validated by
:func:`dynfilter.functional.modulated_deform_conv2d`, not here.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

__all__ = [
    "COLUMNS_BUDGET_BYTES",
    "status",
    "deform_conv_forward",
    "deform_conv_backward",
    "modulated_deform_conv2d_op",
    "modulated_deform_conv2d_backward_op",
    "deform_conv_macs",
]

# Bytes of sampled columns (B·Cin·k²·Ho·Wo elements) processed at once; larger problems are cut into
# chunks of whole images, or of output rows of one image. Assign to change it. On a 2-core Zen CPU any
# budget from 2 to 32 MiB is equally fast, and 64 MiB or whole 288 MiB columns (32×512×512) 1.5–2×
# slower; the peak memory of a call is a few budgets whatever the image size.
COLUMNS_BUDGET_BYTES = 16 * 2**20

_BILINEAR, _ZEROS = 0, 0  # grid_sampler_2d's interpolation_mode and padding_mode codes


def deform_conv_macs(
    input_shape: Sequence[int], weight_shape: Sequence[int], out_hw: Sequence[int], masked: bool
) -> dict[str, int]:
    """Multiply-adds of one modulated deformable conv, the project's one convention (``docs/complexity.md``).

    ``deform_conv``: the matrix product, ``B·Cout·Ho·Wo·(Cin/groups)·kh·kw``, as a convolution.
    ``deform_sampling``: ``B·Cin·kh·kw·Ho·Wo·(4 + m)``, each sampled value a bilinear blend of 4
    neighbours plus, with a modulation mask, one multiply (``m = 1``). The offset and interpolation-weight
    arithmetic is not counted. :mod:`dynfilter.complexity` and the op's FLOP formula (2 per multiply-add)
    both count this.

    >>> deform_conv_macs([1, 8, 5, 5], [6, 8, 3, 3], (5, 5), masked=True)
    {'deform_conv': 10800, 'deform_sampling': 9000}
    """
    b, c_in = input_shape[0], input_shape[1]
    cout, cin_per_group, kh, kw = weight_shape
    pixels = out_hw[0] * out_hw[1]
    return {
        "deform_conv": b * cout * pixels * cin_per_group * kh * kw,
        "deform_sampling": b * c_in * kh * kw * pixels * (4 + int(bool(masked))),
    }


def status() -> str:
    """The lean deformable conv's column budget (``COLUMNS_BUDGET_BYTES``)."""
    return f"available; columns budget {COLUMNS_BUDGET_BYTES / 2**20:g} MiB per chunk"


def _chunks(batch: int, out_h: int, image_bytes: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(b0, b1, r0, r1)``: whole images while one fits the budget, else rows of one image."""
    if image_bytes <= budget:
        step = max(1, budget // max(image_bytes, 1))
        for b0 in range(0, batch, step):
            yield b0, min(batch, b0 + step), 0, out_h
        return
    rows = max(1, budget * out_h // image_bytes)
    for b in range(batch):
        for r0 in range(0, out_h, rows):
            yield b, b + 1, r0, min(out_h, r0 + rows)


@functools.lru_cache(maxsize=256)
def _tap_positions(
    k: int, k_other: int, rows: bool, o0: int, o1: int, stride: int, padding: int, dilation: int,
    start: int, size: int, dtype: torch.dtype, device: torch.device,
) -> torch.Tensor:
    """Normalised positions of the undeformed taps along one axis, for output positions ``o0:o1``.

    Tap ``t = i·kw + j`` of output ``o`` lies at ``o·stride − padding + (i or j)·dilation − start``
    in an axis of ``size`` pixels; ``grid_sample`` with ``align_corners=False`` maps pixel ``p`` to
    ``(2p + 1)/size − 1``. Shape ``(kh·kw, n, 1)`` for rows, ``(kh·kw, 1, n)`` for columns. Cached:
    every call and chunk of one geometry asks for the same few.
    """
    taps = torch.arange(k, dtype=torch.float64, device=device) * dilation - padding
    taps = taps.repeat_interleave(k_other) if rows else taps.repeat(k_other)
    out = torch.arange(o0, o1, dtype=torch.float64, device=device) * stride - start
    pos = taps.view(-1, 1, 1) + (out.view(1, -1, 1) if rows else out.view(1, 1, -1))
    return ((2 * pos + 1) / size - 1).to(dtype)


class _Geometry:
    """Sizes of one call, its chunks, and the sampling grid of each chunk in ``grid_sample``'s units."""

    def __init__(self, input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride, padding, dilation):
        self.b, self.c, self.h, self.w = input.shape
        self.cout, _, self.kh, self.kw = weight.shape
        self.taps = self.kh * self.kw
        self.groups = self.c // weight.shape[1]
        self.deform_groups = offset.shape[1] // (2 * self.taps)
        self.out_h, self.out_w = offset.shape[-2:]
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.dtype, self.device = input.dtype, input.device
        self._dy_range: tuple[list[list[float]], list[list[float]]] | None = None

    def chunks(self) -> Iterator[tuple[int, int, int, int]]:
        elem = torch.empty((), dtype=self.dtype).element_size()
        image_bytes = self.c * self.taps * self.out_h * self.out_w * elem
        return _chunks(self.b, self.out_h, image_bytes, COLUMNS_BUDGET_BYTES)

    def window(self, offset: torch.Tensor, b0: int, b1: int, r0: int, r1: int) -> tuple[int, int]:
        """Input rows ``lo:hi`` that the taps of output rows ``r0:r1`` can touch (all rows for whole images).

        Sampling from this window instead of the whole image gives the same values (rows outside
        it are never read, and the image's own borders stay borders) and keeps the input gradient of
        a chunk of rows the size of the window rather than of the image.
        """
        if r0 == 0 and r1 == self.out_h:
            return 0, self.h
        if self._dy_range is None:  # per image and output row, over all groups, taps and columns
            dy = offset.view(self.b, self.deform_groups * self.taps, 2, self.out_h, self.out_w)[:, :, 0]
            self._dy_range = dy.amin(dim=(1, 3)).tolist(), dy.amax(dim=(1, 3)).tolist()
        lows, highs = self._dy_range
        s, pad = self.stride[0], self.padding[0]
        first = min(r * s + lows[b][r] for b in range(b0, b1) for r in range(r0, r1)) - pad
        last = max(r * s + highs[b][r] for b in range(b0, b1) for r in range(r0, r1)) - pad + (self.kh - 1) * self.dilation[0]
        if not (math.isfinite(first) and math.isfinite(last)):  # diverged offsets: no window to speak of
            return 0, self.h
        # A row of margin on each side absorbs the rounding of the normalised positions.
        lo = min(max(math.floor(first) - 1, 0), self.h - 1)
        hi = min(max(math.floor(last) + 3, lo + 1), self.h)
        return lo, hi

    def _base(self, axis: int, r0: int, r1: int, lo: int, hi: int) -> torch.Tensor:
        """Undeformed tap positions along ``axis`` (0 = y over rows ``r0:r1``, 1 = x), normalised.

        Shape ``(k², n, 1)`` for y (relative to the input rows ``lo:hi``) and ``(k², 1, Wo)`` for x.
        """
        if axis == 0:
            args = (self.kh, self.kw, True, r0, r1, self.stride[0], self.padding[0], self.dilation[0], lo, hi - lo)
        else:
            args = (self.kw, self.kh, False, 0, self.out_w, self.stride[1], self.padding[1], self.dilation[1], 0, self.w)
        return _tap_positions(*args, self.dtype, self.device)

    def grid(self, offset: torch.Tensor, b0: int, b1: int, r0: int, r1: int, lo: int, hi: int) -> torch.Tensor:
        """``grid_sample`` grid ``(bn·G, k², n·Wo, 2)`` (x, y last) of a chunk's deformed taps in rows ``lo:hi``.

        The x and y planes are stored apart, ``(bn, G, k², 2, n, Wo)``, so that both are written by
        contiguous element-wise ops and read by ``grid_sample``'s unit-stride path.
        """
        bn, n, g = b1 - b0, r1 - r0, self.deform_groups
        # torchvision's offset layout: group-major, tap-major, (dy, dx) pairs.
        off = offset[b0:b1, :, r0:r1].view(bn, g, self.taps, 2, n, self.out_w)
        planes = torch.empty((bn, g, self.taps, 2, n, self.out_w), dtype=self.dtype, device=self.device)
        torch.add(self._base(1, r0, r1, lo, hi), off[:, :, :, 1], alpha=2 / self.w, out=planes[:, :, :, 0])
        torch.add(self._base(0, r0, r1, lo, hi), off[:, :, :, 0], alpha=2 / (hi - lo), out=planes[:, :, :, 1])
        return planes.view(bn * g, self.taps, 2, n * self.out_w).transpose(2, 3)

    def rows(self, input: torch.Tensor, b0: int, b1: int, lo: int, hi: int) -> torch.Tensor:
        """Input rows ``lo:hi`` of images ``b0:b1`` as ``(bn·G, Cin/G, hi − lo, W)``."""
        g = self.deform_groups
        return input[b0:b1, :, lo:hi].reshape((b1 - b0) * g, self.c // g, hi - lo, self.w)

    def sample(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Bilinear samples ``(bn, G, Cin/G, k², n·Wo)`` of ``x`` (from :meth:`rows`) at ``grid``, zero outside."""
        v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return v.unflatten(0, (-1, self.deform_groups))

    def mask(self, mask: torch.Tensor, b0: int, b1: int, r0: int, r1: int) -> torch.Tensor:
        """The chunk's mask as a ``(bn, G, 1, k², n, Wo)`` view, to broadcast over the group's channels."""
        return mask[b0:b1, :, r0:r1].view(b1 - b0, self.deform_groups, 1, self.taps, r1 - r0, self.out_w)

    def rows_view(self, t: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """A chunk's ``(bn, G, Cin/G, k², n·Wo)`` columns as ``(bn, G, Cin/G, k², n, Wo)``."""
        return t.view(*t.shape[:4], r1 - r0, self.out_w)

    def weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Weight as ``(groups, Cout/groups, Cin/groups·k²)``, the columns' channel-major, tap-minor order."""
        return weight.reshape(self.groups, self.cout // self.groups, -1)


def _common_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` with each image's ``(C, H, W)`` block contiguous (all the chunk views need).

    Slices along channels of a larger map, such as the offsets and mask cut from one conv's
    output, qualify without a copy.
    """
    if t is None:
        return None
    t = t.to(dtype)
    if t.dim() < 2 or t.shape[0] < 2:
        return t.contiguous()
    inner = t[0]
    return t if inner.is_contiguous() and t.stride(0) >= inner.numel() else t.contiguous()


def deform_conv_forward(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> torch.Tensor:
    """``out = bias + W ⋆ (mask · bilinear(input, p0 + p_k + Δp))``; see :func:`dynfilter.functional.modulated_deform_conv2d`.

    Shapes as torchvision's: input ``(B, Cin, H, W)``, offset ``(B, 2·G·kh·kw, Ho, Wo)``, weight
    ``(Cout, Cin/groups, kh, kw)``, mask ``(B, G·kh·kw, Ho, Wo)``; returns ``(B, Cout, Ho, Wo)`` in
    the promoted dtype of the operands.
    """
    dtype = _common_dtype(input, offset, weight, bias, mask)
    input, offset, weight, bias, mask = (_cast(t, dtype) for t in (input, offset, weight, bias, mask))
    geo = _Geometry(input, offset, weight, stride, padding, dilation)
    out = torch.empty((geo.b, geo.cout, geo.out_h * geo.out_w), dtype=dtype, device=input.device)
    if out.numel() == 0:
        return out.view(geo.b, geo.cout, geo.out_h, geo.out_w)
    w = geo.weight(weight)
    for b0, b1, r0, r1 in geo.chunks():
        # Sampling reads only what it needs: no window of rows here (it bounds the backward's input gradient).
        cols = geo.sample(geo.rows(input, b0, b1, 0, geo.h), geo.grid(offset, b0, b1, r0, r1, 0, geo.h))
        if mask is not None:
            geo.rows_view(cols, r0, r1).mul_(geo.mask(mask, b0, b1, r0, r1))
        res = torch.matmul(w, cols.view(b1 - b0, geo.groups, w.shape[-1], -1))  # (bn, groups, Cout/groups, n·Wo)
        dst = out[b0:b1, :, r0 * geo.out_w : r1 * geo.out_w]
        res = res.view(dst.shape)
        if bias is None:
            dst.copy_(res)
        else:
            torch.add(res, bias.view(1, -1, 1), out=dst)
    return out.view(geo.b, geo.cout, geo.out_h, geo.out_w)


def deform_conv_backward(
    grad: torch.Tensor,
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    needs: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(input, offset, weight, mask)`` of :func:`deform_conv_forward` (bias: ``grad.sum((0, 2, 3))``).

    ``needs`` has four flags in that order; an unneeded gradient, or that of an absent mask, comes
    back as an empty tensor. The columns are sampled again chunk by chunk rather than saved.
    """
    dtype = _common_dtype(grad, input, offset, weight, mask)
    grad, input, offset, weight, mask = (_cast(t, dtype) for t in (grad, input, offset, weight, mask))
    need_input, need_offset, need_weight, need_mask = needs
    need_mask = need_mask and mask is not None
    geo = _Geometry(input, offset, weight, stride, padding, dilation)
    empty = input.new_empty(0)
    # The chunks tile (image, output row) exactly once: offset and mask gradients are written, not summed.
    g_input = torch.zeros_like(input) if need_input else empty
    g_offset = torch.empty_like(offset) if need_offset else empty
    g_weight = torch.zeros_like(weight) if need_weight else empty
    g_mask = torch.empty_like(mask) if need_mask else empty
    if grad.numel() == 0 or not any((need_input, need_offset, need_weight, need_mask)):
        return g_input, g_offset.zero_(), g_weight, g_mask.zero_()
    w = geo.weight(weight)
    gw = geo.weight(g_weight) if need_weight else None
    go_flat = grad.view(geo.b, geo.cout, -1)
    g, cg, n_w = geo.deform_groups, geo.c // geo.deform_groups, geo.out_w
    for b0, b1, r0, r1 in geo.chunks():
        bn, n = b1 - b0, r1 - r0
        go = go_flat[b0:b1, :, r0 * n_w : r1 * n_w].reshape(bn, geo.groups, geo.cout // geo.groups, n * n_w)
        lo, hi = geo.window(offset, b0, b1, r0, r1)
        x = geo.rows(input, b0, b1, lo, hi)
        grid = geo.grid(offset, b0, b1, r0, r1, lo, hi)
        v = geo.sample(x, grid)  # unmodulated samples
        m = geo.mask(mask, b0, b1, r0, r1) if mask is not None else None
        g_cols = None
        if need_input or need_offset or need_mask:
            g_cols = torch.matmul(w.transpose(-1, -2), go).view(bn, g, cg, geo.taps, -1)
        if need_mask:
            dst = g_mask[b0:b1, :, r0:r1].view(bn, g, geo.taps, n, n_w)
            torch.sum((g_cols * v).view(bn, g, cg, geo.taps, n, n_w), dim=2, out=dst)
        if need_weight:
            cols = v if m is None else geo.rows_view(v, r0, r1).mul_(m)  # v is not needed any more
            gw.add_(torch.matmul(go, cols.view(bn, geo.groups, w.shape[-1], -1).transpose(-1, -2)).sum(0))
        if not (need_input or need_offset):
            continue
        if m is not None:
            geo.rows_view(g_cols, r0, r1).mul_(m)
        gi, gg = torch.ops.aten.grid_sampler_2d_backward(
            g_cols.view(bn * g, cg, geo.taps, n * n_w), x, grid, _BILINEAR, _ZEROS, False, [need_input, need_offset]
        )
        if need_input:
            g_input[b0:b1, :, lo:hi] += gi.view(bn, geo.c, hi - lo, geo.w)
        if need_offset:
            # d/dΔy = d/dgy · 2/(hi − lo) and d/dΔx = d/dgx · 2/W; the grid holds (x, y), the offsets (dy, dx).
            gg = gg.unflatten(2, (n, n_w)).unflatten(0, (bn, g))
            dst = g_offset[b0:b1, :, r0:r1].view(bn, g, geo.taps, 2, n, n_w)
            torch.mul(gg[..., 1], 2 / (hi - lo), out=dst[:, :, :, 0])
            torch.mul(gg[..., 0], 2 / geo.w, out=dst[:, :, :, 1])
    return g_input, g_offset, g_weight, g_mask


_SCHEMA_ARGS = "int[2] stride, int[2] padding, int[2] dilation"


@torch.library.custom_op(
    "dynfilter::modulated_deform_conv2d",
    mutates_args=(),
    schema=f"(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, {_SCHEMA_ARGS}) -> Tensor",
)
def modulated_deform_conv2d_op(input, offset, weight, bias, mask, stride, padding, dilation):
    """The lean forward as one op; see :func:`deform_conv_forward`."""
    return deform_conv_forward(input, offset, weight, bias, mask, stride, padding, dilation)


@torch.library.custom_op(
    "dynfilter::modulated_deform_conv2d_backward",
    mutates_args=(),
    schema=(
        f"(Tensor grad, Tensor input, Tensor offset, Tensor weight, Tensor? mask, {_SCHEMA_ARGS}, bool[4] needs)"
        " -> (Tensor, Tensor, Tensor, Tensor)"
    ),
)
def modulated_deform_conv2d_backward_op(grad, input, offset, weight, mask, stride, padding, dilation, needs):
    """Gradients of the lean forward as one op; see :func:`deform_conv_backward`."""
    return deform_conv_backward(grad, input, offset, weight, mask, stride, padding, dilation, needs)


@modulated_deform_conv2d_op.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):
    dtype = _common_dtype(input, offset, weight, bias, mask)
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[-2], offset.shape[-1]), dtype=dtype)


@modulated_deform_conv2d_backward_op.register_fake
def _(grad, input, offset, weight, mask, stride, padding, dilation, needs):
    dtype = _common_dtype(grad, input, offset, weight, mask)
    like = [input, offset, weight, mask]
    return tuple(
        t.new_empty(t.shape, dtype=dtype) if need and t is not None else input.new_empty(0, dtype=dtype)
        for t, need in zip(like, needs)
    )


def _setup_context(ctx, inputs, output) -> None:
    input, offset, weight, bias, mask, ctx.stride, ctx.padding, ctx.dilation = inputs
    ctx.has_bias, ctx.has_mask = bias is not None, mask is not None
    ctx.dtypes = [t.dtype if t is not None else None for t in (input, offset, weight, bias, mask)]
    ctx.save_for_backward(input, offset, weight, mask)


def _backward(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[i]) for i in (0, 1, 2, 4)]
    grads = [None, None, None, None, None]
    if any(needs):
        g_in, g_off, g_w, g_m = modulated_deform_conv2d_backward_op(
            grad, input, offset, weight, mask, ctx.stride, ctx.padding, ctx.dilation, needs
        )
        for slot, g, need in zip((0, 1, 2, 4), (g_in, g_off, g_w, g_m), needs):
            grads[slot] = g.to(ctx.dtypes[slot]) if need else None
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grads[3] = grad.sum((0, 2, 3)).to(ctx.dtypes[3])
    return (*grads, None, None, None)


modulated_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.dynfilter.modulated_deform_conv2d)
def _flops(input_shape, offset_shape, weight_shape, bias_shape=None, mask_shape=None, *args, out_shape=None, **kwargs) -> int:
    # 2 FLOPs per multiply-add of deform_conv_macs: the product and the sampling.
    return 2 * sum(deform_conv_macs(input_shape, weight_shape, offset_shape[-2:], mask_shape is not None).values())


@register_flop_formula(torch.ops.dynfilter.modulated_deform_conv2d_backward)
def _flops_backward(grad_shape, input_shape, offset_shape, weight_shape, mask_shape=None, *args, out_shape=None, **kwargs) -> int:
    # Twice the forward's multiply-adds, the usual convention: two products the size of the forward one
    # (the columns' and the weight's gradients), the columns sampled again and that sampling differentiated.
    macs = deform_conv_macs(input_shape, weight_shape, offset_shape[-2:], mask_shape is not None)
    return 4 * (macs["deform_conv"] + macs["deform_sampling"])

"""The Triton kernels behind :mod:`.dynamic_filter_triton` (imported only when a CUDA tensor needs them)."""

import torch
import triton
import triton.language as tl

__all__ = ["accumulate", "products", "accumulator_dtype"]


def accumulator_dtype(dtype: torch.dtype) -> tl.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _pixels(height, width, BLOCK: tl.constexpr):
    """This program's plane, the plane's size, its BLOCK pixel indices, which exist, and their rows and columns."""
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return tl.program_id(0).to(tl.int64), height * width, offs, offs < height * width, offs // width, offs % width


@triton.jit
def accumulate(
    v_ptr, k_ptr, out_ptr, height, width, dilation, KS: tl.constexpr, SIGN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    # SIGN = 1: out[p] = Σ_t v[p + s_t]·K_t[p]; SIGN = -1: out[p] = Σ_t v[p − s_t]·K_t[p − s_t].
    plane, hw, offs, inside, y, x = _pixels(height, width, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC)
    r = (KS - 1) // 2
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            yy = y + SIGN * (i - r) * dilation
            xx = x + SIGN * (j - r) * dilation
            ok = inside & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            src = yy * width + xx
            v = tl.load(v_ptr + plane * hw + src, mask=ok, other=0.0).to(ACC)
            if SIGN == 1:
                kpos = offs
            else:
                kpos = src
            kv = tl.load(k_ptr + (plane * (KS * KS) + i * KS + j) * hw + kpos, mask=ok, other=0.0).to(ACC)
            acc += v * kv
    tl.store(out_ptr + plane * hw + offs, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def products(g_ptr, x_ptr, out_ptr, height, width, dilation, KS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # out_t[p] = g[p]·x[p + s_t] for every tap t, each of the k² planes written once, front to back.
    plane, hw, offs, inside, y, x = _pixels(height, width, BLOCK)
    g = tl.load(g_ptr + plane * hw + offs, mask=inside, other=0.0).to(ACC)
    r = (KS - 1) // 2
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            yy = y + (i - r) * dilation
            xx = x + (j - r) * dilation
            ok = inside & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            v = tl.load(x_ptr + plane * hw + yy * width + xx, mask=ok, other=0.0).to(ACC)
            dst = out_ptr + (plane * (KS * KS) + i * KS + j) * hw + offs
            tl.store(dst, (g * v).to(out_ptr.dtype.element_ty), mask=inside)  # zero where the tap is outside

"""The Triton kernels behind :mod:`.fused_dynamic_filter_triton` (imported only when a tensor needs them).

Layouts: ``x`` and the outputs ``(B, C, H, W)``, ``guide`` ``(B, G, H, W)``, ``weight`` ``(C·k², G)`` whose
row ``c·k² + t`` makes tap ``t`` of channel ``c``. A tile is ``BLOCK_C`` channels by ``BLOCK_P`` pixels of
one image (pixels flattened row-major); up to three dilations share each tap's kernels (``ND``).
``DOT``: 0 float32 products for float32 and 16-bit operands (``input_precision="ieee"``: the unfused
values, not TF32's; a 16-bit product is exact in float32), 1 float64.
"""

import triton
import triton.language as tl

__all__ = ["forward", "backward_data", "backward_weight"]


@triton.jit
def _dot(a, b, DOT: tl.constexpr, ACC: tl.constexpr):
    if DOT == 0:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float64), b.to(tl.float64))


@triton.jit
def _kernels_at(w_ptr, bias_ptr, guide_ptr, hw, groups, rows, rows_ok, pix, pix_ok, HAS_BIAS: tl.constexpr,
                DOT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    # The 1×1 conv on a tile: K[rows, pix] = W[rows, :] @ guide[:, pix] + bias[rows], zero where pix_ok is not.
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for g0 in range(0, groups, BLOCK_G):
        gs = g0 + tl.arange(0, BLOCK_G)
        g_ok = gs < groups
        w = tl.load(w_ptr + rows[:, None] * groups + gs[None, :], mask=rows_ok[:, None] & g_ok[None, :], other=0.0)
        u = tl.load(guide_ptr + gs[:, None].to(tl.int64) * hw + pix[None, :], mask=g_ok[:, None] & pix_ok[None, :], other=0.0)
        acc += _dot(w, u, DOT, ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=rows_ok, other=0.0).to(ACC)
        acc += tl.where(pix_ok[None, :], bias[:, None], 0.0)
    return acc


@triton.jit
def _at(base, hw, cs, c_ok, pix, pix_ok, ACC: tl.constexpr):
    # Plane values at pixels ``pix`` of channels ``cs``: (BLOCK_C, BLOCK_P), zero outside.
    return tl.load(base + cs[:, None].to(tl.int64) * hw + pix[None, :], mask=c_ok[:, None] & pix_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _grads_at(g0_base, g1_base, g2_base, hw, cs, c_ok, pix, pix_ok, ND: tl.constexpr, ACC: tl.constexpr):
    # The incoming gradient of each dilation at a tile; the unused ones repeat the first (never read).
    g0 = _at(g0_base, hw, cs, c_ok, pix, pix_ok, ACC)
    g1 = g0
    g2 = g0
    if ND > 1:
        g1 = _at(g1_base, hw, cs, c_ok, pix, pix_ok, ACC)
    if ND > 2:
        g2 = _at(g2_base, hw, cs, c_ok, pix, pix_ok, ACC)
    return g0, g1, g2


@triton.jit
def _shift(y, xc, p_ok, height, width, dy, dx):
    # The flattened index of the pixel (dy, dx) away from each of the tile's, and whether it is in the image.
    yy = y + dy
    xx = xc + dx
    return yy * width + xx, p_ok & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)


@triton.jit
def forward(x_ptr, guide_ptr, w_ptr, bias_ptr, out0, out1, out2, channels, groups, height, width, d0, d1, d2,
            KS: tl.constexpr, ND: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    # out_d[c, p] = Σ_t x[c, p + s_t·d] · K[c·k² + t, p]: each tap's kernels made by one tl.dot, used by every
    # dilation at once, and dropped.
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    hw = height * width
    p_ok = offs < hw
    c_ok = cs < channels
    y = offs // width
    xc = offs % width
    xb = x_ptr + b * channels * hw
    gb = guide_ptr + b * groups * hw
    r = (KS - 1) // 2
    acc0 = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    acc1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    acc2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            kt = _kernels_at(w_ptr, bias_ptr, gb, hw, groups, cs * (KS * KS) + (i * KS + j), c_ok, offs, p_ok,
                             HAS_BIAS, DOT, ACC, BLOCK_C, BLOCK_P, BLOCK_G)
            src, ok = _shift(y, xc, p_ok, height, width, (i - r) * d0, (j - r) * d0)
            acc0 += _at(xb, hw, cs, c_ok, src, ok, ACC) * kt
            if ND > 1:
                src, ok = _shift(y, xc, p_ok, height, width, (i - r) * d1, (j - r) * d1)
                acc1 += _at(xb, hw, cs, c_ok, src, ok, ACC) * kt
            if ND > 2:
                src, ok = _shift(y, xc, p_ok, height, width, (i - r) * d2, (j - r) * d2)
                acc2 += _at(xb, hw, cs, c_ok, src, ok, ACC) * kt
    where = b * channels * hw + cs[:, None].to(tl.int64) * hw + offs[None, :]
    keep = c_ok[:, None] & p_ok[None, :]
    tl.store(out0 + where, acc0.to(out0.dtype.element_ty), mask=keep)
    if ND > 1:
        tl.store(out1 + where, acc1.to(out1.dtype.element_ty), mask=keep)
    if ND > 2:
        tl.store(out2 + where, acc2.to(out2.dtype.element_ty), mask=keep)


@triton.jit
def _grad_input_term(g_ptr, w_ptr, bias_ptr, gb, hw, groups, rows, cs, c_ok, y, xc, p_ok, height, width, dy, dx,
                     HAS_BIAS: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    # g[q − s] · K_t[q − s]: the kernels at the shifted pixels are made again, not read.
    src, ok = _shift(y, xc, p_ok, height, width, -dy, -dx)
    kt = _kernels_at(w_ptr, bias_ptr, gb, hw, groups, rows, c_ok, src, ok, HAS_BIAS, DOT, ACC, BLOCK_C, BLOCK_P, BLOCK_G)
    return _at(g_ptr, hw, cs, c_ok, src, ok, ACC) * kt


@triton.jit
def _grad_kernels(g0, g1, g2, xb, hw, cs, c_ok, y, xc, p_ok, height, width, di, dj, d0, d1, d2, ND: tl.constexpr,
                  ACC: tl.constexpr):
    # gK_t[c, p] = Σ_d g_d[c, p] · x[c, p + s_t·d] on a tile (g_d: the tile's gradient values, already loaded).
    src, ok = _shift(y, xc, p_ok, height, width, di * d0, dj * d0)
    gk = g0 * _at(xb, hw, cs, c_ok, src, ok, ACC)
    if ND > 1:
        src, ok = _shift(y, xc, p_ok, height, width, di * d1, dj * d1)
        gk += g1 * _at(xb, hw, cs, c_ok, src, ok, ACC)
    if ND > 2:
        src, ok = _shift(y, xc, p_ok, height, width, di * d2, dj * d2)
        gk += g2 * _at(xb, hw, cs, c_ok, src, ok, ACC)
    return gk


@triton.jit
def backward_data(g0_ptr, g1_ptr, g2_ptr, x_ptr, guide_ptr, w_ptr, bias_ptr, gx_ptr, gguide_ptr,
                  channels, groups, height, width, d0, d1, d2,
                  KS: tl.constexpr, ND: tl.constexpr, HAS_BIAS: tl.constexpr, NEED_X: tl.constexpr,
                  NEED_GUIDE: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    # One program per BLOCK_P pixels of one image, over every channel: gx there (a gather, so no atomics) and
    # gguide there (Σ_t Wᵀ_t · gK_t, one tl.dot per tap and channel block).
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64)
    hw = height * width
    p_ok = offs < hw
    y = offs // width
    xc = offs % width
    plane = b * channels * hw
    xb = x_ptr + plane
    gb = guide_ptr + b * groups * hw
    r = (KS - 1) // 2
    if NEED_X:
        for c0 in range(0, channels, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < channels
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for i in tl.static_range(KS):
                for j in tl.static_range(KS):
                    rows = cs * (KS * KS) + (i * KS + j)
                    acc += _grad_input_term(g0_ptr + plane, w_ptr, bias_ptr, gb, hw, groups, rows, cs, c_ok, y, xc, p_ok,
                                            height, width, (i - r) * d0, (j - r) * d0, HAS_BIAS, DOT, ACC,
                                            BLOCK_C, BLOCK_P, BLOCK_G)
                    if ND > 1:
                        acc += _grad_input_term(g1_ptr + plane, w_ptr, bias_ptr, gb, hw, groups, rows, cs, c_ok, y, xc,
                                                p_ok, height, width, (i - r) * d1, (j - r) * d1, HAS_BIAS, DOT, ACC,
                                                BLOCK_C, BLOCK_P, BLOCK_G)
                    if ND > 2:
                        acc += _grad_input_term(g2_ptr + plane, w_ptr, bias_ptr, gb, hw, groups, rows, cs, c_ok, y, xc,
                                                p_ok, height, width, (i - r) * d2, (j - r) * d2, HAS_BIAS, DOT, ACC,
                                                BLOCK_C, BLOCK_P, BLOCK_G)
            where = plane + cs[:, None].to(tl.int64) * hw + offs[None, :]
            tl.store(gx_ptr + where, acc.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])
    if NEED_GUIDE:
        for gg in range(0, groups, BLOCK_G):
            gs = gg + tl.arange(0, BLOCK_G)
            g_ok = gs < groups
            acc = tl.zeros([BLOCK_G, BLOCK_P], dtype=ACC)
            for c0 in range(0, channels, BLOCK_C):
                cs = c0 + tl.arange(0, BLOCK_C)
                c_ok = cs < channels
                g0, g1, g2 = _grads_at(g0_ptr + plane, g1_ptr + plane, g2_ptr + plane, hw, cs, c_ok, offs, p_ok, ND, ACC)
                for i in tl.static_range(KS):
                    for j in tl.static_range(KS):
                        gk = _grad_kernels(g0, g1, g2, xb, hw, cs, c_ok, y, xc, p_ok, height, width, i - r, j - r,
                                           d0, d1, d2, ND, ACC)
                        rows = cs * (KS * KS) + (i * KS + j)
                        wt = tl.load(w_ptr + rows[None, :] * groups + gs[:, None], mask=g_ok[:, None] & c_ok[None, :], other=0.0)
                        acc += _dot(wt, gk, DOT, ACC)
            where = b * groups * hw + gs[:, None].to(tl.int64) * hw + offs[None, :]
            tl.store(gguide_ptr + where, acc.to(gguide_ptr.dtype.element_ty), mask=g_ok[:, None] & p_ok[None, :])


@triton.jit
def backward_weight(g0_ptr, g1_ptr, g2_ptr, x_ptr, guide_ptr, pw_ptr, pb_ptr, batch, channels, groups, height, width,
                    d0, d1, d2, splits,
                    KS: tl.constexpr, ND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    # Program (s, channel block × tap, guide block) sums gK_t · guideᵀ over every ``splits``-th pixel tile of
    # the batch into partial sum ``s`` (rows c·k² + t, columns of its guide block; the bias's over the tile
    # too): the caller adds the partial sums in a fixed order, so the result is deterministic.
    s = tl.program_id(0)
    ct = tl.program_id(1)
    t = ct % (KS * KS)
    cs = (ct // (KS * KS)) * BLOCK_C + tl.arange(0, BLOCK_C)
    gs = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
    c_ok = cs < channels
    g_ok = gs < groups
    r = (KS - 1) // 2
    di = t // KS - r
    dj = t % KS - r
    hw = height * width
    tiles = tl.cdiv(hw, BLOCK_P)
    acc = tl.zeros([BLOCK_C, BLOCK_G], dtype=ACC)
    accb = tl.zeros([BLOCK_C], dtype=ACC)
    for item in range(s, batch * tiles, splits):
        b = (item // tiles).to(tl.int64)
        offs = (item % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = offs < hw
        y = offs // width
        xc = offs % width
        plane = b * channels * hw
        g0, g1, g2 = _grads_at(g0_ptr + plane, g1_ptr + plane, g2_ptr + plane, hw, cs, c_ok, offs, p_ok, ND, ACC)
        gk = _grad_kernels(g0, g1, g2, x_ptr + plane, hw, cs, c_ok, y, xc, p_ok, height, width, di, dj, d0, d1, d2, ND, ACC)
        u = _at(guide_ptr + b * groups * hw, hw, gs, g_ok, offs, p_ok, ACC)
        acc += _dot(gk, tl.trans(u), DOT, ACC)
        accb += tl.sum(gk, axis=1)
    rows = cs * (KS * KS) + t
    base = s.to(tl.int64) * channels * (KS * KS)
    tl.store(pw_ptr + (base + rows[:, None]) * groups + gs[None, :], acc, mask=c_ok[:, None] & g_ok[None, :])
    tl.store(pb_ptr + base + rows, accb, mask=c_ok & (tl.program_id(2) == 0))

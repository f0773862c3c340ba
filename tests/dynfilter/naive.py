"""Naive, loop-based references written straight from the spec's formulas, for the tests to compare against."""

from __future__ import annotations

import torch


def dynamic_filter_loop(x: torch.Tensor, kernels: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """out[b,c,h,w] = Σ_{i,j} x[b,c,h+(i−r)d,w+(j−r)d] · kernels[b, c·k²+i·k+j, h, w], zero outside."""
    b, c, h, w = x.shape
    r = (k - 1) // 2
    out = torch.zeros_like(x)
    for bi in range(b):
        for ci in range(c):
            for y in range(h):
                for xx in range(w):
                    acc = x.new_zeros(())
                    for i in range(k):
                        for j in range(k):
                            yy, xs = y + (i - r) * d, xx + (j - r) * d
                            if 0 <= yy < h and 0 <= xs < w:
                                acc = acc + x[bi, ci, yy, xs] * kernels[bi, ci * k * k + i * k + j, y, xx]
                    out[bi, ci, y, xx] = acc
    return out


def mfi_formula(x: torch.Tensor) -> torch.Tensor:
    """MFI per spec §5, written with explicit per-row and per-column loops over the pooled statistics."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for bi in range(b):
        xc = torch.stack([x[bi, ci] * 2 * torch.sigmoid(x[bi, ci].mean()) for ci in range(c)])
        row = torch.stack([2 * torch.sigmoid(xc[:, y, :].mean()) for y in range(h)])  # one gate per row
        col = torch.stack([2 * torch.sigmoid(xc[:, :, xx].mean()) for xx in range(w)])  # one per column
        out[bi] = xc + row.view(1, h, 1) * xc + col.view(1, 1, w) * xc
    return out

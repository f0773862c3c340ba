"""The Triton backend of the fused dynamic filter for CUDA tensors: the 1×1 GEMM as ``tl.dot``, the taps after it.

A forward program owns ``BLOCK_C`` channels by ``BLOCK_P`` pixels of one image. For each tap it makes that
tile's kernels with one ``tl.dot`` (weight rows of the tap × the guide's pixels) and applies them at once
to every dilation (MDCB's three branches share them), so no kernel map exists in memory. The backward pass
makes the kernels again where it needs them:

* ``backward_data``: per pixel tile, ``gx`` as a gather (the kernels at the shifted pixels are recomputed,
  ``D·k²`` small GEMMs per channel block) and ``gguide = Σ_t Wᵀ_t · gK_t`` (``gK`` needs no kernels);
* ``backward_weight``: ``gweight = Σ gK_t · guideᵀ`` and ``gbias = Σ gK_t`` over the batch's pixels, in
  ``SPLITS`` partial sums that torch adds in a fixed order: deterministic, no atomics. It is a kernel of
  its own because its reduction runs over pixels where the others' run over channels.

Accumulation is float32 (float64 for float64 operands); products are IEEE float32, not TF32 (and not
bfloat16 tensor-core products for 16-bit operands), so the values are the unfused path's. ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors through Triton's
interpreter (the CPU test suite does, in a subprocess); ``DYNFILTER_TRITON=0`` switches them off with the
other Triton kernels. Up to three dilations per call; more fall back to the tiled torch path.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from . import dynamic_filter_triton

__all__ = ["status", "usable", "forward", "backward", "BLOCK_C", "BLOCK_P", "BLOCK_G", "SPLITS", "MAX_DILATIONS"]

BLOCK_C = 16  # channels per tile: tl.dot's smallest side on a GPU
BLOCK_P = 64  # pixels per tile
BLOCK_G = 32  # guide channels per GEMM step
SPLITS = 64  # partial sums of the weight gradient: enough programs to fill a GPU, little memory
MAX_DILATIONS = 3  # output pointers a kernel takes (MDCB has three branches)
_GRID_LIMIT = 65535  # the launch grid's second and third axes


def status() -> str:
    """Whether the fused path (``impl="fused"``) of CUDA tensors gets these kernels, and why not."""
    if not dynamic_filter_triton.available():
        return dynamic_filter_triton.status().replace("CUDA uses the eager backend", "CUDA's fused path uses tiled torch")
    where = "CUDA tensors of one floating dtype, up to three dilations" + (", interpreter on CPU" if dynamic_filter_triton._INTERPRET else "")
    return f"available ({where}; impl='auto' stays lean on CUDA until they are timed on a GPU)"


def usable(x: torch.Tensor, *others: torch.Tensor | None, dilations: Sequence[int]) -> bool:
    """Whether these operands (one floating dtype, CUDA, or CPU under the interpreter) run on the kernels."""
    device_ok = x.device.type == "cuda" or (dynamic_filter_triton._INTERPRET and x.device.type == "cpu")
    if not dynamic_filter_triton.available() or not device_ok or not x.dtype.is_floating_point:
        return False
    if not all(t is None or (t.device == x.device and t.dtype == x.dtype) for t in others):
        return False
    b, c = x.shape[:2]
    return 1 <= len(dilations) <= MAX_DILATIONS and b <= _GRID_LIMIT and -(-c // BLOCK_C) <= _GRID_LIMIT


def _modes(dtype: torch.dtype) -> dict:
    import triton.language as tl

    # 16-bit operands are multiplied in float32 too: exact products, the values of the unfused path (and
    # Triton's interpreter, which checks these kernels on CPU, cannot multiply bfloat16 tiles).
    return {"DOT": 1, "ACC": tl.float64} if dtype == torch.float64 else {"DOT": 0, "ACC": tl.float32}


def _padded(tensors: Sequence[torch.Tensor], dilations: Sequence[int]):
    """Three tensors and three dilations, the unused ones repeating the first (never read)."""
    tensors = list(tensors) + [tensors[0]] * (MAX_DILATIONS - len(tensors))
    return tensors, list(dilations) + [1] * (MAX_DILATIONS - len(dilations))


def _device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def forward(x, guide, weight, bias, kernel_size: int, dilations: Sequence[int]) -> list[torch.Tensor]:
    """The fused forward on contiguous operands of one dtype (see :func:`usable`): one output per dilation."""
    from . import fused_dynamic_filter_triton_kernels as tk

    x, guide, weight = x.contiguous(), guide.contiguous(), weight.contiguous()
    b, c, h, w = x.shape
    out = [torch.empty_like(x) for _ in dilations]
    if not x.numel():
        return out
    outs, ds = _padded(out, dilations)
    modes = _modes(x.dtype)
    grid = (-(-h * w // BLOCK_P), -(-c // BLOCK_C), b)
    with _device(x):
        tk.forward[grid](x, guide, weight, weight if bias is None else bias.contiguous(), *outs, c, guide.shape[1], h, w, *ds,
                         KS=kernel_size, ND=len(dilations), HAS_BIAS=bias is not None, **modes,
                         BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_G=BLOCK_G)
    return out


def backward(grads, x, guide, weight, bias, kernel_size: int, dilations: Sequence[int], mask: Sequence[bool]):
    """Gradients in ``(x, guide, weight, bias)`` of :func:`forward`; ``None`` where ``mask`` says not needed."""
    from . import fused_dynamic_filter_triton_kernels as tk

    grads = [g.contiguous() for g in grads]
    x, guide, weight = x.contiguous(), guide.contiguous(), weight.contiguous()
    b, c, h, w = x.shape
    groups = guide.shape[1]
    gx = torch.empty_like(x) if mask[0] else None
    gguide = torch.empty_like(guide) if mask[1] else None
    need_w = mask[2] or (mask[3] and bias is not None)
    if not (x.numel() and groups):
        zeros = [None if t is None else t.zero_() for t in (gx, gguide)]
        gweight = torch.zeros_like(weight) if mask[2] else None
        gbias = torch.zeros_like(bias) if (mask[3] and bias is not None) else None
        return (*zeros, gweight, gbias)
    gs, ds = _padded(grads, dilations)
    modes = _modes(x.dtype)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = dict(KS=kernel_size, ND=len(dilations), **modes, BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_G=BLOCK_G)
    tiles = -(-h * w // BLOCK_P)
    gweight = gbias = None
    with _device(x):
        if gx is not None or gguide is not None:
            tk.backward_data[(tiles, b)](
                *gs, x, guide, weight, weight if bias is None else bias.contiguous(),
                x if gx is None else gx, guide if gguide is None else gguide, c, groups, h, w, *ds,
                HAS_BIAS=bias is not None, NEED_X=gx is not None, NEED_GUIDE=gguide is not None, **shape)
        if need_w:
            splits = min(SPLITS, b * tiles)
            pw = torch.empty(splits, *weight.shape, dtype=acc, device=x.device)
            pb = torch.empty(splits, weight.shape[0], dtype=acc, device=x.device)
            grid = (splits, -(-c // BLOCK_C) * kernel_size * kernel_size, -(-groups // BLOCK_G))
            tk.backward_weight[grid](*gs, x, guide, pw, pb, b, c, groups, h, w, *ds, splits, **shape)
            gweight = pw.sum(0).to(weight.dtype) if mask[2] else None
            gbias = pb.sum(0).to(bias.dtype) if (mask[3] and bias is not None) else None
    return gx, gguide, gweight, gbias

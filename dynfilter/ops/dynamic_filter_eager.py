"""The eager backend of the dynamic filter: accumulate over the k² shifted views in torch ops, never unfold.

The published formulation (:mod:`.dynamic_filter_unfold`) builds a ``(B, C·k², H, W)`` patch tensor,
multiplies it by the kernels and sums. Here each output is built tap by tap,
``out += shift_t(x) · K_t``, by in-place multiply-adds on views of the unpadded input: a tap only
touches the rectangle where its shifted pixel lies inside the image, which *is* the zero padding,
so no padded copy, no patch tensor and no temporary of the kernels' size is ever made.

It serves every device and dtype, and is what runs where no compiled backend does
(:mod:`.dynamic_filter_native` on CPU, :mod:`.dynamic_filter_triton` on CUDA). On CPU the work is cut
into blocks of rows (and planes) small enough that the accumulator stays in L2 while the k² kernel maps
stream past it; on other devices each tap runs on the whole tensor (k² launches). Low-precision inputs
(bfloat16, float16) accumulate in float32 and round once per output.

Fresh outputs of 32 MiB or more are advised to use transparent huge pages before first touch
(:func:`empty_output`, Linux): faulting in 4 KiB pages costs more than the filtering itself at these
sizes (about 0.4 s per GB on one core here, against 0.05 s with 2 MiB pages). ``DYNFILTER_HUGEPAGES=0``
turns this off.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Iterator

import torch

from .backend import KernelFn, switched_on

__all__ = ["kernel", "status", "tap_offsets", "empty_output", "BLOCK_ELEMENTS"]

# Elements per CPU block: the accumulator and the input block (about 2 × 4 × 131,072 bytes = 1 MiB
# in float32, half per thread) fit a 1–2 MiB L2 with room to stream the kernel rows past them.
BLOCK_ELEMENTS = 1 << 17

_LOW_PRECISION = (torch.bfloat16, torch.float16)

# Allocations this large get their own mapping from glibc (its mmap threshold tops out at 32 MiB on
# 64-bit), so the advice does not spread over memory shared with small allocations.
_HUGE_PAGE_MIN_BYTES = 32 << 20
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        _libc = None


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, with large CPU buffers advised to use transparent huge pages before first touch."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if (
        _libc is not None
        and out.device.type == "cpu"
        and nbytes >= _HUGE_PAGE_MIN_BYTES
        and switched_on("DYNFILTER_HUGEPAGES")
    ):
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        stop = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if stop > start:
            _libc.madvise(start, stop - start, _MADV_HUGEPAGE)  # advice only: failure changes nothing
    return out


def tap_offsets(kernel_size: int, dilation: int) -> list[tuple[int, int, int]]:
    """``(tap, dy, dx)`` for every tap, row-major; the offset of tap ``i·k + j`` is ``((i − r)d, (j − r)d)``."""
    r = (kernel_size - 1) // 2
    return [(i * kernel_size + j, (i - r) * dilation, (j - r) * dilation) for i in range(kernel_size) for j in range(kernel_size)]


def _blocks(planes: int, height: int, width: int, device: torch.device) -> Iterator[tuple[slice, int, int]]:
    """Yield ``(plane slice, row start, row stop)`` blocks of about :data:`BLOCK_ELEMENTS` elements."""
    plane = height * width
    if device.type != "cpu" or planes * plane <= BLOCK_ELEMENTS:
        yield slice(0, planes), 0, height
        return
    if plane >= BLOCK_ELEMENTS:
        rows = max(1, BLOCK_ELEMENTS // width)
        for p in range(planes):
            for r0 in range(0, height, rows):
                yield slice(p, p + 1), r0, min(height, r0 + rows)
    else:
        step = BLOCK_ELEMENTS // plane
        for p0 in range(0, planes, step):
            yield slice(p0, min(planes, p0 + step)), 0, height


def _span(start: int, stop: int, shift: int, size: int) -> tuple[int, int]:
    """The part of ``[start, stop)`` whose ``+ shift`` neighbour lies in ``[0, size)``."""
    return max(start, -shift), min(stop, size - shift)


def _accumulate(
    out: torch.Tensor, values: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int, sign: int, shift_kernels: bool
) -> None:
    """Eager: ``out[p] = Σ_t values[p + sign·s_t] · K_t[p + (sign·s_t if shift_kernels else 0)]``, zero outside.

    ``values`` and ``out`` are ``(B, C, H, W)`` (``out`` contiguous), ``kernels`` is ``(B, C·k², H, W)``.
    """
    b, c, h, w = values.shape
    taps = kernel_size * kernel_size
    v = values.contiguous().view(b * c, h, w)
    k = kernels.contiguous().view(b * c, taps, h, w)
    o = out.view(b * c, h, w)
    acc_dtype = torch.float32 if out.dtype in _LOW_PRECISION else out.dtype
    scratch = None
    centre = taps // 2
    for planes, r0, r1 in _blocks(b * c, h, w, values.device):
        if acc_dtype == out.dtype:
            acc = o[planes, r0:r1]
        else:
            size = (planes.stop - planes.start) * (r1 - r0) * w
            if scratch is None or scratch.numel() < size:
                scratch = torch.empty(size, dtype=acc_dtype, device=values.device)
            acc = scratch[:size].view(planes.stop - planes.start, r1 - r0, w)
        # The centre tap covers every pixel, so it initialises the block without a zero fill.
        if acc_dtype == out.dtype:
            torch.mul(v[planes, r0:r1], k[planes, centre, r0:r1], out=acc)
        else:  # multiply in the accumulator's precision: torch.mul(out=) would round to the inputs' dtype first
            acc.copy_(v[planes, r0:r1]).mul_(k[planes, centre, r0:r1])
        for t, dy, dx in tap_offsets(kernel_size, dilation):
            if t == centre:
                continue
            dy, dx = sign * dy, sign * dx
            y0, y1 = _span(r0, r1, dy, h)
            x0, x1 = _span(0, w, dx, w)
            if y0 >= y1 or x0 >= x1:
                continue
            ky0, ky1, kx0, kx1 = (y0 + dy, y1 + dy, x0 + dx, x1 + dx) if shift_kernels else (y0, y1, x0, x1)
            acc[:, y0 - r0 : y1 - r0, x0:x1].addcmul_(
                v[planes, y0 + dy : y1 + dy, x0 + dx : x1 + dx], k[planes, t, ky0:ky1, kx0:kx1]
            )
        if acc_dtype != out.dtype:
            o[planes, r0:r1].copy_(acc)


def _products(out: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, kernel_size: int, dilation: int) -> None:
    """Eager: ``out_t[p] = g[p] · x[p + s_t]``, zero where ``p + s_t`` is outside; ``out`` contiguous."""
    b, c, h, w = x.shape
    taps = kernel_size * kernel_size
    g = grad.contiguous().view(b * c, h, w)
    v = x.contiguous().view(b * c, h, w)
    o = out.view(b * c, taps, h, w)
    for planes, r0, r1 in _blocks(b * c, h, w, x.device):
        for t, dy, dx in tap_offsets(kernel_size, dilation):
            block = o[planes, t, r0:r1]
            y0, y1 = _span(r0, r1, dy, h)
            x0, x1 = _span(0, w, dx, w)
            if y0 >= y1 or x0 >= x1:
                block.zero_()
                continue
            torch.mul(g[planes, y0:y1, x0:x1], v[planes, y0 + dy : y1 + dy, x0 + dx : x1 + dx], out=block[:, y0 - r0 : y1 - r0, x0:x1])
            # Zero only the border strips the shifted view leaves uncovered (the padding).
            block[:, : y0 - r0].zero_()
            block[:, y1 - r0 :].zero_()
            block[:, y0 - r0 : y1 - r0, :x0].zero_()
            block[:, y0 - r0 : y1 - r0, x1:].zero_()


def kernel(op: str, a: torch.Tensor, b: torch.Tensor, kernel_size: int) -> KernelFn:
    """The eager kernel for ``op`` (see :mod:`.backend`); it serves any operands.

    With ``s_t`` the offset of tap ``t`` (:func:`tap_offsets`):

    * ``forward``       ``out[p]  = Σ_t x[p + s_t] · K_t[p]``
    * ``grad_input``    ``gx[p]   = Σ_t g[p − s_t] · K_t[p − s_t]``  (the adjoint in ``x``)
    * ``grad_kernels``  ``gK_t[p] = g[p] · x[p + s_t]``               (the adjoint in ``K``)
    """
    if op == "forward":
        return lambda a, b, out, k, d: _accumulate(out, a, b, k, d, sign=1, shift_kernels=False)
    if op == "grad_input":
        return lambda a, b, out, k, d: _accumulate(out, a, b, k, d, sign=-1, shift_kernels=True)
    if op == "grad_kernels":
        return lambda a, b, out, k, d: _products(out, a, b, k, d)
    raise ValueError(f"unknown dynamic-filter op {op!r}")


def status() -> str:
    """The eager backend is always available."""
    return "available (torch ops; the fallback)"

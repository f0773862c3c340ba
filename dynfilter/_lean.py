"""Lean per-pixel dynamic filtering: accumulate over the k² shifted views, never unfold.

The published formulation (:mod:`dynfilter._reference`) builds a ``(B, C·k², H, W)`` patch tensor,
multiplies it by the kernels and sums. Here each output is built tap by tap,
``out += shift_t(x) · K_t``, by in-place multiply-adds on views of the unpadded input: a tap only
touches the rectangle where its shifted pixel lies inside the image, which *is* the zero padding,
so no padded copy, no patch tensor and no temporary of the kernels' size is ever made.

Three functions cover forward and every derivative (they are linear in each argument, so the
derivatives of each are again these functions; see :mod:`dynfilter._ops`):

* :func:`filter_forward`         ``out[p]   = Σ_t x[p + s_t] · K_t[p]``
* :func:`filter_grad_input`      ``gx[p]    = Σ_t g[p − s_t] · K_t[p − s_t]``  (the adjoint in ``x``)
* :func:`filter_grad_kernels`    ``gK_t[p]  = g[p] · x[p + s_t]``               (the adjoint in ``K``)

with ``s_t = ((i − r)·d, (j − r)·d)`` for tap ``t = i·k + j`` and ``r = (k − 1)/2``.

Paths, chosen per call:

* **native** (CPU; float32, float64, bfloat16 of one dtype): fused C++ loops from
  :mod:`dynfilter._native`, where a C++ compiler exists. One pass per row block: the kernels are
  read (or their gradient written) once, front to back, while the accumulator stays in cache.
* **triton** (CUDA; one floating dtype, where Triton imports): one kernel launch per call from
  :mod:`dynfilter._triton`, each output read-modify-written once instead of k² times.
* **eager** (everything else, and the fallback): the same blocking in torch ops. On CPU the work is
  cut into blocks of rows (and planes) small enough that the accumulator stays in L2 while the k²
  kernel maps stream past it; on other devices each tap runs on the whole tensor (k² launches).

Low-precision inputs (bfloat16, float16) accumulate in float32 and round once per output.

Fresh outputs of 32 MiB or more are advised to use transparent huge pages before first touch
(Linux): faulting in 4 KiB pages costs more than the filtering itself at these sizes (about 0.4 s
per GB on one core here, against 0.05 s with 2 MiB pages). ``DYNFILTER_HUGEPAGES=0`` turns this off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Iterator

import torch

from . import _native, _triton

__all__ = ["filter_forward", "filter_grad_input", "filter_grad_kernels", "tap_offsets", "empty_output", "BLOCK_ELEMENTS"]

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
        and os.environ.get("DYNFILTER_HUGEPAGES", "1") != "0"
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


def _compute(
    kind: str,
    a: torch.Tensor,
    b: torch.Tensor,
    shape: tuple[int, ...],
    kernel_size: int,
    dilation: int,
    fallback: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """A fresh ``shape`` output in the promoted dtype of ``a`` and ``b``, filled by the compiled ``kind``
    kernel (native C++ on CPU, Triton on CUDA) where one serves these inputs, else by ``fallback(out)``."""
    out = empty_output(shape, torch.promote_types(a.dtype, b.dtype), a.device)
    if out.numel():
        native = (_native if a.device.type == "cpu" else _triton).kernel(kind, a, b, kernel_size)
        if native is not None:
            native(a, b, out, kernel_size, dilation)
        else:
            fallback(out)
    return out


def filter_forward(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``out[p] = Σ_t x[p + s_t] · K_t[p]``: the dynamic filter itself; inputs are assumed validated.

    Args:
        x (Tensor[B, C, H, W]): the features.
        kernels (Tensor[B, C·k², H, W]): channel-major, row-major taps.
        kernel_size (int): ``k``, odd.
        dilation (int): ``d``.

    Returns:
        Tensor[B, C, H, W] in the promoted dtype of ``x`` and ``kernels``.
    """
    return _compute(
        "forward", x, kernels, tuple(x.shape), kernel_size, dilation,
        lambda out: _accumulate(out, x, kernels, kernel_size, dilation, sign=1, shift_kernels=False),
    )


def filter_grad_input(grad: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``gx[p] = Σ_t g[p − s_t] · K_t[p − s_t]``: the adjoint of :func:`filter_forward` in ``x``.

    Args:
        grad (Tensor[B, C, H, W]): gradient of the filter's output.
        kernels (Tensor[B, C·k², H, W]): the kernels the forward used.
        kernel_size (int): ``k``.
        dilation (int): ``d``.

    Returns:
        Tensor[B, C, H, W] in the promoted dtype of ``grad`` and ``kernels``.
    """
    return _compute(
        "grad_input", grad, kernels, tuple(grad.shape), kernel_size, dilation,
        lambda out: _accumulate(out, grad, kernels, kernel_size, dilation, sign=-1, shift_kernels=True),
    )


def filter_grad_kernels(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``gK_t[p] = g[p] · x[p + s_t]`` (zero where ``p + s_t`` is outside): the adjoint in the kernels.

    Args:
        grad (Tensor[B, C, H, W]): gradient of the filter's output.
        x (Tensor[B, C, H, W]): the input the forward filtered.
        kernel_size (int): ``k``.
        dilation (int): ``d``.

    Returns:
        Tensor[B, C·k², H, W] in the promoted dtype of ``grad`` and ``x``; written once, no temporaries.
    """
    b, c, h, w = x.shape
    return _compute(
        "grad_kernels", grad, x, (b, c * kernel_size * kernel_size, h, w), kernel_size, dilation,
        lambda out: _products(out, grad, x, kernel_size, dilation),
    )

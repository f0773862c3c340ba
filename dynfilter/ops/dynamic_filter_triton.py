"""The Triton backend of the dynamic filter for CUDA tensors: one pass per output, no k² launches.

The eager path on a GPU runs one element-wise kernel per tap, each reading and writing the whole
accumulator: about 3k² + 2 tensor passes where 11 suffice (read ``x`` and the k² kernel maps, write
the output). These kernels make one pass: a program owns ``BLOCK`` pixels of one plane, reads their
k² kernel values once (coalesced, tap after tap), gathers the shifted input values (neighbouring
programs share them through the cache) and writes each output once. Accumulation is in float32
(float64 for float64 inputs), as on the CPU.

The same three functions as the other backends (``s_t`` is tap ``t``'s offset):

* ``forward``       ``out[p]  = Σ_t x[p + s_t] · K_t[p]``
* ``grad_input``    ``gx[p]   = Σ_t g[p − s_t] · K_t[p − s_t]``
* ``grad_kernels``  ``gK_t[p] = g[p] · x[p + s_t]``

:func:`kernel` returns one of them for CUDA operands of one floating dtype where Triton imports,
else ``None`` (the eager backend runs). ``DYNFILTER_TRITON=0`` disables them. ``TRITON_INTERPRET=1``
runs them on CPU tensors through Triton's interpreter (the CPU test suite does, in a subprocess).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from .backend import KernelFn, switched_on

__all__ = ["kernel", "available", "status", "BLOCK"]

BLOCK = 256  # pixels per program: 8 warps' worth of float32 lanes, and small planes waste little

# Triton (and the kernels) are imported on the first CUDA call, not with dynfilter: CPU users never wait
# for it. CPU-only installs may lack it; the eager path serves CUDA then.
_HAS_TRITON = importlib.util.find_spec("triton") is not None

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """Whether Triton imported and the kernels are enabled (``DYNFILTER_TRITON`` is not ``0``)."""
    return _HAS_TRITON and switched_on("DYNFILTER_TRITON")


def status() -> str:
    """Whether CUDA tensors get the Triton kernels, and why not."""
    if not _HAS_TRITON:
        return "unavailable (Triton is not installed; CUDA uses the eager backend)"
    if not available():
        return "disabled (DYNFILTER_TRITON=0)"
    return "available (CUDA tensors of one floating dtype)" + (", interpreter on CPU" if _INTERPRET else "")


def _blocks(height: int, width: int) -> int:
    """Programs per plane: ``BLOCK`` pixels each."""
    return -(-height * width // BLOCK)


def kernel(op: str, a: torch.Tensor, b: torch.Tensor, kernel_size: int) -> KernelFn | None:
    """The Triton kernel for ``op`` on operands ``a`` and ``b``, or ``None`` where eager must run.

    Args:
        op (str): ``"forward"``, ``"grad_input"`` or ``"grad_kernels"``.
        a (Tensor[B, C, H, W]): first operand (``x`` or ``grad``).
        b (Tensor): second operand (``kernels`` or ``x``).
        kernel_size (int): ``k``.

    Returns:
        ``fn(a, b, out, kernel_size, dilation)`` writing into the contiguous ``out``, or ``None``.
    """
    device_ok = a.device.type == "cuda" or (_INTERPRET and a.device.type == "cpu")
    if not available() or not device_ok or a.dtype != b.dtype or not a.dtype.is_floating_point:
        return None
    if _blocks(a.shape[2], a.shape[3]) > 65535:  # the grid's second axis limit (images over 16 Mpx)
        return None

    def run(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, kernel_size: int, dilation: int) -> None:
        bsz, c, h, w = a.shape
        a, b = a.contiguous(), b.contiguous()
        from . import dynamic_filter_triton_kernels as tk

        grid = (bsz * c, _blocks(h, w))
        acc = tk.accumulator_dtype(a.dtype)
        with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
            if op == "grad_kernels":
                tk.products[grid](a, b, out, h, w, dilation, KS=kernel_size, ACC=acc, BLOCK=BLOCK)
            else:
                sign = 1 if op == "forward" else -1
                tk.accumulate[grid](a, b, out, h, w, dilation, KS=kernel_size, SIGN=sign, ACC=acc, BLOCK=BLOCK)

    return run

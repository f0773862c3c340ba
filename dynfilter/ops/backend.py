"""The protocol every backend of the dynamic filter implements, and the switch each reads.

A backend is a module with two functions:

* ``kernel(op, a, b, kernel_size) -> KernelFn | None``: the kernel for ``op`` (one of :data:`OPS`) on the
  operands ``a`` (``x`` or ``grad``, ``(B, C, H, W)``, which sets the size of the work) and ``b``
  (``kernels`` or ``x``), or ``None`` where this backend cannot serve them;
* ``status() -> str``: one line saying whether it is in use and why.

A ``KernelFn`` is called as ``fn(a, b, out, kernel_size, dilation)`` and writes the whole result into the
contiguous, freshly allocated ``out``. :mod:`dynfilter.ops.dynamic_filter` asks the device's compiled
backend first (native C++ on CPU, Triton on CUDA) and falls back to the eager one, which serves
everything.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol

import torch

__all__ = ["OPS", "KernelFn", "Backend", "switched_on"]

#: The three bilinear ops of the dynamic filter: the filter and its adjoints in the input and the kernels.
OPS: tuple[str, ...] = ("forward", "grad_input", "grad_kernels")

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], None]


class Backend(Protocol):
    """What :mod:`dynfilter.ops.dynamic_filter` needs of a backend module."""

    def kernel(self, op: str, a: torch.Tensor, b: torch.Tensor, kernel_size: int) -> KernelFn | None: ...

    def status(self) -> str: ...


def switched_on(variable: str) -> bool:
    """Whether the environment leaves a backend on: anything but ``0``, ``false``, ``no`` or ``off``.

    >>> switched_on("DYNFILTER_DOCTEST_UNSET")
    True
    """
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")

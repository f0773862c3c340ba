"""The dynamic filter as registered ops, and the dispatcher that picks a backend for each call.

Three ops, so that ``torch.compile``, ``torch.export``, FX/JIT tracing and FLOP counters see one node
with a known cost instead of the k² element-wise ops inside:

* ``dynfilter::dynamic_filter(Tensor x, Tensor kernels, int kernel_size, int dilation) -> Tensor``
* ``dynfilter::dynamic_filter_grad_input(Tensor grad, Tensor kernels, int kernel_size, int dilation) -> Tensor``
* ``dynfilter::dynamic_filter_grad_kernels(Tensor grad, Tensor x, int kernel_size, int dilation) -> Tensor``

Each is bilinear, and the derivatives of each are again these three ops (see the ``_backward_*``
functions), so gradients of any order work. Each costs ``k²·B·C·H·W`` multiply-adds, registered with
:mod:`torch.utils.flop_counter` as twice that many FLOPs, its convention for multiply-adds.

Each op computes into a fresh output with the first backend that serves its operands (see
:mod:`.backend`): :mod:`.dynamic_filter_native` for CPU tensors, :mod:`.dynamic_filter_triton` for CUDA
ones, else :mod:`.dynamic_filter_eager`. All agree to float rounding.

Inputs are validated by :func:`dynfilter.functional.dynamic_filter`, not here.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import dynamic_filter_eager, dynamic_filter_native, dynamic_filter_triton
from .backend import Backend

__all__ = [
    "filter_forward",
    "filter_grad_input",
    "filter_grad_kernels",
    "backend_for",
    "dynamic_filter_op",
    "dynamic_filter_grad_input_op",
    "dynamic_filter_grad_kernels_op",
    "dynamic_filter_macs",
]

# The compiled backend tried first on each device type; the eager one serves the rest.
_COMPILED: dict[str, Backend] = {"cpu": dynamic_filter_native, "cuda": dynamic_filter_triton}


def backend_for(op: str, a: torch.Tensor, b: torch.Tensor, kernel_size: int) -> str:
    """The name of the backend that computes ``op`` on these operands: ``native``, ``triton`` or ``eager``.

    >>> backend_for("forward", torch.zeros(1, 1, 2, 2, dtype=torch.float16), torch.zeros(1, 9, 2, 2), 3)
    'eager'
    """
    compiled = _COMPILED.get(a.device.type)
    if compiled is not None and compiled.kernel(op, a, b, kernel_size) is not None:
        return compiled.__name__.rsplit("_", 1)[-1]
    return "eager"


def _compute(op: str, a: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...], kernel_size: int, dilation: int) -> torch.Tensor:
    """A fresh ``shape`` output in the promoted dtype of ``a`` and ``b``, filled by the first backend that serves them."""
    out = dynamic_filter_eager.empty_output(shape, torch.promote_types(a.dtype, b.dtype), a.device)
    if out.numel():
        compiled = _COMPILED.get(a.device.type)
        fn = compiled.kernel(op, a, b, kernel_size) if compiled is not None else None
        (fn or dynamic_filter_eager.kernel(op, a, b, kernel_size))(a, b, out, kernel_size, dilation)
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
    return _compute("forward", x, kernels, tuple(x.shape), kernel_size, dilation)


def filter_grad_input(grad: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``gx[p] = Σ_t g[p − s_t] · K_t[p − s_t]``: the adjoint of :func:`filter_forward` in ``x``.

    Returns:
        Tensor[B, C, H, W] in the promoted dtype of ``grad`` and ``kernels``.
    """
    return _compute("grad_input", grad, kernels, tuple(grad.shape), kernel_size, dilation)


def filter_grad_kernels(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``gK_t[p] = g[p] · x[p + s_t]`` (zero where ``p + s_t`` is outside): the adjoint in the kernels.

    Returns:
        Tensor[B, C·k², H, W] in the promoted dtype of ``grad`` and ``x``; written once, no temporaries.
    """
    b, c, h, w = x.shape
    return _compute("grad_kernels", grad, x, (b, c * kernel_size * kernel_size, h, w), kernel_size, dilation)


def dynamic_filter_macs(x_shape: tuple[int, ...] | torch.Size, kernel_size: int) -> int:
    """Multiply-adds of one dynamic filter (or of either gradient) over an input of shape ``(B, C, H, W)``."""
    b, c, h, w = x_shape
    return kernel_size * kernel_size * b * c * h * w


@torch.library.custom_op(
    "dynfilter::dynamic_filter",
    mutates_args=(),
    schema="(Tensor x, Tensor kernels, int kernel_size, int dilation) -> Tensor",
)
def dynamic_filter_op(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """``out[p] = Σ_t x[p + s_t] · kernels_t[p]``; see :func:`dynfilter.functional.dynamic_filter`."""
    return filter_forward(x, kernels, kernel_size, dilation)


@torch.library.custom_op(
    "dynfilter::dynamic_filter_grad_input",
    mutates_args=(),
    schema="(Tensor grad, Tensor kernels, int kernel_size, int dilation) -> Tensor",
)
def dynamic_filter_grad_input_op(grad: torch.Tensor, kernels: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Gradient of the dynamic filter in its input; see :func:`filter_grad_input`."""
    return filter_grad_input(grad, kernels, kernel_size, dilation)


@torch.library.custom_op(
    "dynfilter::dynamic_filter_grad_kernels",
    mutates_args=(),
    schema="(Tensor grad, Tensor x, int kernel_size, int dilation) -> Tensor",
)
def dynamic_filter_grad_kernels_op(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Gradient of the dynamic filter in its kernels; see :func:`filter_grad_kernels`."""
    return filter_grad_kernels(grad, x, kernel_size, dilation)


@dynamic_filter_op.register_fake
def _(x, kernels, kernel_size, dilation):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, kernels.dtype))


@dynamic_filter_grad_input_op.register_fake
def _(grad, kernels, kernel_size, dilation):
    return grad.new_empty(grad.shape, dtype=torch.promote_types(grad.dtype, kernels.dtype))


@dynamic_filter_grad_kernels_op.register_fake
def _(grad, x, kernel_size, dilation):
    b, c, h, w = x.shape
    return x.new_empty((b, c * kernel_size * kernel_size, h, w), dtype=torch.promote_types(grad.dtype, x.dtype))


def _save_pair(ctx, inputs, output) -> None:
    """Save each operand only when the *other* one needs a gradient: the ops are bilinear."""
    first, second, ctx.kernel_size, ctx.dilation = inputs
    ctx.dtypes = (first.dtype, second.dtype)
    ctx.save_for_backward(
        first if ctx.needs_input_grad[1] else None,
        second if ctx.needs_input_grad[0] else None,
    )


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Autograd wants each gradient in its input's dtype; the ops return the promoted dtype."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _backward_filter(ctx, grad):
    # out = F(x, K):  dx = Gx(g, K),  dK = GK(g, x).
    x, kernels = ctx.saved_tensors
    k, d = ctx.kernel_size, ctx.dilation
    gx = dynamic_filter_grad_input_op(grad, kernels, k, d) if ctx.needs_input_grad[0] else None
    gk = dynamic_filter_grad_kernels_op(grad, x, k, d) if ctx.needs_input_grad[1] else None
    return _cast(gx, ctx.dtypes[0]), _cast(gk, ctx.dtypes[1]), None, None


def _backward_grad_input(ctx, upstream):
    # gx = Gx(g, K) is the adjoint of F(·, K):  <u, Gx(g, K)> = <g, F(u, K)> = Σ_t <GK(g, u)_t, K_t>.
    g, kernels = ctx.saved_tensors
    k, d = ctx.kernel_size, ctx.dilation
    dg = dynamic_filter_op(upstream, kernels, k, d) if ctx.needs_input_grad[0] else None
    dk = dynamic_filter_grad_kernels_op(g, upstream, k, d) if ctx.needs_input_grad[1] else None
    return _cast(dg, ctx.dtypes[0]), _cast(dk, ctx.dtypes[1]), None, None


def _backward_grad_kernels(ctx, upstream):
    # gK = GK(g, x):  <U, GK(g, x)> = <g, F(x, U)> = <x, Gx(g, U)>.
    g, x = ctx.saved_tensors
    k, d = ctx.kernel_size, ctx.dilation
    dg = dynamic_filter_op(x, upstream, k, d) if ctx.needs_input_grad[0] else None
    dx = dynamic_filter_grad_input_op(g, upstream, k, d) if ctx.needs_input_grad[1] else None
    return _cast(dg, ctx.dtypes[0]), _cast(dx, ctx.dtypes[1]), None, None


dynamic_filter_op.register_autograd(_backward_filter, setup_context=_save_pair)
dynamic_filter_grad_input_op.register_autograd(_backward_grad_input, setup_context=_save_pair)
dynamic_filter_grad_kernels_op.register_autograd(_backward_grad_kernels, setup_context=_save_pair)


@register_flop_formula(
    [
        torch.ops.dynfilter.dynamic_filter,
        torch.ops.dynfilter.dynamic_filter_grad_input,
        torch.ops.dynfilter.dynamic_filter_grad_kernels,
    ]
)
def _flops(first_shape, second_shape, kernel_size, dilation, *args, out_shape=None, **kwargs) -> int:
    # The first operand always has the (B, C, H, W) shape the cost is counted over.
    return 2 * dynamic_filter_macs(first_shape, kernel_size)

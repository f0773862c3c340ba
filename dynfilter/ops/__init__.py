"""The ops behind :mod:`dynfilter.functional`: one module per op and backend (torchvision.ops style).

- :mod:`.dynamic_filter`: the registered ``dynfilter::dynamic_filter`` ops (the filter and both of its
  gradients, with fake kernels, autograd and FLOP formulas) and the dispatcher that picks a backend
  for every call;
- its backends, each implementing :class:`.backend.Backend`: :mod:`.dynamic_filter_native` (C++
  compiled on first use, CPU), :mod:`.dynamic_filter_triton` (CUDA; kernels in
  :mod:`.dynamic_filter_triton_kernels`) and :mod:`.dynamic_filter_eager` (torch ops, any device, the
  fallback); :mod:`.dynamic_filter_unfold` is the published unfold–multiply–sum, the reference;
- :mod:`.deform_conv`: the lean modulated deformable convolution (``grid_sample`` + matmul), registered
  as ``dynfilter::modulated_deform_conv2d``;
- :mod:`.fused_dynamic_filter`: ``dynfilter::fused_dynamic_filter``, DConv's and MDCB's kernel generation
  fused with the filter; native C++ on CPU, :mod:`.fused_dynamic_filter_triton` on CUDA (kernels in
  :mod:`.fused_dynamic_filter_triton_kernels`), tiled torch elsewhere.
- :mod:`.dynamic_filter_onnx` and :mod:`.deform_conv_onnx`: both forward ops in standard ONNX operators,
  for :mod:`dynfilter.export` (not imported here; they load :mod:`onnxscript` only when they run).

:func:`status` says which backend serves which device now, for reports and benchmarks.
"""

from __future__ import annotations

from . import (
    deform_conv,
    dynamic_filter,
    dynamic_filter_eager,
    dynamic_filter_native,
    dynamic_filter_triton,
    fused_dynamic_filter_triton,
)

__all__ = ["status", "dynamic_filter", "deform_conv"]


def status() -> dict[str, str]:
    """One line per backend: ``{"dynamic_filter.native": …, "dynamic_filter.triton": …, …}``.

    >>> sorted(status())
    ['deform_conv.lean', 'dynamic_filter.eager', 'dynamic_filter.native', 'dynamic_filter.triton', 'fused_dynamic_filter.triton']
    """
    return {
        "dynamic_filter.native": dynamic_filter_native.status(),
        "dynamic_filter.triton": dynamic_filter_triton.status(),
        "dynamic_filter.eager": dynamic_filter_eager.status(),
        "deform_conv.lean": deform_conv.status(),
        "fused_dynamic_filter.triton": fused_dynamic_filter_triton.status(),
    }

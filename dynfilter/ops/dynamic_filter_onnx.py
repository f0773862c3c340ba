"""The ONNX translation of ``dynfilter::dynamic_filter``: k² shifted slices of a zero-padded input.

ONNX has no per-pixel filter, so the op is written in standard operators (opset :data:`OPSET`):
``Pad`` the input with ``d·(k−1)/2`` zeros on each side, then for every tap ``t = i·k + j`` (row-major)
``Slice`` the window shifted by ``(i·d, j·d)``, multiply it by the kernel channels ``c·k² + t`` and sum
the k² products. That is the correlation of :func:`dynfilter.functional.dynamic_filter` (channel-major,
then row-major taps, zero padding), so sizes stay symbolic: batch, height and width can all vary.

Only the forward op is translated; the gradient ops have no ONNX form (an exported graph is for
inference). :mod:`onnxscript` is imported when the translation runs, not when this module is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPSET", "dynamic_filter_onnx", "fused_dynamic_filter_onnx"]

#: The ONNX opset the translations are written in (and :mod:`dynfilter.export` exports to).
OPSET = 20


def dynamic_filter_onnx(x: Any, kernels: Any, kernel_size: int, dilation: int) -> Any:
    """``out[p] = Σ_t x[p + s_t] · kernels_t[p]`` in ONNX operators, for the dynamo ONNX exporter.

    Args:
        x (Tensor[B, C, H, W]): the features (an onnxscript value).
        kernels (Tensor[B, C·k², H, W]): channel-major, row-major taps.
        kernel_size (int): ``k``, odd.
        dilation (int): ``d``.

    Returns:
        Tensor[B, C, H, W]: ``k²`` ``Slice``/``Mul``/``Add`` triples after one ``Pad``.
    """
    from onnxscript import opset20 as op

    taps = kernel_size * kernel_size
    pad = dilation * (kernel_size - 1) // 2
    padded = op.Pad(x, op.Constant(value_ints=[0, 0, pad, pad, 0, 0, pad, pad]))
    shape = op.Shape(x)
    size = op.Slice(shape, [2], [4])  # (H, W)
    # (B, C·k², H, W) -> (B, C, k², H, W): tap t of channel c is kernels[:, :, t].
    kernels = op.Reshape(kernels, op.Concat(op.Slice(shape, [0], [2]), op.Constant(value_ints=[taps]), size, axis=0))
    kernels = op.CastLike(kernels, x)
    axes = op.Constant(value_ints=[2, 3])
    out = None
    for i in range(kernel_size):
        for j in range(kernel_size):
            t = i * kernel_size + j
            start = op.Constant(value_ints=[i * dilation, j * dilation])
            window = op.Slice(padded, start, op.Add(start, size), axes)
            term = op.Mul(window, op.Squeeze(op.Slice(kernels, [t], [t + 1], [2]), [2]))
            out = term if out is None else op.Add(out, term)
    return out


def fused_dynamic_filter_onnx(x: Any, guide: Any, weight: Any, bias: Any, kernel_size: int, dilations: list[int]) -> Any:
    """``dynfilter::fused_dynamic_filter`` in ONNX operators: the 1×1 ``Conv``, then one filter per dilation.

    ONNX has no fused form: the graph holds the kernel map, as the unfused modules' graphs do.
    """
    from onnxscript import opset20 as op

    weight = op.Unsqueeze(weight, op.Constant(value_ints=[2, 3]))
    kernels = op.Conv(guide, weight) if bias is None else op.Conv(guide, weight, bias)
    return tuple(dynamic_filter_onnx(x, kernels, kernel_size, d) for d in dilations)

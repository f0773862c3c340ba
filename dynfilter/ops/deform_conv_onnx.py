"""The ONNX translation of ``dynfilter::modulated_deform_conv2d``: ``GridSample`` columns, then ``MatMul``.

onnxruntime does not implement ONNX ``DeformConv``, so the op is written as the lean op computes it
(:mod:`.deform_conv`): the ``kh·kw`` deformed taps of every deformable group are sampled by one
``GridSample`` (bilinear, zeros outside, ``align_corners=0``, which is torchvision's corner rule),
multiplied by the mask, and contracted with the weight by one ``MatMul`` per convolution group.

Tap ``t = i·kw + j`` of output ``(ho, wo)`` lies at ``y = ho·s_h − p_h + i·d_h + Δy`` and
``x = wo·s_w − p_w + j·d_w + Δx``; with ``align_corners=0`` pixel ``y`` of an ``H``-pixel axis is
the normalised coordinate ``(2y + 1)/H − 1``. Offsets are torchvision's layout (group-major,
tap-major, ``(Δy, Δx)`` pairs). Batch, height and width stay symbolic; channels, kernel size,
stride, padding and dilation are fixed by the exported graph. :mod:`onnxscript` is imported when the
translation runs.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["modulated_deform_conv2d_onnx"]


def _positions(op: Any, count: Any, like: Any, stride: int, padding: int, taps: list[int]) -> tuple[Any, Any]:
    """``(o·stride − padding for o < count, the taps' offsets)`` along one axis, in ``like``'s dtype."""
    o = op.Range(op.Constant(value_int=0), op.Squeeze(count, [0]), op.Constant(value_int=1))
    o = op.CastLike(o, like)
    o = op.Sub(op.Mul(o, op.CastLike(op.Constant(value_float=float(stride)), like)),
               op.CastLike(op.Constant(value_float=float(padding)), like))
    return o, op.CastLike(op.Constant(value_floats=[float(v) for v in taps]), like)


def modulated_deform_conv2d_onnx(
    input: Any,
    offset: Any,
    weight: Any,
    bias: Any | None,
    mask: Any | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Any:
    """``bias + W ⋆ (mask · bilinear(input, p0 + p_k + Δp))`` in ONNX operators, for the dynamo exporter.

    Args:
        input (Tensor[B, Cin, H, W]): the features (an onnxscript value with static channels).
        offset (Tensor[B, 2·G·kh·kw, Ho, Wo]): offsets in pixels.
        weight (Tensor[Cout, Cin/groups, kh, kw]): static shape.
        bias (Tensor[Cout], optional), mask (Tensor[B, G·kh·kw, Ho, Wo], optional).
        stride, padding, dilation ((int, int)): as in ``nn.Conv2d``.

    Returns:
        Tensor[B, Cout, Ho, Wo]
    """
    from onnxscript import opset20 as op

    c_out, c_per_group, kh, kw = (int(v) for v in weight.shape)
    channels = int(input.shape[1])
    taps = kh * kw
    groups = channels // c_per_group
    deform_groups = int(offset.shape[1]) // (2 * taps)
    shape, out_shape = op.Shape(input), op.Shape(offset)
    batch, size = op.Slice(shape, [0], [1]), op.Slice(shape, [2], [4])
    out_h, out_w, out_size = op.Slice(out_shape, [2], [3]), op.Slice(out_shape, [3], [4]), op.Slice(out_shape, [2], [4])
    pixels = op.Mul(out_h, out_w)

    oy, ty = _positions(op, out_h, input, stride[0], padding[0], [i * dilation[0] for i in range(kh) for _ in range(kw)])
    ox, tx = _positions(op, out_w, input, stride[1], padding[1], [j * dilation[1] for _ in range(kh) for j in range(kw)])
    base_y = op.Add(op.Reshape(ty, [taps, 1, 1]), op.Reshape(oy, [1, -1, 1]))  # (k², Ho, 1)
    base_x = op.Add(op.Reshape(tx, [taps, 1, 1]), op.Reshape(ox, [1, 1, -1]))  # (k², 1, Wo)
    off_shape = op.Concat(batch, op.Constant(value_ints=[deform_groups, taps, 2]), out_size, axis=0)
    off = op.Reshape(op.CastLike(offset, input), off_shape)
    dy = op.Squeeze(op.Slice(off, [0], [1], [3]), [3])  # (B, G, k², Ho, Wo)
    dx = op.Squeeze(op.Slice(off, [1], [2], [3]), [3])
    one = op.CastLike(op.Constant(value_float=1.0), input)
    two = op.CastLike(op.Constant(value_float=2.0), input)
    height = op.CastLike(op.Slice(shape, [2], [3]), input)
    width = op.CastLike(op.Slice(shape, [3], [4]), input)
    gy = op.Sub(op.Div(op.Add(op.Mul(op.Add(base_y, dy), two), one), height), one)
    gx = op.Sub(op.Div(op.Add(op.Mul(op.Add(base_x, dx), two), one), width), one)
    grid = op.Concat(op.Unsqueeze(gx, [-1]), op.Unsqueeze(gy, [-1]), axis=-1)  # (B, G, k², Ho, Wo, (x, y))
    grid = op.Reshape(grid, op.Concat(op.Constant(value_ints=[-1, taps]), pixels, op.Constant(value_ints=[2]), axis=0))

    x = op.Reshape(input, op.Concat(op.Constant(value_ints=[-1, channels // deform_groups]), size, axis=0))
    cols = op.GridSample(x, grid, mode="linear", padding_mode="zeros", align_corners=0)  # (B·G, Cin/G, k², Ho·Wo)
    if mask is not None:
        m = op.Reshape(op.CastLike(mask, input), op.Concat(op.Constant(value_ints=[-1, 1, taps]), pixels, axis=0))
        cols = op.Mul(cols, m)
    # Channel-major, tap-minor columns per convolution group, the weight's own order.
    cols = op.Reshape(cols, op.Concat(batch, op.Constant(value_ints=[groups, c_per_group * taps, -1]), axis=0))
    w = op.Reshape(op.CastLike(weight, input), op.Constant(value_ints=[groups, c_out // groups, c_per_group * taps]))
    out = op.Reshape(op.MatMul(w, cols), op.Concat(batch, op.Constant(value_ints=[c_out]), out_size, axis=0))
    if bias is not None:
        out = op.Add(out, op.Reshape(op.CastLike(bias, input), op.Constant(value_ints=[c_out, 1, 1])))
    return out

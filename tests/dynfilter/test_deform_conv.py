"""The lean modulated deformable conv against torchvision's op, float64 gradcheck, chunking and ADFNet parity.

Tolerances (also in docs/performance.md), as the largest error over the largest reference magnitude:

* float64: 1e-12 for values and every gradient;
* float32: 1e-5 for values and every gradient. The sampling positions are passed to ``grid_sample``
  normalised to [-1, 1] and mapped back, which moves them by float rounding (about 1e-7 × the image
  size in pixels), as large as torchvision's own rounding of ``p0 + p_k + Δp``. Where a position lies
  that close to an integer the two can round to different pixel cells, and the offset derivative,
  one-sided there, differs (spec: bilinear sampling has kinks at integers); the offset gradients of
  samples within 1e-3 px of an integer are therefore compared in float64 only.
* A whole ADFNet (float32, same weights, offsets of a few pixels): 1e-4 of the output's largest
  magnitude, for the output and every parameter gradient (errors add up through 14 blocks).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dynfilter
from dynfilter import modulated_deform_conv2d, set_impls
from dynfilter.ops import deform_conv as _deform
from dynfilter.functional import REFERENCE_IMPLS, modulated_deform_conv2d_impls

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
MODEL_TOL = 1e-4


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """``max |actual − expected| ≤ tol · max |expected|``."""
    scale = expected.detach().abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual, expected, rtol=0, atol=float(tol * scale), msg=lambda m: f"{what}: {m}")


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def make_case(b, c, h, w, c_out, groups, deform_groups, scale, dtype, k=(3, 3), stride=1, padding=1, dilation=1):
    kh, kw = k
    ho, wo = out_size(h, kh, stride, padding, dilation), out_size(w, kw, stride, padding, dilation)
    taps = kh * kw
    x = torch.randn(b, c, h, w, dtype=dtype)
    offset = torch.randn(b, 2 * deform_groups * taps, ho, wo, dtype=dtype) * scale
    mask = torch.rand(b, deform_groups * taps, ho, wo, dtype=dtype)
    weight = torch.randn(c_out, c // groups, kh, kw, dtype=dtype)
    bias = torch.randn(c_out, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, weight, bias, mask)], dict(stride=stride, padding=padding, dilation=dilation)


def near_integer_samples(offset: torch.Tensor, k, stride, padding, dilation, within: float = 1e-3) -> torch.Tensor:
    """Bool mask shaped like ``offset``: samples whose y or x position is within ``within`` px of an integer."""
    b, _, ho, wo = offset.shape
    kh, kw = k
    off = offset.detach().double().view(b, -1, kh, kw, 2, ho, wo)
    def arange(n):
        return torch.arange(n, device=offset.device)

    ys = (arange(ho) * stride - padding).view(1, 1, 1, 1, ho, 1) + (arange(kh) * dilation).view(1, 1, kh, 1, 1, 1)
    xs = (arange(wo) * stride - padding).view(1, 1, 1, 1, 1, wo) + (arange(kw) * dilation).view(1, 1, 1, kw, 1, 1)
    pos = torch.stack((off[:, :, :, :, 0] + ys, off[:, :, :, :, 1] + xs), dim=4)
    near = ((pos - pos.round()).abs() < within).any(dim=4, keepdim=True)
    return near.expand_as(off).reshape(offset.shape)


def deform_conv_loop(x, offset, weight, bias, mask, stride, padding, dilation):
    """DCNv2 written from the spec (§5) with explicit loops: bilinear, each corner bounds-checked."""
    b, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    groups = offset.shape[1] // (2 * kh * kw)
    cols = x.new_zeros(b, c, kh * kw, ho, wo)
    for bi in range(b):
        for ci in range(c):
            g = ci // (c // groups)
            for t in range(kh * kw):
                ky, kx = divmod(t, kw)
                for i in range(ho):
                    for j in range(wo):
                        y = i * stride - padding + ky * dilation + offset[bi, 2 * (g * kh * kw + t), i, j].item()
                        xx = j * stride - padding + kx * dilation + offset[bi, 2 * (g * kh * kw + t) + 1, i, j].item()
                        if not (-1 < y < h and -1 < xx < w):
                            continue
                        y0, x0 = math.floor(y), math.floor(xx)
                        val = 0.0
                        for yc, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                                if 0 <= yc < h and 0 <= xc < w:
                                    val += wy * wx * x[bi, ci, yc, xc].item()
                        cols[bi, ci, t, i, j] = val * (1.0 if mask is None else mask[bi, g * kh * kw + t, i, j].item())
    n_groups = c // c_per_group
    out = torch.stack(
        [
            torch.einsum("ock,bckhw->bohw", wg.reshape(wg.shape[0], c_per_group, -1), cg)
            for wg, cg in zip(weight.chunk(n_groups), cols.chunk(n_groups, dim=1))
        ],
        dim=1,
    ).reshape(b, c_out, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("impl", ["torchvision", "lean"])
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 2, 2, 2)])
def test_matches_the_spec_loop(impl, stride, padding, dilation, groups):
    # Offsets of 2.5 px send some taps past the border, some just inside it.
    inputs, conv_args = make_case(2, 4, 5, 4, 4, groups, 2, 2.5, torch.float64, stride=stride, padding=padding, dilation=dilation)
    x, offset, weight, bias, mask = (t.detach() for t in inputs)
    expected = deform_conv_loop(x, offset, weight, bias, mask, stride, padding, dilation)
    out = modulated_deform_conv2d(x, offset, weight, bias, mask=mask, impl=impl, **conv_args)
    assert_close_scaled(out, expected, TOL[torch.float64], impl)


def run_both(inputs, conv_args, grad_out=None):
    """Outputs and gradients (input, offset, weight, bias, mask) of both implementations."""
    results = []
    for impl in ("torchvision", "lean"):
        x, offset, weight, bias, mask = inputs
        out = modulated_deform_conv2d(x, offset, weight, bias, mask=mask, impl=impl, **conv_args)
        grad_out = torch.randn_like(out) if grad_out is None else grad_out
        results.append((out, torch.autograd.grad(out, inputs, grad_out)))
    return results


def check_parity(inputs, conv_args, k, dtype):
    (ref, ref_grads), (out, grads) = run_both(inputs, conv_args)
    tol = TOL[dtype]
    assert_close_scaled(out, ref, tol, "output")
    for name, g, r in zip(("input", "offset", "weight", "bias", "mask"), grads, ref_grads):
        if name == "offset" and dtype != torch.float64:
            keep = ~near_integer_samples(inputs[1], k, conv_args["stride"], conv_args["padding"], conv_args["dilation"])
            assert keep.float().mean() > 0.9  # the exclusion is rare, so the check still covers the tensor
            g, r = g[keep], r[keep]
        assert_close_scaled(g, r, tol, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.3, 2.5, 20.0])  # 20 px sends most taps outside the image
@pytest.mark.parametrize("deform_groups", [1, 8])
@pytest.mark.parametrize("size", [(7, 5), (9, 13)])
def test_matches_torchvision(dtype, scale, deform_groups, size):
    inputs, conv_args = make_case(3, 16, *size, 6, 1, deform_groups, scale, dtype)
    check_parity(inputs, conv_args, (3, 3), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_strided_dilated_grouped(dtype):
    # Non-square kernel, stride 2, padding 2, dilation 2, 2 weight groups, 2 offset groups.
    inputs, conv_args = make_case(2, 8, 11, 9, 6, 2, 2, 1.5, dtype, k=(3, 2), stride=2, padding=2, dilation=2)
    check_parity(inputs, conv_args, (3, 2), dtype)


def test_without_mask_and_bias_matches_torchvision():
    inputs, conv_args = make_case(2, 8, 6, 7, 5, 1, 4, 1.5, torch.float64)
    x, offset, weight, _, _ = inputs
    outs = [modulated_deform_conv2d(x, offset, weight, impl=impl, **conv_args) for impl in ("torchvision", "lean")]
    assert_close_scaled(outs[1], outs[0], TOL[torch.float64], "output")
    grads = [torch.autograd.grad(o.square().sum(), (x, offset, weight)) for o in outs]
    for g, r in zip(grads[1], grads[0]):
        assert_close_scaled(g, r, TOL[torch.float64], "gradient")


# A row of columns is 16·9·13·8 = 14,976 bytes: one row per chunk, 3 rows, 2 whole images per chunk.
@pytest.mark.parametrize("budget", [1, 45_000, 270_000])
def test_chunking_gives_the_unchunked_result(monkeypatch, budget):
    inputs, conv_args = make_case(3, 16, 9, 13, 6, 1, 8, 2.5, torch.float64)
    grad_out = torch.randn(3, 6, 9, 13, dtype=torch.float64)
    whole_out = modulated_deform_conv2d(*inputs[:4], mask=inputs[4], **conv_args)
    whole_grads = torch.autograd.grad(whole_out, inputs, grad_out)
    calls = []
    real_chunks = _deform._chunks
    monkeypatch.setattr(_deform, "_chunks", lambda *a: calls.append(list(real_chunks(*a))) or iter(calls[-1]))
    monkeypatch.setattr(_deform, "COLUMNS_BUDGET_BYTES", budget)
    out = modulated_deform_conv2d(*inputs[:4], mask=inputs[4], **conv_args)
    grads = torch.autograd.grad(out, inputs, grad_out)
    n_chunks = len(calls[0])
    assert n_chunks == {1: 27, 45_000: 9, 270_000: 2}[budget]  # 3 images × 9 rows; 3 × 3 rows; 2 + 1 images
    assert_close_scaled(out, whole_out, 1e-13, "output")
    for g, r in zip(grads, whole_grads):
        assert_close_scaled(g, r, 1e-13, "gradient")


def test_non_finite_offsets_do_not_break_row_chunks(monkeypatch):
    monkeypatch.setattr(_deform, "COLUMNS_BUDGET_BYTES", 1)
    x, offset, weight = torch.randn(1, 8, 6, 5), torch.randn(1, 36, 6, 5), torch.randn(4, 8, 3, 3)
    offset[0, 0, 2, 3] = float("nan")
    offset[0, 1, 4, 1] = float("inf")
    out = modulated_deform_conv2d(x, offset, weight, padding=1)
    assert out.shape == (1, 4, 6, 5)
    assert out[:, :, :2].isfinite().all()  # rows whose taps all have finite offsets are unaffected


def test_chunks_respect_the_budget():
    # Every chunk's columns fit the budget unless one output row alone exceeds it.
    row_bytes = 100
    for batch, rows, budget in [(3, 9, 1), (3, 9, 250), (3, 9, 900), (4, 5, 10_000)]:
        chunks = list(_deform._chunks(batch, rows, rows * row_bytes, budget))
        covered = [(b, r) for b0, b1, r0, r1 in chunks for b in range(b0, b1) for r in range(r0, r1)]
        assert sorted(covered) == [(b, r) for b in range(batch) for r in range(rows)]
        assert all((b1 - b0) * (r1 - r0) * row_bytes <= max(budget, row_bytes) for b0, b1, r0, r1 in chunks)


def test_gradcheck_float64():
    torch.manual_seed(1)
    inputs, conv_args = make_case(2, 4, 4, 3, 2, 1, 2, 1.3, torch.float64)
    x, offset, weight, bias, mask = inputs

    def fn(x, offset, weight, bias, mask):
        return torch.ops.dynfilter.modulated_deform_conv2d(x, offset, weight, bias, mask, [1, 1], [1, 1], [1, 1])

    assert not near_integer_samples(offset, (3, 3), 1, 1, 1, within=1e-5).any()  # finite differences need no kink
    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias, mask), eps=1e-6, atol=1e-7, fast_mode=True)


def test_opcheck():
    inputs, _ = make_case(2, 8, 5, 6, 4, 2, 2, 1.5, torch.float32)
    args = (*inputs, [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.dynfilter.modulated_deform_conv2d.default, args)
    x, offset, weight, _, _ = inputs
    torch.library.opcheck(
        torch.ops.dynfilter.modulated_deform_conv2d.default, (x, offset, weight, None, None, [1, 1], [1, 1], [1, 1])
    )


def test_flop_counter_sees_one_op_with_the_complexity_convention():
    from dynfilter.complexity import profile

    inputs, conv_args = make_case(2, 8, 5, 6, 4, 2, 2, 1.5, torch.float32)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        modulated_deform_conv2d(*inputs[:4], mask=inputs[4], **conv_args)
    # Hand count, docs/complexity.md: the grouped conv B·Cout·Ho·Wo·(Cin/groups)·k² plus the modulated
    # bilinear sampling B·Cin·k²·Ho·Wo·(4 + 1), 2 FLOPs per multiply-add.
    conv, sampling = 2 * 4 * 5 * 6 * 4 * 9, 2 * 8 * 9 * 5 * 6 * 5
    assert counter.get_total_flops() == 2 * (conv + sampling)
    # dynfilter.complexity counts the same multiply-adds (one convention for both counters).

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, t in zip(("offset", "weight", "bias", "mask"), inputs[1:5]):
                self.register_buffer(name, t)

        def forward(self, x):
            return modulated_deform_conv2d(x, self.offset, self.weight, self.bias, mask=self.mask, **conv_args)

    assert profile(Call(), tuple(inputs[0].shape)).macs == conv + sampling


def test_low_precision_and_non_contiguous_inputs():
    inputs, conv_args = make_case(2, 8, 6, 7, 5, 1, 2, 1.5, torch.float32)
    x, offset, weight, bias, mask = (t.detach() for t in inputs)
    ref = modulated_deform_conv2d(x, offset, weight, bias, mask=mask, **conv_args)
    out = modulated_deform_conv2d(x.to(memory_format=torch.channels_last), offset, weight, bias, mask=mask, **conv_args)
    assert_close_scaled(out, ref, TOL[torch.float32], "channels_last input")
    # Offsets and mask cut from one tensor along channels (as ModulatedDeformConv2d does): strided images.
    both = torch.cat((offset, mask), dim=1)
    out = modulated_deform_conv2d(x, both[:, : offset.shape[1]], weight, bias, mask=both[:, offset.shape[1] :], **conv_args)
    assert_close_scaled(out, ref, TOL[torch.float32], "channel-sliced offset and mask")
    # Mixed dtypes are promoted (here to float32), as torch ops do.
    out = modulated_deform_conv2d(x.bfloat16(), offset.bfloat16(), weight, bias, mask=mask, **conv_args)
    assert out.dtype == torch.float32
    assert_close_scaled(out, ref, 5e-2, "bfloat16 input")


def test_empty_batch():
    x, offset, weight = torch.randn(0, 4, 5, 5), torch.randn(0, 18, 5, 5), torch.randn(3, 4, 3, 3)
    for impl in modulated_deform_conv2d_impls():
        assert modulated_deform_conv2d(x, offset, weight, padding=1, impl=impl).shape == (0, 3, 5, 5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(offset=torch.randn(2, 17, 5, 6)), "multiple of 18"),
        (dict(offset=torch.randn(2, 18 * 3, 5, 6)), "divisible by the 3 offset groups"),
        (dict(offset=torch.randn(2, 36, 4, 6)), r"offset must have shape"),
        (dict(mask=torch.rand(2, 9, 5, 6)), r"mask must have shape"),
        (dict(bias=torch.randn(5)), r"bias must have shape"),
        (dict(weight=torch.randn(4, 3, 3, 3)), "does not fit input channels 8"),
        (dict(x=torch.randn(8, 5, 6)), "input must be a 4-D tensor"),
        (dict(stride=0), "stride must be"),
        (dict(padding=(1, 1, 1)), "padding must be"),
        (dict(padding=0, dilation=3), "too small for a 3×3 kernel"),
        (dict(impl="fast"), r"unknown impl 'fast'.*'lean', 'torchvision'"),
    ],
)
def test_errors(change, match):
    args = dict(
        x=torch.randn(2, 8, 5, 6),
        offset=torch.randn(2, 36, 5, 6),
        weight=torch.randn(4, 8, 3, 3),
        bias=torch.randn(4),
        mask=torch.rand(2, 18, 5, 6),
        stride=1,
        padding=1,
        impl="auto",
    )
    args.update(change)
    x, offset, weight = args.pop("x"), args.pop("offset"), args.pop("weight")
    with pytest.raises(ValueError, match=match):
        modulated_deform_conv2d(x, offset, weight, **args)


def _randomise_offsets(model: nn.Module, std: float) -> nn.Module:
    # The offset/mask convs start at zero (all offsets 0); give them weights that move taps by pixels.
    for m in model.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            nn.init.normal_(m.conv_offset_mask.weight, std=std)
            nn.init.normal_(m.conv_offset_mask.bias, std=1.0)
    return model


def test_layer_impl_switch_and_set_impls():
    dcn = _randomise_offsets(dynfilter.ModulatedDeformConv2d(16, 16), 0.05)
    x, feat = torch.randn(2, 16, 9, 7), torch.randn(2, 32, 9, 7)
    assert dcn.impl == "auto"
    out = dcn(x, feat)
    set_impls(dcn, modulated_deform_conv2d="torchvision")
    assert dcn.impl == "torchvision"
    assert_close_scaled(out, dcn(x, feat), TOL[torch.float32], "layer output")
    block = set_impls(dynfilter.MDCB(16, 8), **REFERENCE_IMPLS)
    assert (block.impl, block.dcn.impl) == ("unfold", "torchvision")
    set_impls(block, dynamic_filter="auto")  # leaves the deformable conv alone
    assert (block.impl, block.dcn.impl) == ("auto", "torchvision")
    with pytest.raises(ValueError, match=r"unknown modulated_deform_conv2d impl 'unfold'.*'lean', 'torchvision'"):
        set_impls(block, dynamic_filter="unfold", modulated_deform_conv2d="unfold")
    assert (block.impl, block.dcn.impl) == ("auto", "torchvision")  # a refused call changes nothing


def test_adfnet_lean_matches_reference_on_the_same_weights(one_thread):
    backbones = pytest.importorskip("backbones")
    torch.manual_seed(0)
    model = _randomise_offsets(backbones.build("adfnet"), 0.02)
    x = torch.rand(1, 3, 32, 40)
    moved = []
    for m in model.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            m.register_forward_hook(lambda mod, args, out: moved.append(mod.offset_and_mask(args[1])[0].abs().mean()))
    results = []
    for impls in (REFERENCE_IMPLS, dict(dynamic_filter="auto", modulated_deform_conv2d="auto")):
        set_impls(model, **impls)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    assert len(moved) == 2 * 7 and min(moved) > 0.3  # 7 deformable convs, taps moved by a fraction of a pixel or more
    assert_close_scaled(out, ref, MODEL_TOL, "ADFNet output")
    for name, g in grads.items():
        assert_close_scaled(g, ref_grads[name], MODEL_TOL, f"grad {name}")

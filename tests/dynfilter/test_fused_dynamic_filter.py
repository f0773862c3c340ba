"""The fused kernel-generation + dynamic filter (``dynfilter::fused_dynamic_filter``), against the unfused truth.

Truth: the kernels made by an explicit ``einsum`` (the 1×1 conv) and filtered by the published unfold
reference, in float64, for both backends (native C++ and tiled torch), and DConv / MDCB computing the same
values and gradients with ``impl="fused"``, ``"lean"`` and ``"unfold"``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dynfilter
from dynfilter.functional import fused_dynamic_filter, module_impl
from dynfilter.ops import dynamic_filter_native, fused_dynamic_filter as fused
from dynfilter.ops.dynamic_filter_unfold import dynamic_filter_unfold

from .graphs import GraphRecorder

F64 = torch.float64


def _reference(x, guide, weight, bias, k, dilations):
    kernels = torch.einsum("og,bghw->bohw", weight, guide)
    if bias is not None:
        kernels = kernels + bias.view(1, -1, 1, 1)
    return [dynamic_filter_unfold(x, kernels, k, d) for d in dilations]


def _operands(b, c, g, h, w, k, bias=True, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).requires_grad_()  # noqa: E731
    return make(b, c, h, w), make(b, g, h, w), make(c * k * k, g), make(c * k * k) if bias else None


@pytest.fixture(params=["native", "tiled"])
def backend(request, monkeypatch):
    """Each test runs on both backends; the tiled one with blocks of a few rows so that it really tiles."""
    if request.param == "tiled":
        monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 16)
        with dynamic_filter_native.disabled():
            yield "tiled"
    else:
        yield "native"


CASES = [
    # B, C, G, H, W, k, dilations, bias
    (2, 3, 5, 7, 9, 3, (1,), True),
    (1, 4, 4, 13, 11, 3, (1, 3, 5), True),
    (2, 2, 3, 6, 5, 5, (2,), False),
    (1, 2, 3, 20, 17, 1, (1,), True),
    (1, 3, 6, 45, 10, 3, (1, 3, 5), True),  # native: several row blocks, each with its halo
    (1, 2, 2, 3, 2, 7, (4,), True),  # taps reach far past the image
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-d{c[6]}")
def test_values_and_gradients_match_the_unfused_reference(case, backend):
    b, c, g, h, w, k, dilations, bias = case
    x, guide, weight, bias_t = _operands(b, c, g, h, w, k, bias)
    inputs = [t for t in (x, guide, weight, bias_t) if t is not None]
    assert fused.backend_for(x, guide, weight, bias_t) == backend
    out = fused_dynamic_filter(x, guide, weight, bias_t, k, dilations)
    ref = _reference(x, guide, weight, bias_t, k, dilations)
    grads = [torch.randn_like(r) for r in ref]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-10)
    got = torch.autograd.grad(out, inputs, grads)
    want = torch.autograd.grad(ref, inputs, grads)
    for gg, ww in zip(got, want):
        torch.testing.assert_close(gg, ww, rtol=0, atol=1e-10)


def test_gradcheck(backend):
    x, guide, weight, bias = _operands(1, 2, 3, 6, 5, 3)
    assert torch.autograd.gradcheck(lambda *t: fused_dynamic_filter(*t, 3, (1, 2)), (x, guide, weight, bias))


def test_only_the_wanted_gradients_are_computed(backend):
    x, guide, weight, bias = _operands(1, 2, 3, 6, 5, 3)
    x.requires_grad_(False)
    weight.requires_grad_(False)
    out = fused_dynamic_filter(x, guide, weight, bias, 3, (1,))[0]
    gguide, gbias = torch.autograd.grad(out.sum(), (guide, bias))
    ref = _reference(x, guide, weight, bias, 3, (1,))[0]
    want = torch.autograd.grad(ref.sum(), (guide, bias))
    torch.testing.assert_close(gguide, want[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(gbias, want[1], rtol=0, atol=1e-10)


def test_an_unused_output_contributes_no_gradient(backend):
    x, guide, weight, bias = _operands(1, 2, 3, 6, 5, 3)
    first, _ = fused_dynamic_filter(x, guide, weight, bias, 3, (1, 3))
    got = torch.autograd.grad(first.sum(), (x, guide))
    ref = _reference(x, guide, weight, bias, 3, (1,))[0]
    for g, w in zip(got, torch.autograd.grad(ref.sum(), (x, guide))):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_bfloat16_accumulates_in_float():
    x, guide, weight, bias = (t.detach() for t in _operands(1, 4, 8, 9, 19, 3, dtype=torch.float32))
    out = fused_dynamic_filter(*(t.bfloat16() for t in (x, guide, weight, bias)), 3, (1,))[0]
    assert out.dtype == torch.bfloat16
    ref = _reference(*(t.bfloat16().float() for t in (x, guide, weight, bias)), 3, (1,))[0]
    # One rounding of each output to bfloat16 (8 bits of mantissa), not one per multiply-add.
    torch.testing.assert_close(out.float(), ref, rtol=2**-8, atol=1e-3 * ref.abs().max().item())


def test_mixed_dtypes_promote():
    x, guide, weight, bias = (t.detach() for t in _operands(1, 2, 3, 6, 5, 3, dtype=torch.float32))
    out = fused_dynamic_filter(x.bfloat16(), guide, weight, bias, 3, (1,))[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(x.bfloat16().float(), guide, weight, bias, 3, (1,))[0])


@pytest.mark.parametrize(
    "module, shape",
    [
        (lambda: dynfilter.DConv(6), (2, 6, 13, 11)),
        (lambda: dynfilter.DConv(4, kernel_size=5, dilation=2), (1, 4, 9, 10)),
        (lambda: dynfilter.MDCB(16, 8, deform_groups=4), (2, 16, 12, 9)),
    ],
    ids=["dconv", "dconv-k5-d2", "mdcb"],
)
def test_modules_compute_the_same_with_every_impl(module, shape):
    torch.manual_seed(0)
    block = module().double()
    for m in block.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            nn.init.normal_(m.conv_offset_mask.weight, std=0.1)
    x = torch.randn(shape, dtype=F64)
    grad = torch.randn(shape, dtype=F64)
    results = {}
    for impl in ("fused", "lean", "unfold"):
        dynfilter.set_dynamic_filter_impl(block, impl)
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()  # an inner layer: the gradient reaches x through SEKG and the filter
        out = block(xi)
        out.backward(grad)
        results[impl] = [out.detach(), xi.grad, *(p.grad for p in block.parameters())]
    for impl in ("lean", "unfold"):
        for got, want in zip(results["fused"], results[impl]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_dconv_gradcheck_through_the_recomputed_guide():
    block = dynfilter.DConv(2).double()
    block.impl = "fused"
    x = torch.randn(1, 2, 5, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def test_double_backward_says_to_use_lean():
    block = dynfilter.DConv(2).double()
    block.impl = "fused"
    x = torch.randn(1, 2, 5, 4, dtype=F64, requires_grad=True)
    (gx,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=False)  # first order is fine
    with pytest.raises(RuntimeError, match="first-order gradients only.*'lean'"):
        torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    block.impl = "lean"
    assert torch.autograd.gradgradcheck(block, (x,))


def test_auto_means_fused_on_cpu_for_large_kernel_maps():
    big = torch.empty(2, 8, 1024, 1024)  # a kernel map of 2·72·1024² values
    assert module_impl("auto", big, 72) == "fused"
    assert module_impl("auto", torch.empty(2, 8, 16, 16), 72) == "lean"  # small maps stay in cache: unfused
    assert module_impl("auto", big.to("meta"), 72) == "lean"  # not CPU
    assert module_impl("lean", big, 72) == "lean"
    block = dynfilter.set_impls(dynfilter.DCB(4), dynamic_filter="fused")
    assert block.dconv.impl == "fused"


def test_functional_dynamic_filter_does_not_take_fused():
    with pytest.raises(ValueError, match="unknown impl 'fused'"):
        dynfilter.dynamic_filter(torch.randn(1, 1, 3, 3), torch.randn(1, 9, 3, 3), impl="fused")


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(1, 2, 5, 5), torch.randn(1, 3, 5, 4), torch.randn(18, 3)), r"guide must have shape \(B, G, H, W\)"),
        ((torch.randn(1, 2, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(18, 4)), r"weight must have shape \(C·k², G\) = \(18, 3\)"),
        ((torch.randn(1, 2, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(18, 3), torch.randn(9)), r"bias must have shape"),
        ((torch.randn(2, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(18, 3)), "x must be a 4-D tensor"),
    ],
)
def test_bad_arguments_say_what_was_expected(args, message):
    with pytest.raises(ValueError, match=message):
        fused_dynamic_filter(*args)


def test_bad_dilations_are_refused():
    x, guide, weight, bias = (t.detach() for t in _operands(1, 2, 3, 6, 5, 3))
    with pytest.raises(ValueError, match="at least one dilation"):
        fused_dynamic_filter(x, guide, weight, bias, 3, ())
    with pytest.raises(ValueError, match="dilation must be a positive int"):
        fused_dynamic_filter(x, guide, weight, bias, 3, (1, 0))


def test_flop_counter_counts_the_kernels_and_the_filters():
    b, c, g, h, w, k = 2, 3, 5, 7, 6, 3
    x, guide, weight, bias = _operands(b, c, g, h, w, k)
    with FlopCounterMode(display=False) as counter:
        out = fused_dynamic_filter(x, guide, weight, bias, k, (1, 3))
        torch.autograd.grad(out, (x, guide, weight, bias), [torch.ones_like(o) for o in out])
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    generate = b * h * w * c * k * k * g  # the 1×1 conv's multiply-adds, by hand
    filtering = 2 * b * c * h * w * k * k  # two dilations
    assert counts["dynfilter.fused_dynamic_filter"] == 2 * (generate + filtering)
    assert counts["dynfilter.fused_dynamic_filter_backward"] == 2 * (2 * generate + 2 * filtering)


def test_fvcore_counts_the_same_macs_fused_and_unfused():
    from fvcore.nn import FlopCountAnalysis

    from dynfilter.complexity import OP_HANDLES, profile

    block = dynfilter.DConv(8).eval()
    x = torch.randn(1, 8, 16, 12)
    counts = {}
    for impl in ("fused", "lean"):
        block.impl = impl
        with torch.no_grad():
            analysis = FlopCountAnalysis(block, (x,)).set_op_handle(**OP_HANDLES).unsupported_ops_warnings(False)
            counts[impl] = dict(analysis.by_operator())
    assert counts["fused"] == counts["lean"]
    pixels = 16 * 12
    # the 1×1 conv, SEKG's depthwise 3×3 and its 3-tap conv across the 8 pooled channels
    assert counts["fused"]["conv"] == pixels * 8 * 9 * 8 + pixels * 8 * 9 + 8 * 3
    assert counts["fused"]["dynamic_filter"] == pixels * 8 * 9
    # profile() attributes the 1×1 conv to kernel_conv whatever the impl (it traces unfused) and leaves it as it was
    block.impl = "fused"
    assert {m.name: m.macs for m in profile(block, (1, 8, 16, 12)).modules}["kernel_conv"] == pixels * 8 * 9 * 8
    assert block.impl == "fused"


def test_compile_sees_one_fused_node_forward_and_backward():
    torch._dynamo.reset()
    recorder = GraphRecorder()
    block = dynfilter.DConv(3, dilation=2)
    block.impl = "fused"
    compiled = torch.compile(block, backend=recorder)
    x = torch.randn(2, 3, 9, 7, requires_grad=True)
    out = compiled(x)
    torch.testing.assert_close(out, block(x))
    gx = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(block(x).sum(), x)[0])
    targets = [n.target for g in recorder.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynfilter.fused_dynamic_filter.default) == 1


def test_export_keeps_one_fused_node_for_the_three_branches():
    block = dynfilter.MDCB(8, 8, deform_groups=4).eval()
    block.impl = "fused"
    x = torch.randn(1, 8, 10, 9)
    program = torch.export.export(block, (x,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynfilter.fused_dynamic_filter.default) == 1
    assert torch.ops.dynfilter.dynamic_filter.default not in targets
    torch.testing.assert_close(program.module()(x), block(x))


def test_opcheck():
    x, guide, weight, bias = (t.detach() for t in _operands(1, 2, 3, 6, 5, 3))
    torch.library.opcheck(torch.ops.dynfilter.fused_dynamic_filter.default, (x, guide, weight, bias, 3, [1, 2]),
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_training_step_under_bf16_autocast_and_aot_compile():
    """The trainer's options on the fused path: autocast reaches the recomputed SEKG, compile keeps the op."""
    torch.manual_seed(0)
    block = dynfilter.DConv(4)
    block.impl = "fused"
    x = torch.randn(2, 4, 12, 10, requires_grad=True)

    def grads(fn):
        block.zero_grad(set_to_none=True)
        x.grad = None
        fn(x).float().square().mean().backward()
        return [x.grad.clone(), *(p.grad.clone() for p in block.parameters())]

    reference = grads(block)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = grads(block)
    torch._dynamo.reset()
    compiled = grads(torch.compile(block, backend="aot_eager"))
    assert any((lo - ref).abs().max() > 0 for lo, ref in zip(low, reference))  # autocast did run
    for ref, lo, co in zip(reference, low, compiled):
        scale = ref.abs().max().item()
        assert (lo - ref).abs().max().item() <= 0.1 * scale  # bfloat16: 8 bits of mantissa through two convs
        torch.testing.assert_close(co, ref)


# The Triton kernels (CUDA's fused backend) through Triton's interpreter on CPU tensors, in a fresh process
# (TRITON_INTERPRET must be set before Triton compiles anything), with the native library switched off so
# that the registered op dispatches to them: the same cases and truth as above, gradcheck, and DConv / MDCB
# with impl="fused" against impl="unfold". On a GPU, tests/dynfilter/test_cuda.py checks the compiled kernels.
TRITON_CHECK = """
import torch
from torch import nn
import dynfilter
from dynfilter.functional import fused_dynamic_filter
from dynfilter.ops import dynamic_filter_native, fused_dynamic_filter as fused
from tests.dynfilter.test_fused_dynamic_filter import CASES, _operands, _reference

with dynamic_filter_native.disabled():
    for b, c, g, h, w, k, dilations, bias in CASES + [(1, 17, 33, 5, 9, 3, (1, 2, 3), False), (2, 3, 4, 6, 7, 3, (1, 2, 3, 4), True)]:
        x, guide, weight, bias_t = _operands(b, c, g, h, w, k, bias)
        want_backend = "triton" if len(dilations) <= 3 else "tiled"
        assert fused.backend_for(x, guide, weight, bias_t, dilations) == want_backend, (dilations, want_backend)
        inputs = [t for t in (x, guide, weight, bias_t) if t is not None]
        out = fused_dynamic_filter(x, guide, weight, bias_t, k, dilations)
        ref = _reference(x, guide, weight, bias_t, k, dilations)
        grads = [torch.randn_like(r) for r in ref]
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r, rtol=0, atol=1e-10)
        for got, want in zip(torch.autograd.grad(out, inputs, grads), torch.autograd.grad(ref, inputs, grads)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # Only the wanted gradients: guide alone, then weight alone.
    x, guide, weight, bias_t = _operands(1, 3, 4, 6, 5, 3)
    for wanted in ((guide,), (weight, bias_t)):
        got = torch.autograd.grad(fused_dynamic_filter(x, guide, weight, bias_t, 3, (1,))[0].sum(), wanted)
        want = torch.autograd.grad(_reference(x, guide, weight, bias_t, 3, (1,))[0].sum(), wanted)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-10)
    # fast_mode: one random direction instead of one column per input element (minutes in the interpreter).
    x, guide, weight, bias_t = _operands(1, 2, 3, 5, 4, 3)
    assert torch.autograd.gradcheck(lambda *t: fused_dynamic_filter(*t, 3, (1, 2)), (x, guide, weight, bias_t), fast_mode=True)
    # float32: IEEE products, so the unfused path's values to float32 rounding.
    x, guide, weight, bias_t = (t.detach().float() for t in _operands(2, 5, 7, 9, 8, 3))
    out = fused_dynamic_filter(x, guide, weight, bias_t, 3, (1, 3))
    ref = _reference(*(t.double() for t in (x, guide, weight, bias_t)), 3, (1, 3))
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    for block, shape in ((dynfilter.DConv(6), (2, 6, 9, 7)), (dynfilter.MDCB(16, 8, deform_groups=4), (1, 16, 8, 6))):
        block = block.double()
        for m in block.modules():
            if isinstance(m, dynfilter.ModulatedDeformConv2d):
                nn.init.normal_(m.conv_offset_mask.weight, std=0.1)
        x, grad = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        results = []
        for impl in ("fused", "unfold"):
            dynfilter.set_dynamic_filter_impl(block, impl)
            block.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out = block(xi)
            out.backward(grad)
            results.append([out.detach(), xi.grad, *(p.grad for p in block.parameters())])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
print("ok")
"""


def test_triton_fused_kernels_match_the_reference_in_the_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

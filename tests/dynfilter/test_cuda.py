"""The lean ops on a GPU: agreement with the references and with the CPU, memory, torch.compile.

Every test here needs CUDA and is skipped without it (CI has none); ``benchmarks/gpu_check.sh`` runs
this file, the other CUDA tests and the CUDA benchmark in one go on a lent GPU machine.
``DYNFILTER_TEST_DEVICE=cpu`` runs the same checks on the CPU, to check the tests themselves.
"""

from __future__ import annotations

import os

import pytest
import torch

import dynfilter
from dynfilter import modulated_deform_conv2d, set_impls
from dynfilter.ops import dynamic_filter_triton as _triton
from dynfilter.functional import REFERENCE_IMPLS, dynamic_filter
from experiments.bench.harness import peak_memory

from .test_deform_conv import MODEL_TOL, TOL, _randomise_offsets, assert_close_scaled, check_parity, make_case

DEVICE = os.environ.get("DYNFILTER_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="CUDA not available (DYNFILTER_TEST_DEVICE=cpu runs these on the CPU)"
)
LEAN = dict(dynamic_filter="auto", modulated_deform_conv2d="auto")


def _filter_results(impl, x, kernels, grad, k, d):
    xi, ki = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    out = dynamic_filter(xi, ki, k, d, impl=impl)
    out.backward(grad)
    return out.detach(), xi.grad, ki.grad


@pytest.fixture(params=["compiled", "eager"])
def gpu_path(request, monkeypatch):
    """Each GPU check once with the Triton kernels (where Triton imports) and once with the eager taps."""
    if request.param == "eager":
        monkeypatch.setenv("DYNFILTER_TRITON", "0")
    elif DEVICE == "cuda" and not _triton.available():
        pytest.skip("Triton is not installed: the eager path is all there is")
    return request.param


def test_cuda_uses_the_triton_kernels_where_triton_imports():
    x = torch.randn(1, 2, 8, 8, device=DEVICE)
    fn = _triton.kernel("forward", x, torch.randn(1, 18, 8, 8, device=DEVICE), 3)
    assert (fn is not None) == (DEVICE == "cuda" and _triton.available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, d", [(3, 1), (3, 3), (3, 5), (5, 2)])
def test_dynamic_filter_matches_unfold_and_the_cpu(gpu_path, dtype, k, d):
    b, c, h, w = 2, 5, 23, 17  # odd sizes, batch > 1, dilation 5 reaching past half the width
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    kernels = torch.randn(b, c * k * k, h, w, dtype=torch.float64)
    grad = torch.randn_like(x)
    on_device = [t.to(DEVICE, dtype) for t in (x, kernels, grad)]
    lean = _filter_results("lean", *on_device, k, d)
    unfold = _filter_results("unfold", *on_device, k, d)
    cpu = _filter_results("lean", x, kernels, grad, k, d)  # float64 on the CPU: the truth for both dtypes
    tol = TOL[dtype]
    for name, got, want, truth in zip(("out", "grad x", "grad kernels"), lean, unfold, cpu):
        assert got.device.type == DEVICE and got.dtype == dtype
        assert_close_scaled(got, want, tol, f"{name} against unfold")
        assert_close_scaled(got.cpu().double(), truth, tol, f"{name} against the CPU")


def test_dynamic_filter_bfloat16_accumulates_in_float32(gpu_path):
    x = torch.randn(1, 8, 33, 31, device=DEVICE)
    kernels = torch.randn(1, 72, 33, 31, device=DEVICE)
    got = dynamic_filter(x.bfloat16(), kernels.bfloat16(), 3, 2, impl="lean")
    want = dynamic_filter(x.bfloat16().double(), kernels.bfloat16().double(), 3, 2)  # same rounded inputs, exact sums
    assert got.dtype == torch.bfloat16
    # One rounding of the float32 sum to bfloat16 (2^-8 relative), not nine.
    assert_close_scaled(got.double(), want, 2**-8, "bfloat16 output")


def test_dconv_under_bfloat16_autocast_matches_the_reference():
    module = dynfilter.DConv(8).to(DEVICE)
    x = torch.randn(2, 8, 16, 16, device=DEVICE)
    outs = {}
    for impl in ("unfold", "auto"):
        dynfilter.set_dynamic_filter_impl(module, impl)
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            outs[impl] = module(x).float()
    assert_close_scaled(outs["auto"], outs["unfold"], 3e-2, "DConv under autocast")


def test_dynamic_filter_never_holds_the_unfolded_tensor(gpu_path):
    b, c, h, w = 1, 16, 96, 96
    x = torch.randn(b, c, h, w, device=DEVICE)
    kernels = torch.randn(b, 9 * c, h, w, device=DEVICE)
    unit = x.numel() * x.element_size()
    with torch.no_grad():
        lean = peak_memory(lambda: dynamic_filter(x, kernels, 3, 3, impl="lean"), DEVICE)
        unfold = peak_memory(lambda: dynamic_filter(x, kernels, 3, 3, impl="unfold"), DEVICE)
    assert lean <= 2 * unit  # the output, and at most one input-sized temporary
    assert unfold >= 9 * unit  # the published formulation's patch tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("deform_groups, scale", [(1, 0.3), (8, 2.5), (8, 20.0)])
def test_deform_conv_matches_torchvision(dtype, deform_groups, scale):
    inputs, conv_args = make_case(3, 16, 9, 13, 8, 1, deform_groups, scale, dtype)
    inputs = [t.detach().to(DEVICE).requires_grad_() for t in inputs]
    check_parity(inputs, conv_args, (3, 3), dtype)


def test_deform_conv_matches_the_cpu():
    inputs, conv_args = make_case(2, 8, 11, 7, 8, 2, 2, 2.5, torch.float64, stride=2, padding=2, dilation=2)
    inputs = [t.detach() for t in inputs]
    cpu = modulated_deform_conv2d(*inputs[:4], mask=inputs[4], impl="lean", **conv_args)
    device = modulated_deform_conv2d(*(t.to(DEVICE) for t in inputs[:4]), mask=inputs[4].to(DEVICE), impl="lean", **conv_args)
    assert_close_scaled(device.cpu(), cpu, TOL[torch.float64], "lean on the device against the CPU")


def test_auto_deform_conv_is_torchvision_on_cuda_and_lean_elsewhere():
    inputs, conv_args = make_case(1, 8, 6, 5, 4, 1, 2, 1.5, torch.float32)
    inputs = [t.detach().to(DEVICE) for t in inputs]
    args = dict(mask=inputs[4], **conv_args)
    auto = modulated_deform_conv2d(*inputs[:4], impl="auto", **args)
    expected = modulated_deform_conv2d(*inputs[:4], impl="torchvision" if DEVICE == "cuda" else "lean", **args)
    assert torch.equal(auto, expected)


def test_adfnet_lean_matches_reference_and_the_cpu():
    backbones = pytest.importorskip("backbones")
    torch.manual_seed(0)
    model = _randomise_offsets(backbones.build("adfnet", widths=(16, 16, 32, 32)), 0.02)
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        cpu = set_impls(model, **LEAN)(x)
        model = model.to(DEVICE)
        ref = set_impls(model, **REFERENCE_IMPLS)(x.to(DEVICE))
        lean = set_impls(model, **LEAN)(x.to(DEVICE))
    assert_close_scaled(lean, ref, MODEL_TOL, "ADFNet lean against reference")
    assert_close_scaled(lean.cpu(), cpu, MODEL_TOL, "ADFNet on the device against the CPU")


def test_registered_op_compiles_to_the_same_result():
    x = torch.randn(2, 4, 20, 18, device=DEVICE, requires_grad=True)
    kernels = torch.randn(2, 36, 20, 18, device=DEVICE, requires_grad=True)

    def f(x, kernels):
        return dynamic_filter(x.relu(), kernels, 3, 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)  # fullgraph: one registered op, no graph break
    eager_grads = torch.autograd.grad(f(x, kernels), (x, kernels))
    compiled_grads = torch.autograd.grad(compiled(x, kernels), (x, kernels))
    for got, want in zip(compiled_grads, eager_grads):
        assert_close_scaled(got, want, 1e-5, "compiled gradient")


def test_fused_dynamic_filter_runs_the_triton_kernels_and_matches_the_cpu():
    from dynfilter.functional import fused_dynamic_filter
    from dynfilter.ops import fused_dynamic_filter as fused

    from .test_fused_dynamic_filter import CASES, _operands, _reference

    want_backend = "triton" if DEVICE == "cuda" and _triton.available() else fused.backend_for(*_operands(1, 1, 1, 2, 2, 3))
    for b, c, g, h, w, k, dilations, bias in CASES:
        cpu = _operands(b, c, g, h, w, k, bias)  # float64: the truth is the unfold reference on the CPU
        dev = [None if t is None else t.detach().to(DEVICE).requires_grad_() for t in cpu]
        assert fused.backend_for(*dev, dilations=dilations) == want_backend
        out = fused_dynamic_filter(*dev, k, dilations)
        ref = _reference(*cpu, k, dilations)
        grads = [torch.randn_like(r) for r in ref]
        got = torch.autograd.grad(out, [t for t in dev if t is not None], [g.to(DEVICE) for g in grads])
        want = torch.autograd.grad(ref, [t for t in cpu if t is not None], grads)
        for name, a, e in zip(["out"] * len(out) + ["grad x", "grad guide", "grad weight", "grad bias"], [*out, *got], [*ref, *want]):
            assert_close_scaled(a.cpu(), e, 1e-10, f"{name} of case {(b, c, g, h, w, k, dilations, bias)}")


# The parameters the fused op's gradients reach: the 1×1 kernel conv and SEKG's spatial branch (the deformable
# conv's offset gradients are ill-conditioned outside float64, see test_deform_conv.py).
KERNEL_PATH = ("kernel_conv.", "sekg.spatial.")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_dconv_and_mdcb_are_as_exact_as_the_lean_path(dtype):
    """Both paths in ``dtype`` against the float64 unfold reference with the same rounded parameters and inputs:
    the fused path's error is at most the lean path's (bfloat16: each layer rounds, so neither is near 2^-8)."""
    torch.manual_seed(0)
    floor = {torch.float32: 1e-6, torch.bfloat16: 2e-3}[dtype]
    for block, shape in ((dynfilter.DConv(16), (2, 16, 37, 29)), (dynfilter.MDCB(32, 16, deform_groups=4), (1, 32, 24, 20))):
        block = _randomise_offsets(block, 0.05).to(dtype)
        x, grad = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
        results = {}
        for impl, device, run_dtype in (("fused", DEVICE, dtype), ("lean", DEVICE, dtype), ("unfold", "cpu", torch.float64)):
            block = block.to(device, run_dtype)
            dynfilter.set_dynamic_filter_impl(block, impl)
            block.zero_grad(set_to_none=True)
            xi = x.to(device, run_dtype).detach().requires_grad_()
            out = block(xi)
            out.backward(grad.to(device, run_dtype))
            grads = [p.grad for name, p in block.named_parameters() if name.startswith(KERNEL_PATH)]
            results[impl] = [t.detach().cpu().double() for t in (out, xi.grad, *grads)]
        for i, (fused, lean, truth) in enumerate(zip(results["fused"], results["lean"], results["unfold"])):
            scale = truth.abs().max().item()
            err_fused, err_lean = ((t - truth).abs().max().item() / scale for t in (fused, lean))
            assert err_fused <= 1.5 * err_lean + floor, (type(block).__name__, dtype, i, err_fused, err_lean)

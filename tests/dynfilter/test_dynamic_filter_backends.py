"""The lean dynamic filter (native and eager paths) against the unfold reference and a naive loop."""

from __future__ import annotations

import warnings

import pytest
import torch

import dynfilter
from dynfilter.ops import dynamic_filter as _lean
from dynfilter.ops import dynamic_filter_eager as _eager
from dynfilter.ops import dynamic_filter_native as _native
from dynfilter.ops.dynamic_filter_unfold import dynamic_filter_unfold
from dynfilter.layers._pointwise import pointwise_conv
from dynfilter.functional import dynamic_filter
from experiments.bench.harness import peak_memory

from .naive import dynamic_filter_loop

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.fixture(params=["native", "eager"])
def path(request):
    """Run the test once with the native CPU kernels and once with the eager shifted views."""
    if request.param == "eager":
        with _native.disabled():
            yield "eager"
        return
    if _native._library(build=True) is None:
        pytest.skip(f"native kernels unavailable: {_native.status()}")
    yield "native"


def _pair(shape, k=3, dtype=torch.float64, device="cpu"):
    b, c, h, w = shape
    return torch.randn(shape, dtype=dtype, device=device), torch.randn(b, c * k * k, h, w, dtype=dtype, device=device)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("dilation", [1, 2, 3, 5])
def test_forward_matches_naive_loop(path, kernel_size, dilation):
    x, kernels = _pair((2, 3, 7, 5), kernel_size)
    torch.testing.assert_close(
        _lean.filter_forward(x, kernels, kernel_size, dilation),
        dynamic_filter_loop(x, kernels, kernel_size, dilation),
        rtol=1e-12,
        atol=1e-12,
        msg=f"{path} k={kernel_size} d={dilation}",
    )



def _outputs_and_grads(impl, x, kernels, grad, dilation):
    """``impl``'s output and the gradients of ``(output · grad).sum()`` w.r.t. x and the kernels."""
    xi, ki = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    out = dynamic_filter(xi, ki, 3, dilation, impl=impl)
    out.backward(grad)
    return {"out": out.detach(), "gx": xi.grad, "gk": ki.grad}


@pytest.mark.parametrize("dilation", [1, 3, 5])
@pytest.mark.parametrize("shape", [(3, 2, 9, 6), (1, 1, 2, 3), (2, 4, 1, 11)])
def test_values_and_gradients_match_reference(path, dilation, shape):
    x, kernels = _pair(shape)
    grad = torch.randn(shape, dtype=torch.float64)
    got, want = (_outputs_and_grads(impl, x, kernels, grad, dilation) for impl in ("lean", "unfold"))
    for key in ("out", "gx", "gk"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12, msg=f"{path} {key} d={dilation} {shape}")


def test_blocks_cover_every_row_and_plane(monkeypatch):
    # Tiny eager blocks force the row- and plane-blocking code paths on a small tensor.
    x, kernels = _pair((2, 3, 17, 13))
    grad = torch.randn_like(x)
    want = (
        dynamic_filter_unfold(x, kernels, 3, 2),
        _lean.filter_grad_input(grad, kernels, 3, 2),
        _lean.filter_grad_kernels(grad, x, 3, 2),
    )
    for block in (40, 100, 500):  # under one row, some rows, several planes
        monkeypatch.setattr(_eager, "BLOCK_ELEMENTS", block)
        with _native.disabled():
            got = (
                _lean.filter_forward(x, kernels, 3, 2),
                _lean.filter_grad_input(grad, kernels, 3, 2),
                _lean.filter_grad_kernels(grad, x, 3, 2),
            )
        for name, g, w in zip(("forward", "grad_input", "grad_kernels"), got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=f"{name} block={block}")


def test_native_row_blocks(path):
    # Rows of 1100 pixels give the native kernels blocks of 29 rows: 37 rows span two, the second partial.
    x, kernels = _pair((1, 2, 37, 1100), dtype=torch.float32)
    torch.testing.assert_close(
        dynamic_filter(x, kernels, 3, 3), dynamic_filter_unfold(x, kernels, 3, 3), rtol=1e-5, atol=1e-5, msg=path
    )


def test_gradgradcheck(path):
    x, kernels = _pair((1, 2, 5, 4))
    x.requires_grad_()
    kernels.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, k: dynamic_filter(a, k, 3, 2), (x, kernels))


def test_float32_matches_float64_truth(path):
    x, kernels = _pair((2, 8, 33, 31), dtype=torch.float32)
    truth = dynamic_filter_unfold(x.double(), kernels.double(), 3, 3)
    torch.testing.assert_close(dynamic_filter(x, kernels, 3, 3).double(), truth, rtol=1e-5, atol=1e-5, msg=path)


def test_bfloat16_within_one_rounding(path):
    # Lean bfloat16 accumulates in float32 and rounds once, so against the exact float64 result of the
    # same bfloat16 inputs it is off by at most half a bfloat16 ulp (≤ 2^-8 relative) plus float32 sums.
    x, kernels = _pair((2, 4, 19, 23), dtype=torch.bfloat16)
    grad = torch.randn(x.shape, dtype=torch.bfloat16)
    xd, kd, gd = x.double(), kernels.double(), grad.double()
    magnitude = dynamic_filter_unfold(xd.abs(), kd.abs(), 3, 3)
    results = {
        "forward": (_lean.filter_forward(x, kernels, 3, 3), dynamic_filter_unfold(xd, kd, 3, 3), magnitude),
        "grad_input": (_lean.filter_grad_input(grad, kernels, 3, 3), _lean.filter_grad_input(gd, kd, 3, 3), None),
        "grad_kernels": (_lean.filter_grad_kernels(grad, x, 3, 3), _lean.filter_grad_kernels(gd, xd, 3, 3), None),
    }
    for name, (got, exact, mag) in results.items():
        assert got.dtype == torch.bfloat16, name
        bound = 2.0**-8 * exact.abs() + 1e-5 * (exact.abs() if mag is None else mag) + 1e-30
        err = (got.double() - exact).abs()
        assert (err <= bound).all(), f"{path} {name}: worst excess {(err - bound).max().item():.3g}"


def test_bfloat16_close_to_reference(path):
    # The stated tolerance between lean and the published unfold formulation in bfloat16.
    x, kernels = _pair((1, 6, 16, 16), dtype=torch.bfloat16)
    torch.testing.assert_close(
        dynamic_filter(x, kernels, 3, 1).float(),
        dynamic_filter(x, kernels, 3, 1, impl="unfold").float(),
        rtol=2e-2,
        atol=2e-2,
        msg=path,
    )


def test_cpu_autocast_dconv_matches_reference(path):
    module = dynfilter.DCB(8)
    x = torch.randn(2, 8, 12, 10)
    outs = {}
    for impl in ("unfold", "auto"):
        dynfilter.set_dynamic_filter_impl(module, impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[impl] = module(x)
    assert outs["auto"].dtype == outs["unfold"].dtype
    torch.testing.assert_close(outs["auto"].float(), outs["unfold"].float(), rtol=3e-2, atol=3e-2, msg=path)


def test_mixed_dtypes_promote_like_reference(path):
    x = torch.randn(1, 3, 6, 7)
    kernels = torch.randn(1, 27, 6, 7, dtype=torch.bfloat16)
    got = dynamic_filter(x, kernels)
    want = dynamic_filter(x, kernels, impl="unfold")
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=path)
    x.requires_grad_()
    kernels.requires_grad_()
    dynamic_filter(x, kernels).sum().backward()
    assert x.grad.dtype == torch.float32 and kernels.grad.dtype == torch.bfloat16


def test_channels_last_and_strided_inputs(path):
    x, kernels = _pair((2, 3, 8, 6))
    want = dynamic_filter_unfold(x, kernels, 3, 1)
    cl = dynamic_filter(x.to(memory_format=torch.channels_last), kernels.to(memory_format=torch.channels_last))
    big = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    big[:, :, ::2, ::2] = x
    strided = dynamic_filter(big[:, :, ::2, ::2], kernels)
    torch.testing.assert_close(cl, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(strided, want, rtol=1e-12, atol=1e-12)


def test_image_smaller_than_dilation(path):
    # Every tap but the centre falls outside a 2×3 image at dilation 5: out = x · K_centre.
    x, kernels = _pair((1, 2, 2, 3))
    out = dynamic_filter(x, kernels, 3, 5)
    torch.testing.assert_close(out, x * kernels.view(1, 2, 9, 2, 3)[:, :, 4])


@pytest.mark.parametrize("block", ["dconv", "mdcb"])
def test_modules_match_reference_values_and_gradients(path, block):
    module = dynfilter.DConv(6) if block == "dconv" else dynfilter.MDCB(16, 8)
    x = torch.randn(2, module.channels, 11, 9, requires_grad=True)
    results = {}
    for impl in ("unfold", "auto"):
        dynfilter.set_dynamic_filter_impl(module, impl)
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        out.square().sum().backward()
        results[impl] = [out.detach(), x.grad] + [p.grad for p in module.parameters()]
    for i, (a, b) in enumerate(zip(results["auto"], results["unfold"])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{path} {block} tensor {i}")


def test_set_dynamic_filter_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown .*impl 'fast'.*'lean'"):
        dynfilter.set_dynamic_filter_impl(dynfilter.DConv(2), "fast")


def test_no_unfolded_tensor_in_forward_or_backward(path):
    # Forward allocates only its output; backward only the two gradients and a contiguous copy of the
    # (expanded) upstream gradient. The reference holds k²-sized patches and products on top.
    x, kernels = _pair((1, 8, 40, 40), dtype=torch.float32)
    x.requires_grad_()
    kernels.requires_grad_()
    unit = x.numel() * 4

    def step(impl):
        x.grad = kernels.grad = None  # outside the measurement: freeing them would offset the peak
        return peak_memory(lambda: dynamic_filter(x, kernels, 3, 3, impl=impl).sum().backward())

    with torch.no_grad():
        assert peak_memory(lambda: dynamic_filter(x, kernels, 3, 3)) == unit
    lean = step("auto")
    assert lean <= (1 + 1 + 1 + 9) * unit + 4096, f"lean fwd+bwd peak {lean / unit:.2f} units"
    # The measurement does see the reference's patches, their gradient and the kernels' gradient at once.
    assert step("unfold") >= 3 * 9 * unit


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_matches_conv(bias):
    conv = torch.nn.Conv2d(5, 45, 1, bias=bias).double()
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 45, 7, 6, dtype=torch.float64)
    results = []
    for fn in (pointwise_conv, lambda c, t: c(t)):
        conv.zero_grad(set_to_none=True)
        x.grad = None
        out = fn(conv, x)
        out.backward(grad)
        results.append([out.detach(), x.grad] + [p.grad for p in conv.parameters()])
    for i, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"tensor {i}")


def test_pointwise_conv_holds_no_second_output_buffer():
    # Training a C→9C generator: the output (9 units), the input's gradient (1) and the weight's.
    conv = torch.nn.Conv2d(8, 72, 1)
    x = torch.randn(1, 8, 48, 48, requires_grad=True)
    grad = torch.randn(1, 72, 48, 48)
    unit = x.numel() * 4
    peak = peak_memory(lambda: pointwise_conv(conv, x).backward(grad))
    assert peak <= 10 * unit + 4 * conv.weight.numel() * 8, f"{peak / unit:.2f} units"
    with torch.no_grad():  # without gradients the conv itself runs: same values
        torch.testing.assert_close(pointwise_conv(conv, x), conv(x))


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native loader that has tried nothing yet, with an empty cache."""
    monkeypatch.setattr(_native, "_state", _native._State())
    monkeypatch.setenv("DYNFILTER_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_falls_back_silently_without_a_compiler(fresh_native, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    x, kernels = _pair((1, 8, 128, 128), dtype=torch.float32)  # large enough to ask for a build
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dynamic_filter(x, kernels)
    assert _native.kernel("forward", x, kernels, 3) is None
    assert "no C++ compiler" in _native.status()
    torch.testing.assert_close(out, dynamic_filter_unfold(x, kernels, 3, 1))


def test_failed_build_warns_once_and_falls_back(fresh_native, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: "/bin/false")
    monkeypatch.setattr(_native, "_library_path", lambda compiler: fresh_native / "x.so")
    x, kernels = _pair((1, 8, 128, 128), dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        out = dynamic_filter(x, kernels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dynamic_filter(x, kernels)  # no second warning, no second build
    assert "build or load failed" in _native.status()
    torch.testing.assert_close(out, dynamic_filter_unfold(x, kernels, 3, 1))


def test_small_calls_never_start_a_build(fresh_native, monkeypatch):
    def no_build(*args):
        raise AssertionError("a small call started a build")

    monkeypatch.setattr(_native, "_build", no_build)
    x, kernels = _pair((1, 2, 8, 8), dtype=torch.float32)
    dynamic_filter(x, kernels)
    assert "not built yet" in _native.status() or "no C++ compiler" in _native.status()


def test_environment_variable_disables_native(monkeypatch):
    monkeypatch.setenv("DYNFILTER_NATIVE", "0")
    x, kernels = _pair((1, 2, 8, 8), dtype=torch.float32)
    assert _native.kernel("forward", x, kernels, 3) is None
    assert _native.status().startswith("disabled")


@needs_cuda
@pytest.mark.parametrize("dilation", [1, 3, 5])
def test_cuda_matches_reference(dilation):
    x, kernels = _pair((2, 3, 19, 17), device="cuda")
    grad = torch.randn_like(x)
    got, want = (_outputs_and_grads(impl, x, kernels, grad, dilation) for impl in ("lean", "unfold"))
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=f"cuda {key} d={dilation}")


@needs_cuda
def test_cuda_bfloat16_autocast_dconv():
    module = dynfilter.DConv(8).cuda()
    x = torch.randn(1, 8, 16, 16, device="cuda")
    outs = {}
    for impl in ("unfold", "auto"):
        dynfilter.set_dynamic_filter_impl(module, impl)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs[impl] = module(x).float()
    torch.testing.assert_close(outs["auto"], outs["unfold"], rtol=3e-2, atol=3e-2)

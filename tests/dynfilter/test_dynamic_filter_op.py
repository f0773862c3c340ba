"""The registered ops ``dynfilter::dynamic_filter*``: opcheck, compile, export, tracing and FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dynfilter
from dynfilter.ops import dynamic_filter as _ops
from dynfilter.ops.dynamic_filter_unfold import dynamic_filter_unfold
from dynfilter.functional import dynamic_filter

from .graphs import GraphRecorder

OPS = {
    "dynamic_filter": _ops.dynamic_filter_op,
    "dynamic_filter_grad_input": _ops.dynamic_filter_grad_input_op,
    "dynamic_filter_grad_kernels": _ops.dynamic_filter_grad_kernels_op,
}


def _args(name, dtype=torch.float64, requires_grad=True, dilation=2):
    a = torch.randn(2, 3, 6, 5, dtype=dtype, requires_grad=requires_grad)
    if name == "dynamic_filter_grad_kernels":
        b = torch.randn(2, 3, 6, 5, dtype=dtype, requires_grad=requires_grad)
    else:
        b = torch.randn(2, 27, 6, 5, dtype=dtype, requires_grad=requires_grad)
    return (a, b, 3, dilation)


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(OPS))
def test_opcheck(name, dtype, requires_grad):
    # Schema, fake (meta) kernel, autograd registration and AOT dispatch with dynamic shapes.
    torch.library.opcheck(OPS[name], _args(name, dtype, requires_grad))


def test_op_schema_is_the_published_contract():
    schema = str(torch.ops.dynfilter.dynamic_filter.default._schema)
    assert schema == "dynfilter::dynamic_filter(Tensor x, Tensor kernels, int kernel_size, int dilation) -> Tensor"


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # jit.trace is what fvcore uses
def test_auto_routes_through_the_op_and_unfold_does_not():
    x, kernels = torch.randn(1, 2, 5, 4), torch.randn(1, 18, 5, 4)
    names = {}
    for impl in ("auto", "unfold"):
        trace = torch.jit.trace(lambda a, k, impl=impl: dynamic_filter(a, k, impl=impl), (x, kernels), check_trace=False)
        names[impl] = [n.kind() for n in trace.graph.nodes() if not n.kind().startswith("prim::")]
    assert names["auto"] == ["dynfilter::dynamic_filter"]  # one node, as fvcore's JIT trace sees it
    assert "dynfilter::dynamic_filter" not in names["unfold"]


def test_flop_counter_counts_each_op_once_with_its_cost():
    b, c, h, w, k = 2, 3, 7, 5, 3
    x = torch.randn(b, c, h, w, requires_grad=True)
    kernels = torch.randn(b, c * k * k, h, w, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        dynamic_filter(x, kernels, k, 3).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    per_op = 2 * b * c * h * w * k * k  # one multiply-add = 2 FLOPs, per pixel, channel and tap
    assert counts == {
        "dynfilter.dynamic_filter": per_op,
        "dynfilter.dynamic_filter_grad_input": per_op,
        "dynfilter.dynamic_filter_grad_kernels": per_op,
    }


def test_compile_sees_one_node_and_matches_eager():
    torch._dynamo.reset()
    recorder = GraphRecorder()
    module = dynfilter.DConv(3, dilation=3)
    module.impl = "lean"  # this op's test; the fused path's is in test_fused_dynamic_filter.py
    compiled = torch.compile(module, backend=recorder, fullgraph=True)
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(compiled(x), module(x))
    targets = [n.target for g in recorder.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynfilter.dynamic_filter.default) == 1


def test_compile_aot_eager_forward_and_backward_match_reference():
    torch._dynamo.reset()
    fn = torch.compile(lambda a, k: dynamic_filter(a, k, 3, 2).sin(), backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(2, 27, 8, 6, dtype=torch.float64, requires_grad=True)
    fn(x, kernels).sum().backward()
    gx, gk = x.grad, kernels.grad
    x.grad = kernels.grad = None
    dynamic_filter_unfold(x, kernels, 3, 2).sin().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gk, kernels.grad)


def test_export_keeps_the_op():
    module = dynfilter.MDCB(8, 8, deform_groups=4).eval()
    module.impl = "lean"
    program = torch.export.export(module, (torch.randn(1, 8, 10, 9),))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dynfilter.dynamic_filter.default) == 3  # one per dilation branch
    x = torch.randn(1, 8, 10, 9)
    torch.testing.assert_close(program.module()(x), module(x))

"""Benchmark suites of the dynamic filter: the op against the published unfold reference, and ADFNet.

``dynamic``: for each ``(B, C, H, W)`` and dilation, forward and forward+backward times of the unfold
reference, the lean op and a static depthwise 3×3 conv of the same shape (timed interleaved), the
streaming bound of the op, and the peak memory of a DConv training step with either implementation.
``adfnet``: ADFNet inference on a 512×512 colour image, lean versus reference. Each suite ends with
its targets (issue 6) and whether this run meets them.
"""

from __future__ import annotations

from typing import Callable

import torch

import dynfilter
from dynfilter import ops
from dynfilter.complexity import time_callables

from .harness import BenchConfig, Section, copy_bandwidth, peak_memory, streaming_bound, rounds_note, targets_section

__all__ = ["dynamic_suite", "adfnet_suite", "SHAPES", "DILATIONS"]

SHAPES = ((1, 32, 256, 256), (16, 32, 128, 128), (1, 64, 512, 512))
DILATIONS = (1, 3, 5)
_QUICK_SHAPES = ((2, 3, 17, 13),)
_MIB = 1 << 20

# (name, column, required, "min" if the worst case is the smallest value else "max")
_DYNAMIC_TARGETS = (
    ("forward ≥ 8× faster than the reference", "fwd speedup", 8.0, "min"),
    ("forward+backward ≥ 3× faster than the reference", "f+b speedup", 3.0, "min"),
    ("forward within 2.5× of the streaming bound", "fwd / bound", 2.5, "max"),
    ("DConv training-step peak memory ≤ 0.5× the reference", "step mem ratio", 0.5, "max"),
)


def _kernels_in_use(device: str) -> str:
    backend = "native" if torch.device(device).type == "cpu" else "triton"
    return f"{backend}: {ops.status()[f'dynamic_filter.{backend}']}"


def _static_depthwise(channels: int, dilation: int, device: str) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False).to(device)


def _dconv_step_memory(module: torch.nn.Module, x: torch.Tensor, device: str) -> int:
    """Peak bytes of forward, mean-square loss and backward, gradients included (none held before)."""
    module.zero_grad(set_to_none=True)
    x.grad = None  # freed outside the measurement, which would otherwise count the release
    return peak_memory(lambda: module(x).square().mean().backward(), device)


def _op_fwd_bwd(impl: str, x: torch.Tensor, kernels: torch.Tensor, grad: torch.Tensor, dilation: int) -> Callable[[], None]:
    def step() -> None:
        x.grad = kernels.grad = None
        dynfilter.dynamic_filter(x, kernels, 3, dilation, impl=impl).backward(grad)

    return step


def dynamic_suite(config: BenchConfig) -> list[Section]:
    """Op-level speed and memory, reference versus lean, at :data:`SHAPES` × :data:`DILATIONS`."""
    device = config.device
    shapes = _QUICK_SHAPES if config.quick else SHAPES
    dilations = (1, 5) if config.quick else DILATIONS
    bandwidth = copy_bandwidth(1 << (22 if config.quick else 28), repeat=max(3, config.repeat), device=device)
    speed, memory = [], []
    for shape in shapes:
        b, c, h, w = shape
        for d in dilations:
            x = torch.randn(shape, device=device)
            kernels = torch.randn(b, 9 * c, h, w, device=device)
            conv = _static_depthwise(c, d, device)
            with torch.no_grad():
                fwd = time_callables(
                    {
                        "ref": lambda: dynfilter.dynamic_filter(x, kernels, 3, d, impl="unfold"),
                        "lean": lambda: dynfilter.dynamic_filter(x, kernels, 3, d),
                        "static": lambda: conv(x),
                    },
                    config.repeat,
                    config.warmup,
                    device,
                    config.settle,
                )
            xg, kg = x.clone().requires_grad_(), kernels.clone().requires_grad_()
            grad = torch.randn_like(x)

            def static_step() -> None:
                conv.zero_grad(set_to_none=True)
                xg.grad = None
                conv(xg).backward(grad)

            fb = time_callables(
                {"ref": _op_fwd_bwd("unfold", xg, kg, grad, d), "lean": _op_fwd_bwd("auto", xg, kg, grad, d), "static": static_step},
                config.repeat,
                config.warmup,
                device,
                config.settle,
            )
            xg = kg = None  # free before the next shape (the closures above are done with them)
            unit = x.numel() * x.element_size()
            bound_fwd = streaming_bound((1 + 9 + 1) * unit, bandwidth)  # read x, K; write out
            bound_fb = streaming_bound((11 + 21) * unit, bandwidth)  # + read g, x, K; write gx, gK
            speed.append(
                {
                    "B, C, H, W": "×".join(map(str, shape)),
                    "d": d,
                    "ref fwd ms": fwd["ref"].ms,
                    "lean fwd ms": fwd["lean"].ms,
                    "fwd speedup": fwd["ref"].median / fwd["lean"].median,
                    "static dw3×3 fwd ms": fwd["static"].ms,
                    "bound fwd ms": bound_fwd * 1e3,
                    "fwd / bound": fwd["lean"].median / bound_fwd,
                    "ref f+b ms": fb["ref"].ms,
                    "lean f+b ms": fb["lean"].ms,
                    "f+b speedup": fb["ref"].median / fb["lean"].median,
                    "static dw3×3 f+b ms": fb["static"].ms,
                    "bound f+b ms": bound_fb * 1e3,
                    "threads": fwd["lean"].threads,
                }
            )
            x = kernels = None  # free before the next shape
            memory.append({"B, C, H, W": "×".join(map(str, shape)), "d": d, **_dconv_memory(shape, d, device)})
    for row, mem in zip(speed, memory):
        row["step mem ratio"] = mem["step ratio"]
    note = (
        f"{rounds_note(config.repeat, config.settle).capitalize()}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
        f"compiled kernels: {_kernels_in_use(device)}."
    )
    columns = [k for k in speed[0] if k != "step mem ratio"]
    return [
        Section("Dynamic filter: time per call", speed, columns, note),
        Section(
            "DConv training step: peak memory (MiB above the inputs and parameters)",
            memory,
            note="A step is forward, mean-square loss, backward. 'data input': x needs no gradient (the first "
            "layer); 'inner input': x needs one, as anywhere inside a network.",
        ),
        targets_section(speed, _DYNAMIC_TARGETS),
    ]


def _dconv_memory(shape: tuple[int, int, int, int], dilation: int, device: str) -> dict[str, float]:
    b, c, h, w = shape
    module = dynfilter.DConv(c, dilation=dilation).to(device)
    row: dict[str, float] = {}
    for label, needs_grad in (("data input", False), ("inner input", True)):
        x = torch.randn(shape, device=device, requires_grad=needs_grad)
        peaks = {}
        for impl in ("unfold", "lean"):  # the op's suite: the fused DConv path is the ``fused`` suite's
            dynfilter.set_dynamic_filter_impl(module, impl)
            peaks[impl] = _dconv_step_memory(module, x, device)
        row[f"ref {label} MiB"] = peaks["unfold"] / _MIB
        row[f"lean {label} MiB"] = peaks["lean"] / _MIB
        row[f"{label} ratio"] = peaks["lean"] / peaks["unfold"]
        if not needs_grad:  # the yardstick: a static layer's step of the same shape
            row[f"static dw3×3 {label} MiB"] = _dconv_step_memory(_static_depthwise(c, dilation, device), x, device) / _MIB
    row["step ratio"] = row["data input ratio"]
    row["kernels MiB"] = b * 9 * c * h * w * 4 / _MIB
    return row


def adfnet_suite(config: BenchConfig) -> list[Section]:
    """ADFNet (colour, base widths) inference on one 512×512 image, published ops versus lean ones.

    Three variants, timed interleaved: the published computation (``REFERENCE_IMPLS``: unfold dynamic
    filtering, torchvision's deformable conv), the lean dynamic filter alone, and every lean op (the
    default). The target compares the default with the published computation.
    """
    from .models import benchmark_adfnet

    device = config.device
    model, size, _ = benchmark_adfnet(config)
    model = model.eval()
    x = torch.rand(1, 3, size, size, device=device)
    variants = {
        "published (unfold, torchvision DCN)": dict(dynfilter.REFERENCE_IMPLS),
        "lean dynamic filter only": {**dynfilter.REFERENCE_IMPLS, "dynamic_filter": "lean"},
        "all lean": {"dynamic_filter": "lean", "modulated_deform_conv2d": "auto"},
        "default (fused dynamic filter, lean DCN)": {"dynamic_filter": "auto", "modulated_deform_conv2d": "auto"},
    }

    def infer(impls: dict[str, str]) -> Callable[[], None]:
        def call() -> None:
            dynfilter.set_impls(model, **impls)
            with torch.inference_mode():
                model(x)

        return call

    repeat = min(config.repeat, 3)
    calls = {name: infer(impls) for name, impls in variants.items()}
    times = time_callables(calls, repeat, min(config.warmup, 1), device, config.settle)
    reference = next(iter(variants))
    rows = []
    for name, call in calls.items():
        peak = peak_memory(call, device)
        rows.append(
            {
                "ops": name,
                "input": f"1×3×{size}×{size}",
                "ms": times[name].ms,
                "speedup": times[reference].median / times[name].median,
                "peak MiB": peak / _MIB,
                "threads": times[name].threads,
            }
        )
    targets = (("ADFNet 512×512 inference ≥ 2× faster than with the published ops", "speedup", 2.0, "min"),)
    return [
        Section(
            "ADFNet inference",
            rows,
            note=f"{rounds_note(repeat, config.settle).capitalize()}, torch.inference_mode(); speedup against the first row.",
        ),
        targets_section(rows[-1:], targets),
    ]

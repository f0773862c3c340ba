"""Benchmark suites of the modulated deformable conv and of the whole ADFNet, lean versus reference.

``deform``: :func:`dynfilter.modulated_deform_conv2d` with torchvision's op and with the lean one, at
the shapes of ADFNet's four deformable convs (8 offset groups, 3×3) for one 512×512 image and for a
16×128×128 training batch: forward and forward+backward times (timed interleaved), their ratios, and
the forward's peak memory next to the size of the sampled columns.

``model``: ADFNet (colour, base widths) with the reference implementations
(:data:`dynfilter.REFERENCE_IMPLS`: torchvision's deformable conv, unfold dynamic filtering) and with
the lean ones, on the same weights: a training step (forward, L1 loss, backward) on 16×3×128×128; and
the lean model's inference on a 1×3×512×512 image by default, under bfloat16 autocast and compiled
(options, for information). Inference against the reference ops is the ``adfnet`` suite
(:mod:`experiments.bench.dynamic`). Each suite ends with its targets (issue 8) and whether this run
meets them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable

import torch
from torch import nn

import dynfilter
from dynfilter import ops
from dynfilter.complexity import time_callables

from .harness import BenchConfig, Section, peak_memory, rounds_note, targets_section
from .models import benchmark_adfnet

__all__ = ["deform_suite", "model_suite", "DEFORM_SCALES"]

# (B, C, H, W) of ADFNet's deformable convs: fe1/dfe1, fe2/dfe2, fe3/dfe3, bottleneck.
DEFORM_SCALES = (
    (1, 32, 512, 512),
    (1, 64, 256, 256),
    (1, 128, 128, 128),
    (1, 256, 64, 64),
    (16, 32, 128, 128),
    (16, 64, 64, 64),
    (16, 128, 32, 32),
    (16, 256, 16, 16),
)
_QUICK_SCALES = ((1, 16, 24, 20), (2, 32, 12, 10))
_GROUPS = 8
_MIB = 1 << 20

_DEFORM_TARGETS = (("lean forward faster than torchvision's", "fwd speedup", 1.0, "min"),)
_MODEL_TARGETS = (
    ("ADFNet 512×512 inference ≥ 2× faster than with the reference ops", "inference speedup", 2.0, "min"),
    ("ADFNet 16×3×128×128 training step ≥ 1.5× faster", "training speedup", 1.5, "min"),
)


def _deform_inputs(shape: tuple[int, int, int, int], device: str, requires_grad: bool) -> list[torch.Tensor]:
    """Features, offsets of about a pixel, a sigmoid mask, weight and bias, as in an ADFNet block."""
    b, c, h, w = shape
    x = torch.randn(shape, device=device)
    offset = torch.randn(b, 2 * _GROUPS * 9, h, w, device=device)
    mask = torch.sigmoid(torch.randn(b, _GROUPS * 9, h, w, device=device))
    weight = torch.randn(c, c, 3, 3, device=device) / (3 * c**0.5)
    bias = torch.randn(c, device=device)
    return [t.requires_grad_(requires_grad) for t in (x, offset, weight, bias, mask)]


def _deform_call(impl: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    x, offset, weight, bias, mask = inputs
    return dynfilter.modulated_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, impl=impl)


def _deform_step(impl: str, inputs: list[torch.Tensor], grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for t in inputs:
            t.grad = None
        _deform_call(impl, inputs).backward(grad)

    return step


def deform_suite(config: BenchConfig) -> list[Section]:
    """Op-level time and memory of the deformable conv, torchvision versus lean, at :data:`DEFORM_SCALES`."""
    device = config.device
    rows = []
    for shape in _QUICK_SCALES if config.quick else DEFORM_SCALES:
        inputs = _deform_inputs(shape, device, requires_grad=False)
        with torch.no_grad():
            fwd = time_callables(
                {impl: (lambda impl=impl: _deform_call(impl, inputs)) for impl in ("torchvision", "lean")},
                config.repeat,
                config.warmup,
                device,
                config.settle,
            )
            mem = {impl: peak_memory(lambda impl=impl: _deform_call(impl, inputs), device) for impl in ("torchvision", "lean")}
        trained = [t.detach().clone().requires_grad_() for t in inputs]
        grad = torch.randn(shape, device=device)
        fb = time_callables(
            {impl: _deform_step(impl, trained, grad) for impl in ("torchvision", "lean")},
            config.repeat,
            config.warmup,
            device,
            config.settle,
        )
        columns = shape[0] * shape[1] * 9 * shape[2] * shape[3] * 4
        rows.append(
            {
                "B, C, H, W": "×".join(map(str, shape)),
                "tv fwd ms": fwd["torchvision"].ms,
                "lean fwd ms": fwd["lean"].ms,
                "fwd speedup": fwd["torchvision"].median / fwd["lean"].median,
                "tv f+b ms": fb["torchvision"].ms,
                "lean f+b ms": fb["lean"].ms,
                "f+b speedup": fb["torchvision"].median / fb["lean"].median,
                "columns MiB": columns / _MIB,
                "tv fwd peak MiB": mem["torchvision"] / _MIB,
                "lean fwd peak MiB": mem["lean"] / _MIB,
                "threads": fwd["lean"].threads,
            }
        )
        inputs = trained = None  # free before the next scale
    note = (
        f"{rounds_note(config.repeat, config.settle).capitalize()}; {_GROUPS} offset groups, 3×3, offsets ~N(0, 1) px. "
        f"Lean deformable conv: {ops.status()['deform_conv.lean']}; peak memory is above the inputs."
    )
    return [Section("Modulated deformable conv: time per call", rows, note=note), targets_section(rows, _DEFORM_TARGETS)]


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def model_suite(config: BenchConfig) -> list[Section]:
    """ADFNet end to end: a training step, reference ops versus lean ops, and inference options of the lean model.

    The inference comparison with the reference ops is the ``adfnet`` suite's; it is not repeated here.
    """
    device = config.device
    lean, infer_size, (train_b, train_size) = benchmark_adfnet(config)
    reference = dynfilter.set_impls(copy.deepcopy(lean), **dynfilter.REFERENCE_IMPLS)
    repeat = min(config.repeat, 3)

    xt = torch.rand(train_b, 3, train_size, train_size, device=device)
    yt = torch.rand_like(xt)

    def step(model: nn.Module) -> Callable[[], None]:
        def call() -> None:
            model.zero_grad(set_to_none=True)
            (model(xt) - yt).abs().mean().backward()

        return call

    t_train = time_callables({"reference": step(reference), "lean": step(lean)}, repeat, config.warmup, device, config.settle)
    train_row = {
        "batch": f"{train_b}×3×{train_size}×{train_size}",
        "ref step s": t_train["reference"].median,
        "lean step s": t_train["lean"].median,
        "training speedup": t_train["reference"].median / t_train["lean"].median,
        "threads": t_train["lean"].threads,
    }
    del reference

    lean.eval()
    x = torch.rand(1, 3, infer_size, infer_size, device=device)

    def infer(model: nn.Module, bf16: bool = False) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.inference_mode(), _autocast(device, bf16):
                return model(x)

        return call

    calls = {"lean (default)": infer(lean), "lean, bfloat16 autocast": infer(lean, bf16=True)}
    outputs = {name: fn().float() for name, fn in calls.items()}
    first_call = {name: float("nan") for name in calls}
    if not config.quick:  # compiling takes minutes, even for a tiny model
        import torch._inductor.config as inductor_config

        name = "lean, torch.compile (freezing)"
        calls[name] = infer(torch.compile(copy.deepcopy(lean)))
        start = time.perf_counter()
        with inductor_config.patch(freezing=True):  # constant weights: prepacked oneDNN convs, folded ops
            outputs[name] = calls[name]().float()
        first_call[name] = time.perf_counter() - start
    t_inf = time_callables(calls, repeat, config.warmup, device, config.settle)
    base = next(iter(calls))
    infer_rows = [
        {
            "variant": name,
            "input": f"1×3×{infer_size}×{infer_size}",
            "s": t_inf[name].median,
            "speedup vs default": t_inf[base].median / t_inf[name].median,
            "max abs Δ output": (outputs[name] - outputs[base]).abs().max().item(),
            "first call s": first_call[name],
            "threads": t_inf[name].threads,
        }
        for name in calls
    ]
    targets = (("ADFNet 16×3×128×128 training step ≥ 1.5× faster than with the reference ops", "training speedup", 1.5, "min"),)
    return [
        Section(
            "ADFNet training step",
            [train_row],
            note=f"Forward, L1 loss, backward; {rounds_note(repeat, config.settle)}; the same weights, offset convs "
            "initialised N(0, 0.01²) so that taps move. Inference against the reference ops: the `adfnet` suite.",
        ),
        targets_section([train_row], targets),
        Section(
            "ADFNet inference options",
            infer_rows,
            note=f"{rounds_note(repeat, config.settle).capitalize()}, torch.inference_mode(). Options, not defaults: the output "
            "difference is against the default float32 model on the same image; 'first call s' includes compiling.",
        ),
    ]

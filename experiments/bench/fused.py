"""``fused`` suite: kernel generation fused with the dynamic filter, against the unfused lean path (issue 17).

Sections, every contender timed interleaved with its rivals:

* **DConv layer** at ``(16, 32, 128, 128)`` and ``(1, 64, 512, 512)``: forward and forward+backward of the
  fused path against the lean one, and the peak memory of a training step against the unfold reference
  (the step of the ``dynamic`` suite: forward, mean-square loss, backward);
* **DnCNN-5/32 with a DConv** (the extension recipe): inference on one 128×128 image with one thread, and a
  training step on 16 × 128² patches, each against the baseline DnCNN;
* **MDCB forward** at ADFNet's decoder shapes for a 512×512 input (its three dilated branches share kernels);
* **ADFNet 512×512 inference**, fused against lean;
* the targets of issue 17.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import dynfilter
from dynfilter.complexity import time_callables
from experiments.run import cpu_threads

from .harness import BenchConfig, Section, peak_memory, rounds_note, targets_section

__all__ = ["fused_suite", "DCONV_SHAPES", "MDCB_SHAPES"]

DCONV_SHAPES = ((16, 32, 128, 128), (1, 64, 512, 512))
# (input of MDCB, mid channels): ADFNet's decoder blocks dfe3.1, dfe2.1, dfe1.1 for a 512×512 image.
MDCB_SHAPES = (((1, 128, 128, 128), 64), ((1, 64, 256, 256), 64), ((1, 32, 512, 512), 32))
_QUICK_DCONV = ((2, 8, 24, 20),)
_QUICK_MDCB = (((1, 16, 24, 20), 8),)
_MIB = 1 << 20
_IMPLS = ("lean", "fused")

_TARGETS = (
    ("DConv training-step peak memory ≤ 0.15× the unfold reference", "step mem / ref", 0.15, "max"),
    ("DConv layer forward ≥ 1.5× faster than lean", "fwd speedup", 1.5, "min"),
)
_MODEL_TARGETS = (
    ("DnCNN-5/32 + DConv inference (1 thread) ≤ 1.3× the baseline", "fused / baseline", 1.3, "max"),
)
_MDCB_TARGETS = (("MDCB forward ≥ 1.3× faster than lean", "fwd speedup", 1.3, "min"),)
_ADFNET_TARGETS = (("ADFNet 512×512 inference not slower than lean", "speedup", 1.0, "min"),)


def _with_impl(module: nn.Module, impl: str, fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        dynfilter.set_dynamic_filter_impl(module, impl)
        fn()

    return call


def _step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward, mean-square loss, backward (the ``dynamic`` suite's step), gradients dropped first."""

    def call() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).square().mean().backward()

    return call


def _times(calls: dict[str, Callable[[], None]], config: BenchConfig, repeat: int | None = None) -> dict[str, float]:
    timings = time_callables(calls, repeat or config.repeat, config.warmup, config.device, config.settle)
    return {name: t.median for name, t in timings.items()}


def _dconv_rows(config: BenchConfig) -> list[dict]:
    rows = []
    for shape in _QUICK_DCONV if config.quick else DCONV_SHAPES:
        module = dynfilter.DConv(shape[1]).to(config.device)
        x = torch.randn(shape, device=config.device)
        with torch.no_grad():
            fwd = _times({impl: _with_impl(module, impl, lambda: module(x)) for impl in _IMPLS}, config)
        xg = x.clone().requires_grad_()  # an inner layer: its input needs a gradient too
        fb = _times({impl: _with_impl(module, impl, _step(module, xg)) for impl in _IMPLS}, config)
        memory = {}
        for impl in ("unfold", *_IMPLS):  # x is a data input here, as in the ``dynamic`` suite's step ratio
            dynfilter.set_dynamic_filter_impl(module, impl)
            memory[impl] = peak_memory(_step(module, x), config.device)
        rows.append(
            {
                "B, C, H, W": "×".join(map(str, shape)),
                "lean fwd ms": fwd["lean"] * 1e3,
                "fused fwd ms": fwd["fused"] * 1e3,
                "fwd speedup": fwd["lean"] / fwd["fused"],
                "lean f+b ms": fb["lean"] * 1e3,
                "fused f+b ms": fb["fused"] * 1e3,
                "f+b speedup": fb["lean"] / fb["fused"],
                "ref step MiB": memory["unfold"] / _MIB,
                "lean step MiB": memory["lean"] / _MIB,
                "fused step MiB": memory["fused"] / _MIB,
                "lean mem / ref": memory["lean"] / memory["unfold"],
                "step mem / ref": memory["fused"] / memory["unfold"],
                "kernels MiB": shape[0] * 9 * shape[1] * shape[2] * shape[3] * 4 / _MIB,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def _dncnn_rows(config: BenchConfig) -> list[dict]:
    import backbones
    from dynfilter.surgery import recipes

    side, (batch, patch) = (32, (2, 24)) if config.quick else (128, (16, 128))
    baseline = backbones.build("dncnn", depth=5, channels=32, in_channels=3).to(config.device)
    enhanced = recipes.dncnn_dconv(baseline, init="published").apply().to(config.device)
    rows = []
    image = torch.rand(1, 3, side, side, device=config.device)
    with cpu_threads(1), torch.inference_mode():
        baseline.eval(), enhanced.eval()
        t = _times(
            {
                "baseline": lambda: baseline(image),
                **{impl: _with_impl(enhanced, impl, lambda: enhanced(image)) for impl in _IMPLS},
            },
            config,
            repeat=max(config.repeat, 10),
        )
    rows.append(_model_row(f"inference 1×3×{side}×{side}, 1 thread", t))
    baseline.train(), enhanced.train()
    patches = torch.rand(batch, 3, patch, patch, device=config.device)
    t = _times(
        {"baseline": _step(baseline, patches), **{impl: _with_impl(enhanced, impl, _step(enhanced, patches)) for impl in _IMPLS}},
        config,
    )
    rows.append(_model_row(f"training step {batch}×3×{patch}×{patch}, {torch.get_num_threads()} threads", t))
    return rows


def _model_row(what: str, t: dict[str, float]) -> dict:
    return {
        "DnCNN-5/32": what,
        "baseline ms": t["baseline"] * 1e3,
        "+DConv lean ms": t["lean"] * 1e3,
        "+DConv fused ms": t["fused"] * 1e3,
        "lean / baseline": t["lean"] / t["baseline"],
        "fused / baseline": t["fused"] / t["baseline"],
    }


def _mdcb_rows(config: BenchConfig) -> list[dict]:
    rows = []
    for shape, mid in _QUICK_MDCB if config.quick else MDCB_SHAPES:
        block = dynfilter.MDCB(shape[1], mid).to(config.device).eval()
        x = torch.randn(shape, device=config.device)
        with torch.inference_mode():
            t = _times({impl: _with_impl(block, impl, lambda: block(x)) for impl in _IMPLS}, config)
        rows.append(
            {
                "B, C, H, W": "×".join(map(str, shape)),
                "mid": mid,
                "lean fwd ms": t["lean"] * 1e3,
                "fused fwd ms": t["fused"] * 1e3,
                "fwd speedup": t["lean"] / t["fused"],
            }
        )
    return rows


def _adfnet_rows(config: BenchConfig) -> list[dict]:
    from .models import benchmark_adfnet

    model, size, _ = benchmark_adfnet(config)
    model = model.eval()
    x = torch.rand(1, 3, size, size, device=config.device)
    with torch.inference_mode():
        t = _times({impl: _with_impl(model, impl, lambda: model(x)) for impl in _IMPLS}, config, repeat=min(config.repeat, 3))
    return [
        {
            "input": f"1×3×{size}×{size}",
            "lean ms": t["lean"] * 1e3,
            "fused ms": t["fused"] * 1e3,
            "speedup": t["lean"] / t["fused"],
            "threads": torch.get_num_threads(),
        }
    ]


def _targets(*groups: tuple[list[dict], tuple]) -> Section:
    """One targets table, each target checked against its own section's rows."""
    sections = [targets_section(rows, targets) for rows, targets in groups]
    return Section("Targets", [row for s in sections for row in s.rows], note=sections[0].note)


def fused_suite(config: BenchConfig) -> list[Section]:
    """The fused kernel-generation + filter path against the lean one: layer, DnCNN, MDCB, ADFNet, targets."""
    note = rounds_note(config.repeat, config.settle).capitalize()
    dconv, dncnn, mdcb, adfnet = _dconv_rows(config), _dncnn_rows(config), _mdcb_rows(config), _adfnet_rows(config)
    return [
        Section(
            "DConv layer: fused against lean; training-step peak memory against the unfold reference",
            dconv,
            note=f"{note}. f+b: the step with an input that needs a gradient; memory: the step with a data input "
            "(MiB above the inputs and parameters), as in the `dynamic` suite.",
        ),
        Section("DnCNN-5/32 with a DConv (extension recipe) against the baseline", dncnn, note=note + "."),
        Section("MDCB forward at ADFNet's decoder shapes (512×512 input)", mdcb, note=note + ", torch.inference_mode()."),
        Section("ADFNet inference, fused against lean", adfnet, note=note + ", torch.inference_mode()."),
        _targets((dconv, _TARGETS), (dncnn[:1], _MODEL_TARGETS), (mdcb, _MDCB_TARGETS), (adfnet, _ADFNET_TARGETS)),
    ]

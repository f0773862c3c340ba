"""Where the time of a DConv and an MDCB goes, lean and fused (docs/performance.md, fused section).

    python benchmarks/fused_profile.py

1. One thread, 1×32×128×128 (the DnCNN-5/32 + DConv case): the 3×3 conv a DConv replaces, the DConv lean and
   fused, and the lean DConv's parts (SEKG, the 1×1 conv, the filter) and the fused op alone, timed
   interleaved (median of 15 rounds), with the multiply-add rate of the two convs of equal MACs.
2. A torch profile of one MDCB forward at 1×128×128×128 (mid 64), lean and fused, top ops by self time.
"""

from __future__ import annotations

import os

import torch

import backbones
import dynfilter
from dynfilter.complexity import time_callables
from dynfilter.surgery import recipes


def dconv_parts() -> None:
    torch.set_num_threads(1)
    base = backbones.build("dncnn", depth=5, channels=32, in_channels=3).eval()
    enhanced = recipes.dncnn_dconv(base, init="published").apply().eval()
    dconv = next(m for m in enhanced.modules() if isinstance(m, dynfilter.DConv))
    conv = next(m for m in base.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == m.out_channels == 32)
    f = torch.randn(1, 32, 128, 128)

    def dconv_as(impl: str):
        def call() -> None:
            dconv.impl = impl
            dconv(f)

        return call

    with torch.inference_mode():
        guide = dconv.sekg(f)
        kernels = dconv.kernel_conv(guide)
        calls = {
            "3×3 conv 32→32 (what the DConv replaces)": lambda: conv(f),
            "DConv, lean": dconv_as("lean"),
            "DConv, fused": dconv_as("fused"),
            "of the lean DConv: SEKG": lambda: dconv.sekg(f),
            "of the lean DConv: 1×1 conv 32→288 (oneDNN)": lambda: dconv.kernel_conv(guide),
            "of the lean DConv: dynamic filter": lambda: dynfilter.dynamic_filter(f, kernels),
            "the fused op alone": lambda: dynfilter.functional.fused_dynamic_filter(
                f, guide, dconv.kernel_conv.weight, dconv.kernel_conv.bias
            ),
        }
        times = time_callables(calls, repeat=15, warmup=2, settle=1)
    print("| one thread, 1×32×128×128 | ms |\n|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t.ms:.3g} |")
    macs = 128 * 128 * 32 * 32 * 9  # both convs: 32·32·9 multiply-adds per pixel
    conv_rate = macs / times["3×3 conv 32→32 (what the DConv replaces)"].median / 1e9
    pointwise_rate = macs / times["of the lean DConv: 1×1 conv 32→288 (oneDNN)"].median / 1e9
    fused_rate = macs / times["the fused op alone"].median / 1e9
    print(f"\nGMAC/s: 3×3 conv {conv_rate:.1f}, 1×1 conv {pointwise_rate:.1f}, fused op (its 1×1 part) {fused_rate:.1f}")


def mdcb_profile() -> None:
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    torch.set_num_threads(os.cpu_count() or 1)
    block = dynfilter.MDCB(128, 64).eval()
    for m in block.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            torch.nn.init.normal_(m.conv_offset_mask.weight, std=0.01)  # trained offsets move the taps
    x = torch.randn(1, 128, 128, 128)
    for impl in ("lean", "fused"):
        block.impl = impl
        with torch.inference_mode():
            block(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                block(x)
        print(f"\nMDCB(128, 64) at 1×128×128×128, {impl}, {torch.get_num_threads()} threads")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


if __name__ == "__main__":
    dconv_parts()
    mdcb_profile()

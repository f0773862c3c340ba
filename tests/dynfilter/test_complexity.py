"""profile() against hand-computed parameter and MAC counts; the latency helper."""

from __future__ import annotations

import time

import pytest
import torch
import torchvision
from torch import nn

import backbones
import dynfilter
from dynfilter import DCB, MCB, MDCB, DConv, ModulatedDeformConv2d, profile, set_dynamic_filter_impl
from dynfilter.complexity import measure_latency
from experiments.cli import main


def test_conv_and_transposed_conv():
    p = profile(nn.Conv2d(3, 8, 3, padding=1, groups=1), (2, 3, 7, 5))
    assert (p.params, p.macs, p.flops) == (8 * 3 * 9 + 8, 2 * 8 * 3 * 9 * 35, 2 * 2 * 8 * 3 * 9 * 35)
    # Transposed: every input pixel meets every weight once, Cin·Cout·k²·Hin·Win (not the 4x larger
    # count from the output size that thop uses).
    up = nn.ConvTranspose2d(8, 4, 6, stride=2, padding=2)
    assert up(torch.zeros(1, 8, 5, 7)).shape[-2:] == (10, 14)
    p = profile(up, (1, 8, 5, 7))
    assert (p.params, p.macs) == (8 * 4 * 36 + 4, 8 * 4 * 36 * 5 * 7)


def test_dncnn_hand_count():
    model = backbones.build("dncnn", depth=4, channels=8)
    p = profile(model, (1, 3, 12, 10))
    hw = 12 * 10
    convs = (3 * 8 + 2 * 8 * 8 + 8 * 3) * 9 * hw
    batch_norm = 2 * (8 * hw) * 2  # fvcore: eval-mode BN with affine = 2 per element, 2 BN layers
    assert p.macs == convs + batch_norm
    assert p.params == (9 * 3 * 8 + 8) + 2 * (9 * 64 + 3 * 8) + (9 * 8 * 3 + 3)
    assert p.by_operator == {"conv": convs, "batch_norm": batch_norm}
    assert [m.name for m in p.modules] == ["body"] and p.modules[0].macs == p.macs
    assert p.zero_ops.get("aten::relu", 0) == 3 and "aten::sub" in p.zero_ops  # out = x − body(x)


def test_dconv_hand_count():
    c, b, h, w = 8, 2, 6, 5
    p = profile(DConv(c), (b, c, h, w))
    n = b * h * w
    sekg = c * 9 * n + 3 * c * b  # depthwise 3×3 + Conv1d(k=3) along the C pooled values
    kernel_conv = 9 * c * c * n
    dynamic = 9 * c * n
    assert p.macs == sekg + kernel_conv + dynamic
    assert p.by_operator["dynamic_filter"] == dynamic
    assert p.params == (10 * c + 4) + (9 * c * c + 9 * c)
    rows = {m.name: m.macs for m in p.modules}
    assert rows == {"sekg": sekg, "kernel_conv": kernel_conv, "(top level)": dynamic}


def test_mdcb_hand_count():
    c, m, h, w = 16, 8, 6, 5
    p = profile(MDCB(c, m), (1, c, h, w))
    n = h * w
    expected = {
        "offset conv C->32": 32 * c * 9 * n,
        "DCN offset/mask conv 32->216": 216 * 32 * 9 * n,
        "SEKG": c * 9 * n + 3 * c,
        "kernel conv C->9M": 9 * m * c * n,
        "reduce C->M": m * c * n,
        "branch convs": 3 * m * m * 9 * n,
        "fuse 4M->C": c * 4 * m * n,
    }
    deform = c * c * 9 * n
    sampling = c * 9 * n * (4 + 1)  # bilinear (4) + mask (1) per sampled value
    dynamic = 3 * m * 9 * n
    assert p.by_operator == {"conv": sum(expected.values()), "deform_conv": deform,
                             "deform_sampling": sampling, "dynamic_filter": dynamic}
    assert p.macs == sum(expected.values()) + deform + sampling + dynamic
    assert p.flops == 2 * p.macs
    assert {"aten::leaky_relu", "aten::sigmoid", "aten::add", "aten::cat"} <= set(p.zero_ops)


@pytest.mark.parametrize(
    "block, params",
    [(lambda: MDCB(128, 64), 474_428), (lambda: MDCB(64, 64), 283_132), (lambda: MCB(128, 64), 546_424),
     (lambda: DCB(128), 445_060)],
)
def test_block_params_match_spec_table(block, params):
    # Spec §7: every parameter, the DCN main weight and bias included.
    assert profile(block(), (1, block().channels, 8, 8)).params == params


def test_torchvision_deform_conv_without_mask():
    class Deform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))
            self.offset = nn.Parameter(torch.zeros(1, 2 * 2 * 9, 5, 7))  # 2 offset groups

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torchvision.ops.deform_conv2d(x, self.offset, self.weight, padding=1)

    p = profile(Deform(), (1, 4, 5, 7))
    n = 5 * 7
    assert p.by_operator == {"deform_conv": 6 * 4 * 9 * n, "deform_sampling": 4 * 9 * n * 4}


def test_lean_deform_op_is_counted():
    pytest.importorskip("dynfilter.ops.deform_conv")
    if not hasattr(torch.ops.dynfilter, "modulated_deform_conv2d"):
        pytest.skip("dynfilter::modulated_deform_conv2d is not registered")

    class Lean(nn.Module):
        def __init__(self, masked: bool) -> None:
            super().__init__()
            self.masked = masked
            self.weight = nn.Parameter(torch.randn(6, 8, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            offset = torch.zeros(1, 2 * 4 * 9, 5, 7)
            mask = torch.full((1, 4 * 9, 5, 7), 0.5) if self.masked else None
            return torch.ops.dynfilter.modulated_deform_conv2d(x, offset, self.weight, None, mask, [1, 1], [1, 1], [1, 1])

    n = 5 * 7
    for masked in (True, False):
        p = profile(Lean(masked), (1, 8, 5, 7))
        assert p.by_operator == {"deform_conv": 6 * 8 * 9 * n, "deform_sampling": 8 * 9 * n * (4 + masked)}


def test_unfold_path_warns_and_is_not_counted():
    block = set_dynamic_filter_impl(DConv(8), "unfold")
    with pytest.warns(UserWarning, match="impl='unfold'"):
        p = profile(block, (1, 8, 6, 6))
    assert "dynamic_filter" not in p.by_operator and "aten::im2col" in p.zero_ops


def test_adfnet_counts():
    model = backbones.build("adfnet")
    h = w = 32
    p = profile(model, (1, 3, h, w))
    names = ["head", "fe1", "down1", "fe2", "down2", "fe3", "down3", "bottleneck", "up3", "dfe3", "up2", "dfe2",
             "up1", "dfe1", "tail"]
    assert [m.name for m in p.modules] == names  # nothing outside the children costs MACs or holds parameters
    assert p.params == 8_628_579 == sum(m.params for m in p.modules)
    assert p.macs == sum(m.macs for m in p.modules)
    widths, mids = (32, 64, 128, 256), (32, 64, 64, 128)
    pixels = [h * w // 4**level for level in range(4)]
    # Decoder (levels 0-2): one DConv (C channels) and three MDCB branches (M channels) each.
    assert p.by_operator["dynamic_filter"] == sum(9 * (widths[i] + 3 * mids[i]) * pixels[i] for i in range(3))
    # Seven DCNs (encoder and decoder at levels 0-2, bottleneck at level 3): 9C²·HW each.
    dcn = [2, 2, 2, 1]
    assert p.by_operator["deform_conv"] == sum(dcn[i] * 9 * widths[i] ** 2 * pixels[i] for i in range(4))
    assert p.by_operator["deform_sampling"] == sum(dcn[i] * 5 * 9 * widths[i] * pixels[i] for i in range(4))
    ups = {m.name: m.macs for m in p.modules if m.name.startswith("up")}
    assert ups == {f"up{i + 1}": widths[i + 1] * widths[i] * 36 * pixels[i + 1] for i in range(3)}
    # The published 7.65M is this count without the DCNs' own weight and bias (spec §7).
    dcn_main = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, ModulatedDeformConv2d))
    assert p.params - dcn_main == 7_650_979


def test_profile_restores_mode_and_checks_size():
    model = DConv(4).train()
    profile(model, (1, 4, 5, 5))
    assert model.training
    with pytest.raises(ValueError, match="input_size"):
        profile(model, (1, 4, 0, 5))


def test_profile_command(capsys):
    assert main(["profile", "dncnn", "--kwargs", "depth=4,channels=8", "--size", "12x10"]) == 0
    out = capsys.readouterr().out
    assert "193.920K" in out and "FLOPs = 2 x MACs" in out and "1,643" in out
    assert main(["profile", "dncnn", "--size", "12by10"]) == 2
    assert "HxW" in capsys.readouterr().err


def test_table_lists_modules_and_zero_ops():
    text = profile(MDCB(8, 8), (1, 8, 6, 6)).table()
    assert "dcn" in text and "total" in text and "counted as zero: " in text and "aten::leaky_relu" in text


def test_latency_median_runs_and_threads():
    calls = []

    def work(delay: float) -> None:
        calls.append(delay)
        time.sleep(delay)

    before = torch.get_num_threads()
    lat = measure_latency(work, 0.004, runs=5, warmup=2, threads=1)
    assert len(calls) == 7 and lat.runs == 5 and len(lat.times_ms) == 5 and lat.warmup == 2
    assert lat.threads == 1 and torch.get_num_threads() == before
    assert lat.median_ms >= 4.0 and lat.min_ms <= lat.median_ms and lat.device == "cpu"
    with pytest.raises(ValueError, match="runs"):
        measure_latency(work, 0.0, runs=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_latency(work, 0.0, warmup=-1)


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, dynfilter; print(sorted(m for m in ('fvcore', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]" and hasattr(dynfilter, "profile")


def test_published_thop_count_is_reproduced():
    """docs/complexity.md: thop's rules on this ADFNet give the published 7.650979M / 13.909240672G exactly."""
    model = backbones.build("adfnet").eval()
    count = {"conv": 0, "conv_transpose": 0, "bias": 0, "lrelu": 0, "pool": 0}

    def conv(mod, inputs, out):
        # thop: output elements × (C_in/groups)·k² (+1 per output element for the bias); a transposed
        # conv is counted the same way, from its output.
        key = "conv_transpose" if isinstance(mod, nn.ConvTranspose2d) else "conv"
        count[key] += out.numel() * (inputs[0].shape[1] // mod.groups) * mod.weight.shape[2:].numel()
        count["bias"] += out.numel() if mod.bias is not None else 0

    def lrelu(mod, inputs, out):
        count["lrelu"] += inputs[0].numel()

    def mfi(mod, inputs, out):
        # The official MFI pools with nn.AdaptiveAvgPool2d over (H, W), then (C, W), then (H, C): thop
        # counts (pooled elements + 1) per output element of each.
        b, c, h, w = inputs[0].shape
        count["pool"] += 3 * inputs[0].numel() + b * (c + h + w)

    def sekg(mod, inputs, out):
        b, c, h, w = inputs[0].shape
        count["pool"] += b * c * (h * w + 1)

    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            mod.register_forward_hook(conv)
        hook = {nn.LeakyReLU: lrelu, dynfilter.MFI: mfi, dynfilter.SEKG: sekg}.get(type(mod))
        if hook is not None:
            mod.register_forward_hook(hook)
    with torch.no_grad(), dynfilter.functional.unfused(model):  # thop hooks the kernel generators' module calls
        model(torch.rand(1, 3, 128, 128))
    assert sum(count.values()) == 13_909_240_672
    # The transposed convs alone are counted 4x (stride²) what they compute.
    # up3, up2, up1: C_in·C_out·6²·H_in·W_in.
    true_transposed = 256 * 128 * 36 * 16**2 + 128 * 64 * 36 * 32**2 + 64 * 32 * 36 * 64**2
    assert count["conv_transpose"] == 4 * true_transposed == 4 * 905_969_664

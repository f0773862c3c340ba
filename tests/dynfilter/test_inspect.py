"""capture(): what it records equals a recomputation by hand, and the model is left exactly as it was."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import backbones
from dynfilter import DCB, MDCB, DConv
from dynfilter.inspect import (
    capture,
    default_modules,
    expected_channels,
    kernel_highpass_matrix,
    landmark_pixels,
    select_modules,
)
from dynfilter.spectral import high_frequency_share, radial_frequency, spectral_summary, white_noise_share
from dynfilter.surgery import recipes


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _dncnn_dconv() -> nn.Module:
    return recipes.get("dncnn_dconv")(backbones.build("dncnn", depth=5, channels=8), init="published").apply()


def test_recorded_maps_equal_the_modules_recomputed_by_hand():
    block = DCB(6).eval()
    x = torch.randn(1, 6, 24, 20)
    c = capture(block, x)
    with torch.no_grad():
        mid = block.conv1(x)
        dconv_out = block.dconv(mid)
        out = block(x)
    torch.testing.assert_close(c.activations["conv1"].output.mean_map, mid.mean(dim=1), msg="conv1 channel mean")
    torch.testing.assert_close(c.activations["dconv"].input.mean_map, mid.mean(dim=1), msg="DConv input")
    assert c.activations["dconv"].output.hf_share == pytest.approx(high_frequency_share(dconv_out), rel=1e-6)
    # The power gains above and below the cutoff, from two summaries computed here.
    a, b = spectral_summary(mid), spectral_summary(dconv_out)
    row = next(r for r in c.table() if r["module"] == "dconv")
    assert row["gain_high"] == pytest.approx(b.energy * b.share / (a.energy * a.share), rel=1e-6)
    assert row["gain_low"] == pytest.approx(b.energy * (1 - b.share) / (a.energy * (1 - a.share)), rel=1e-6)
    torch.testing.assert_close(c.output, out, msg="the model's output")
    assert c.activations["conv2"].output.full is None  # reductions only, unless asked
    full = capture(block, x, ["conv2"], keep_full=True).activations["conv2"]
    assert full.output.full.shape == (1, 6, 24, 20) and full.input.full.shape == (1, 6, 24, 20)


def test_kernels_at_a_pixel_and_their_maps_equal_the_predicted_kernels():
    dconv = DConv(4).eval()
    x = torch.randn(1, 4, 11, 9)
    c = capture(dconv, x, ["sekg"], pixels=[(3, 7)])
    assert c.kernels == {}  # only chosen modules that predict kernels
    c = capture(nn.Sequential(dconv), x, ["0"], pixels=[(3, 7)])
    with torch.no_grad():
        kernels = dconv.kernels(x).view(1, 4, 9, 11, 9)
    maps = c.kernels["0"]
    assert (maps.generator, maps.kernel_size, maps.channels) == ("0.kernel_conv", 3, 4)
    torch.testing.assert_close(maps.at[(3, 7)], kernels[0, :, :, 3, 7].view(4, 3, 3), msg="kernels at (3, 7)")
    torch.testing.assert_close(maps.energy, kernels.square().sum(2).mean(1), msg="kernel energy")
    torch.testing.assert_close(maps.dc_gain, kernels.sum(2).mean(1), msg="DC gain")
    assert maps.highpass.min() >= 0 and maps.highpass.max() <= 1


def test_an_identity_kernel_passes_all_frequencies_so_its_highpass_share_is_the_area_fraction():
    # Independent truth: the unit impulse has a flat response, so its share is the area outside the disc.
    model = nn.Sequential(DConv(4, init="identity")).eval()
    c = capture(model, torch.randn(1, 4, 10, 12), ["0"])
    share = c.kernels["0"].highpass
    torch.testing.assert_close(share, torch.full_like(share, white_noise_share(0.25)), atol=0.01, rtol=0,
                               msg="the identity kernel's high-pass share")


def test_the_highpass_matrix_equals_a_zero_padded_fft_of_the_kernel():
    w = torch.randn(5, 5, dtype=torch.float64)
    q = kernel_highpass_matrix(5, 0.3, grid=64)
    spectrum = torch.fft.fft2(w, s=(64, 64)).abs().square()  # the response on the 64×64 grid
    expected = spectrum[radial_frequency(64, 64) > 0.3].sum() / 64**2
    assert (w.flatten() @ q @ w.flatten()).item() == pytest.approx(expected.item(), rel=1e-9)
    t = torch.arange(-2, 3, dtype=torch.float64)
    smooth = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 4.5).flatten()  # a Gaussian, σ = 1.5 px
    sharp = torch.tensor([0, -1, 0, -1, 4, -1, 0, -1, 0], dtype=torch.float64)  # a Laplacian
    assert smooth @ q @ smooth / smooth.square().sum() < 0.02  # not 0: the 5×5 truncation has side lobes
    q3 = kernel_highpass_matrix(3, 0.3, grid=64)
    assert sharp @ q3 @ sharp / sharp.square().sum() > 0.6


def test_the_model_is_left_as_it_was_hooks_weights_batchnorm_and_training_flags():
    model = _dncnn_dconv().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, torch.rand(3, 16, 16))
    assert _hooks(model) == 0
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} changed (BatchNorm statistics moved?)")


def test_hooks_are_removed_when_the_forward_raises():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = DCB(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.block(x)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(1, 4, 8, 8))
    assert _hooks(model) == 0 and model.training


def test_kernels_are_captured_even_where_gradients_are_on():
    # pointwise_conv bypasses the generator module while recording gradients; capture runs without them.
    with torch.enable_grad():
        c = capture(nn.Sequential(DConv(4)), torch.randn(1, 4, 8, 8), ["0"])
    assert "0" in c.kernels


def test_default_modules_in_registered_rewritten_and_plain_models():
    adfnet = backbones.build("adfnet", widths=(8, 8, 16, 16))
    names = default_modules(adfnet)
    assert {"dfe1.0", "dfe1.0.conv1", "dfe1.0.dconv", "dfe1.0.conv2", "dfe1.1", "dfe1.1.mfi", "dfe1.1.fuse"} <= set(names)
    assert not any(n.endswith(("kernel_conv", ".offset")) or ".dcn." in n or ".sekg." in n for n in names)
    assert "head" not in names and "tail" not in names
    assert default_modules(_dncnn_dconv()) == ["body.5", "body.5.sekg"]
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), MDCB(8, offset_channels=8), nn.Conv2d(8, 3, 1))
    assert default_modules(plain)[:2] == ["1", "1.dcn"] and "0" not in default_modules(plain)
    c = capture(plain, torch.rand(3, 12, 12))
    assert list(c.kernels) == ["1"] and c.kernels["1"].channels == 8
    # Registration order in the table; ``finished`` gives the forward order (the branches run before MFI).
    finished = sorted((a for a in c.activations.values() if a.name.startswith("1.")), key=lambda a: a.finished)
    assert [a.name for a in finished] == ["1.dcn", "1.sekg", "1.branches.0", "1.branches.1", "1.branches.2",
                                          "1.mfi", "1.fuse"]


def test_selection_by_glob_and_a_wrong_name_lists_close_names():
    adfnet = backbones.build("adfnet", widths=(8, 8, 16, 16))
    assert select_modules(adfnet, ["dfe1.0.*"]) == [n for n, _ in adfnet.named_modules() if n.startswith("dfe1.0.")]
    assert select_modules(adfnet, ["dfe1.0", "dfe1.0"]) == ["dfe1.0"]
    with pytest.raises(ValueError, match=r"'dfe1.0.dcnv' matches no module of ADFNet; close names: dfe1.0.dconv"):
        select_modules(adfnet, ["dfe1.0.dcnv"])


def test_an_image_with_the_wrong_channels_says_what_the_model_expects():
    model = backbones.build("dncnn", in_channels=1, depth=3, channels=4)
    assert expected_channels(model) == 1
    assert expected_channels(nn.Sequential(nn.Conv2d(5, 2, 1))) == 5
    with pytest.raises(ValueError, match=r"DnCNN expects 1-channel images \(B, 1, H, W\), got an image with 3"):
        capture(model, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="floating-point image"):
        capture(model, torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="outside the 8×8 image"):
        capture(model, torch.rand(1, 8, 8), pixels=[(8, 0)])


def test_landmarks_find_the_edge_and_the_flat_part():
    image = torch.zeros(3, 40, 60)
    image[:, :, 30:] = 1.0
    image[:, :, :20] += 0.2 * torch.randn(3, 40, 20)  # a textured left third, a flat middle, an edge at x = 30
    marks = landmark_pixels(image)
    assert abs(marks["edge"][1] - 29.5) <= 2
    assert 22 <= marks["flat"][1] <= 27 or marks["flat"][1] >= 35
    assert marks["centre"] == (20, 30)
    assert not math.isnan(float(marks["edge"][0]))


def test_the_power_gains_of_a_blur_are_its_mean_squared_response_on_each_side_of_the_cutoff():
    # Independent truth: for white input, the expected gain is the mean of |H(f)|² over the frequencies of that side.
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    t = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 4.5)  # a Gaussian, σ = 1.5 px
    conv.weight.data = (g / g.sum())[None, None]
    row = capture(nn.Sequential(conv), torch.randn(8, 1, 96, 96), ["0"]).table()[0]
    response = torch.fft.fft2(conv.weight.data[0, 0].double(), s=(96, 96)).abs().square()
    above = radial_frequency(96, 96) > 0.25
    assert row["gain_high"] == pytest.approx(response[above].mean().item(), rel=0.15, abs=2e-3)
    assert row["gain_low"] == pytest.approx(response[~above].mean().item(), rel=0.1)
    assert row["gain_high"] < 0.02 and row["hf_out"] < row["hf_in"]

"""The test protocol end to end: noise, padding, clamping, metrics, rows, summaries and ``dynfilter eval``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import img_as_ubyte
from skimage.metrics import peak_signal_noise_ratio
from torch import nn

import backbones
from experiments.cli import main
from experiments.data import ImageFolder, PairedImageFolder, open_dataset
from experiments.metrics import ImageMetrics
from experiments.protocol import TestProtocol, denoise, evaluate, summarize


class Identity(nn.Module):
    """Returns its input; records the input sizes it saw and insists on its size multiple."""

    def __init__(self, in_channels: int = 3, size_multiple: int = 8) -> None:
        super().__init__()
        self.in_channels, self.size_multiple = in_channels, size_multiple
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        assert x.shape[-2] % self.size_multiple == 0 and x.shape[-1] % self.size_multiple == 0
        return x * self.scale


def _small_set(shared_data, tmp_path, count: int = 2) -> ImageFolder:
    # Crops of real CBSD68 images with sides that are not multiples of 8, to keep the test fast.
    src = open_dataset("CBSD68", shared_data)
    for i in range(count):
        Image.fromarray(src.read(i)[:61 + 8 * i, :45]).save(tmp_path / f"{i}.png")
    return ImageFolder(tmp_path, name="crops")


def test_identity_psnr_is_the_noisy_input_psnr(shared_data, tmp_path):
    ds = _small_set(shared_data, tmp_path)
    model = Identity()
    rows = evaluate(model, ds, TestProtocol(sigma=50))
    assert [r["image"] for r in rows] == ["0.png", "1.png"]
    assert model.seen == [(1, 3, 64, 48), (1, 3, 72, 48)]  # padded to 8, output cropped back
    for i, row in enumerate(rows):
        clean = ds.read(i).astype(np.float32) / 255
        # The published draw: re-seed the CPU generator with 20, then normal_ in (1, C, H, W).
        torch.manual_seed(20)
        noise = torch.FloatTensor(1, *clean.transpose(2, 0, 1).shape).normal_(0, 50 / 255.0)[0]
        noisy = np.clip(clean + noise.permute(1, 2, 0).numpy(), 0, 1)
        expected = peak_signal_noise_ratio(img_as_ubyte(clean), img_as_ubyte(noisy), data_range=255)
        assert row["psnr"] == pytest.approx(expected, abs=1e-4)
        assert row["psnr_noisy"] == pytest.approx(expected, abs=1e-4)
        assert (row["height"], row["width"], row["channels"]) == (clean.shape[0], clean.shape[1], 3)
        assert row["image_seed"] == 20


def test_rows_record_the_protocol(shared_data, tmp_path):
    ds = _small_set(shared_data, tmp_path)
    protocol = TestProtocol(sigma=15, seed=3, seed_mode="per_image", clip=True,
                            metrics=ImageMetrics(space="y", border=2))
    model = Identity(size_multiple=4).train()
    rows = evaluate(model, ds, protocol)
    assert model.training  # restored
    expected = {"set": "crops", "noise": "awgn", "sigma": 15.0, "seed": 3, "seed_mode": "per_image", "clip": True,
                "quantize": False, "pad_multiple": 4, "pad_mode": "reflect", "output_clamp": "[0,1]",
                "metric_space": "y", "metric_quantize": True, "border": 2, "ssim_window": 11, "ssim_sigma": 1.5}
    for i, row in enumerate(rows):
        assert {k: row[k] for k in expected} == expected
        assert row["image_seed"] == 3 + i
    # With a clipped input the identity model's output is exactly the noisy input.
    assert rows[0]["psnr"] == pytest.approx(rows[0]["psnr_noisy"], abs=1e-12)
    summary = summarize(rows)
    assert len(summary) == 1 and summary[0]["images"] == 2
    assert summary[0]["psnr"] == pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2)
    assert summary[0]["sigma"] == 15.0 and "image_seed" not in summary[0]
    rows[1]["sigma"] = 25.0
    with pytest.raises(ValueError, match="disagree on protocol field 'sigma'"):
        summarize(rows)


def test_pad_multiple_override_and_seed_effect(shared_data, tmp_path):
    ds = _small_set(shared_data, tmp_path, 1)
    model = Identity(size_multiple=16)
    evaluate(model, ds, TestProtocol(sigma=25, pad_multiple=16))
    assert model.seen == [(1, 3, 64, 48)]
    a = evaluate(Identity(), ds, TestProtocol(sigma=25, seed=1))[0]["psnr"]
    b = evaluate(Identity(), ds, TestProtocol(sigma=25, seed=2))[0]["psnr"]
    assert a != b and abs(a - b) < 0.5


def test_denoise_clamps_and_crops():
    out = denoise(lambda x: 2 * x - 0.5, torch.rand(1, 3, 13, 10), multiple=8)
    assert out.shape == (1, 3, 13, 10) and out.min() >= 0 and out.max() <= 1


def test_untrained_dncnn_matches_a_manual_run(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 23, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    model = backbones.build("dncnn", depth=3, channels=8)
    row = evaluate(model, ImageFolder(tmp_path), TestProtocol(sigma=30, seed=5))[0]
    clean = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    noisy = clean + torch.empty(3, 20, 23).normal_(0, 30 / 255, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model.eval()(noisy[None])[0].clamp(0, 1)
    expected = peak_signal_noise_ratio(arr, img_as_ubyte(out.permute(1, 2, 0).numpy()), data_range=255)
    assert row["psnr"] == pytest.approx(expected, abs=1e-4) and row["pad_multiple"] == 1


def test_real_noise_pairs(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "lq").mkdir(), (tmp_path / "hq").mkdir()
    clean = rng.integers(20, 230, (16, 16, 3), dtype=np.uint8)
    noisy = np.clip(clean.astype(int) + rng.integers(-9, 10, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(tmp_path / "hq" / "x.png")
    Image.fromarray(noisy).save(tmp_path / "lq" / "x.png")
    ds = PairedImageFolder(tmp_path / "lq", tmp_path / "hq", name="pairs")
    row = evaluate(Identity(), ds, TestProtocol(sigma=None))[0]
    assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=255), abs=1e-9)
    assert (row["noise"], row["sigma"], row["image_seed"]) == ("real", None, None)
    with pytest.raises(ValueError, match="real noisy/clean pairs"):
        evaluate(Identity(), ds, TestProtocol(sigma=25))
    with pytest.raises(ValueError, match="sigma=None"):
        evaluate(Identity(), open_dataset("builtin"), TestProtocol(sigma=None))


def test_protocol_errors():
    with pytest.raises(ValueError, match="unknown seed mode"):
        TestProtocol(seed_mode="sometimes")
    with pytest.raises(ValueError, match="pad_multiple"):
        TestProtocol(pad_multiple=0)
    with pytest.raises(ValueError, match="sigma"):
        TestProtocol(sigma=-5)


def test_eval_command(shared_data, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    _small_set(shared_data, images)
    model = backbones.build("dncnn", depth=3, channels=8)
    ckpt = tmp_path / "plain.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "rows.csv"
    args = ["eval", "--model", "dncnn", "--kwargs", "depth=3,channels=8", "--checkpoint", str(ckpt),
            "--sets", f"{images},Set12", "--sigma", "50", "--data-root", str(shared_data), "--out", str(out),
            "--limit", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table["set"].unique()) == ["imgs", "Set12"] and len(table) == 4
    assert (table["sigma"] == 50).all() and (table["seed"] == 20).all() and (table["channels"] == 3).all()
    expected = evaluate(model, ImageFolder(images), TestProtocol(sigma=50))
    assert table["psnr"].iloc[:2].tolist() == pytest.approx([r["psnr"] for r in expected], abs=1e-9)
    assert "imgs" in printed and "Set12" in printed

    # A training checkpoint names its model, so --model may be left out.
    named = tmp_path / "named.pt"
    torch.save({"model": model.state_dict(), "model_name": "dncnn", "model_kwargs": {"depth": 3, "channels": 8}},
               named)
    assert main(["eval", "--checkpoint", str(named), "--sets", str(images), "--out", str(out)]) == 0
    assert pd.read_csv(out)["psnr"].tolist() == pytest.approx([r["psnr"] for r in expected], abs=1e-9)


def test_eval_command_errors(tmp_path, capsys):
    model = backbones.build("dncnn", depth=3, channels=8)
    ckpt = tmp_path / "plain.pt"
    torch.save(model.state_dict(), ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--sets", "builtin", "--sigma", "50"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--model", "dncnn", "--checkpoint", str(ckpt), "--sets", "builtin", "--sigma", "50"]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert main(["eval", "--model", "dncnn", "--checkpoint", str(tmp_path / "no.pt"), "--sets", "builtin"]) == 2
    assert "no.pt" in capsys.readouterr().err

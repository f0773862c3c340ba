"""PSNR/SSIM against scikit-image on real benchmark images, Y channel and border crop included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import img_as_ubyte
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from experiments.data import open_dataset
from experiments.metrics import ImageMetrics, psnr, rgb_to_y, ssim, to_uint8
from experiments.noise import GaussianNoise


def _hwc(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x).permute(1, 2, 0).numpy()


def _sk(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    axis = 2 if a.ndim == 3 else None
    return (
        peak_signal_noise_ratio(a, b, data_range=255),
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=255, channel_axis=axis),
    )


def _pairs(shared_data, name: str, count: int = 2):
    ds = open_dataset(name, shared_data)
    for i in range(count):
        clean = ds[i]
        noisy = GaussianNoise(25)(clean, seed=i)
        # A plausible restored image: the noisy one, slightly blurred, clamped.
        restored = torch.nn.functional.avg_pool2d(noisy[None], 3, 1, 1, count_include_pad=False)[0].clamp(0, 1)
        yield clean, noisy.clamp(0, 1), restored


@pytest.mark.parametrize("name, count", [("CBSD68", 2), ("BSD68", 1), ("McMaster", 1)])
def test_agrees_with_skimage(shared_data, name, count):
    metric = ImageMetrics()
    for clean, *others in _pairs(shared_data, name, count):
        for out in others:
            ours = metric(out, clean)
            sk_psnr, sk_ssim = _sk(_hwc(clean).squeeze(), _hwc(out).squeeze())
            assert abs(ours["psnr"] - sk_psnr) < 1e-4
            assert abs(ours["ssim"] - sk_ssim) < 1e-4


def test_border_crop_agrees_with_skimage(shared_data):
    clean, _, out = next(_pairs(shared_data, "Kodak24", 1))
    ours = ImageMetrics(border=6)(out, clean)
    a, b = _hwc(clean)[6:-6, 6:-6], _hwc(out)[6:-6, 6:-6]
    sk_psnr, sk_ssim = _sk(a, b)
    assert abs(ours["psnr"] - sk_psnr) < 1e-4 and abs(ours["ssim"] - sk_ssim) < 1e-4
    assert ImageMetrics(border=6).fields()["border"] == 6


def test_y_channel_agrees_with_skimage_rgb2ycbcr(shared_data):
    # skimage's rgb2ycbcr is MATLAB's: Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1].
    for clean, noisy, out in _pairs(shared_data, "CBSD68", 1):
        ours = ImageMetrics(space="y")(out, clean)
        ya = np.rint(rgb2ycbcr(_hwc(clean))[..., 0])
        yb = np.rint(rgb2ycbcr(_hwc(out))[..., 0])
        sk_psnr = peak_signal_noise_ratio(ya, yb, data_range=255)
        sk_ssim = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255)
        assert abs(ours["psnr"] - sk_psnr) < 1e-4 and abs(ours["ssim"] - sk_ssim) < 1e-4
        assert ours["psnr"] != pytest.approx(ImageMetrics()(out, clean)["psnr"], abs=1e-3)


def test_to_uint8_is_img_as_ubyte():
    x = torch.rand(3, 64, 64)
    x[0, 0, :6] = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.0])  # ties
    assert np.array_equal(_hwc(x), img_as_ubyte(x.permute(1, 2, 0).numpy()))
    assert to_uint8(torch.tensor([-0.3, 1.7])).tolist() == [0, 255]


def test_unquantized_metrics_use_float_values():
    clean = torch.rand(1, 32, 32, dtype=torch.float64)
    out = (clean + 0.01).clamp(0, 1)
    expected = 10 * np.log10(1 / ((out - clean) ** 2).mean().item())
    assert ImageMetrics(quantize=False)(out, clean)["psnr"] == pytest.approx(expected, abs=1e-9)


def test_rgb_to_y_range():
    assert rgb_to_y(torch.zeros(3, 1, 1)).item() == 16 and rgb_to_y(torch.full((3, 1, 1), 255.0)).item() == 235


def test_edge_cases_and_errors():
    x = torch.rand(3, 16, 16) * 255
    assert psnr(x, x) == float("inf")
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, 255 - x) < 0
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:, :8])
    with pytest.raises(ValueError, match="border 8 leaves nothing"):
        psnr(x, x, border=8)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(x[:, :10], x[:, :10])
    with pytest.raises(ValueError, match="unknown metric space"):
        ImageMetrics(space="lab")
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        rgb_to_y(torch.zeros(1, 4, 4))

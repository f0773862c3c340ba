"""The spectral measure against answers known without it: white noise, blur, Laplacian, constants, a sinusoid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynfilter import spectral
from dynfilter.spectral import (
    high_frequency_share,
    power_spectrum2d,
    radial_frequency,
    radial_power_spectrum,
    spectral_summary,
    white_noise_share,
)

WINDOWS = [None, "hann"]


def _noise(maps: int = 16, size: int = 96) -> torch.Tensor:
    return torch.randn(maps, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Circular filtering, so that the filter's frequency response is exact on the FFT grid."""
    k = kernel.shape[-1] // 2
    padded = F.pad(x[:, None], (k, k, k, k), mode="circular")
    return F.conv2d(padded, kernel[None, None].to(x.dtype))[:, 0]


def _gaussian(sigma: float = 1.5, radius: int = 4) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-t.square() / (2 * sigma * sigma))
    g = g[:, None] * g[None, :]
    return g / g.sum()


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def test_white_noise_area_fraction_by_counting_grid_points():
    # Independent truth: count the FFT grid points outside the disc, and the analytic area.
    fy = torch.arange(-64, 64) / 128
    r = torch.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2)
    for fc in (0.1, 0.25, 0.4, 0.6):
        counted = (r > fc).double().mean().item()
        assert abs(white_noise_share(fc) - counted) < 0.01, fc
    assert white_noise_share(0.25) == pytest.approx(1 - math.pi / 16)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("cutoff", [0.1, 0.25, 0.4])
def test_white_noise_share_is_the_area_outside_the_disc(window, cutoff):
    share = high_frequency_share(_noise(), cutoff, window=window)
    assert abs(share - white_noise_share(cutoff)) < 0.02, (share, white_noise_share(cutoff))


@pytest.mark.parametrize("window", WINDOWS)
def test_white_noise_radial_spectrum_is_flat_at_its_variance(window):
    sigma = 3.0
    centres, power = radial_power_spectrum(sigma * _noise(), bins=12, window=window)
    assert centres[0] > 0 and centres[-1] < math.sqrt(0.5)
    ring = power[1:-1]  # the first ring holds DC (removed); the corner ring has few bins
    torch.testing.assert_close(ring, torch.full_like(ring, sigma**2), rtol=0.1, atol=0,
                               msg=lambda m: f"white noise spectrum not flat at σ²: {ring}\n{m}")


@pytest.mark.parametrize("window", WINDOWS)
def test_blur_lowers_and_laplacian_raises_the_share(window):
    x = _noise()
    base = high_frequency_share(x, window=window)
    blurred = high_frequency_share(_filter(x, _gaussian()), window=window)
    sharpened = high_frequency_share(_filter(x, LAPLACIAN), window=window)
    assert blurred < 0.05 < base, (blurred, base)
    assert sharpened > base + 0.1, (sharpened, base)


def test_laplacian_share_matches_its_frequency_response():
    # Independent truth: the Laplacian's response is −4 + 2cos 2πf_y + 2cos 2πf_x; for white input the share is
    # the response's energy outside the disc over its total.
    n = 96
    fy = torch.fft.fftfreq(n, dtype=torch.float64)
    response = (-4 + 2 * torch.cos(2 * math.pi * fy)[:, None] + 2 * torch.cos(2 * math.pi * fy)[None, :]).square()
    r = torch.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2)
    expected = (response[r > 0.25].sum() / response.sum()).item()
    measured = high_frequency_share(_filter(_noise(size=n), LAPLACIAN), window=None)
    assert abs(measured - expected) < 0.01, (measured, expected)


@pytest.mark.parametrize("window", WINDOWS)
def test_a_constant_map_has_no_energy(window):
    x = torch.full((3, 20, 17), 5.0)
    assert power_spectrum2d(x, window).abs().max().item() == 0.0
    assert math.isnan(high_frequency_share(x, window=window))


def test_a_sinusoid_puts_its_energy_at_its_frequency():
    n = 64
    t = torch.arange(n, dtype=torch.float64)
    low = torch.cos(2 * math.pi * 4 / n * t)[None, :].expand(n, n)  # 0.0625 cycles/pixel, along x
    high = torch.cos(2 * math.pi * 24 / n * t)[:, None].expand(n, n)  # 0.375 cycles/pixel, along y
    assert high_frequency_share(low, window=None) == pytest.approx(0.0, abs=1e-12)
    assert high_frequency_share(high, window=None) == pytest.approx(1.0, abs=1e-12)
    assert high_frequency_share(low + high, window=None) == pytest.approx(0.5, abs=1e-12)
    power = power_spectrum2d(low, window=None)
    assert radial_frequency(n, n)[power > 1e-9].unique().tolist() == [4 / n]


def test_the_mean_of_each_map_is_removed_separately():
    x = _noise(maps=2)
    offset = x + torch.tensor([100.0, -7.0], dtype=x.dtype)[:, None, None]
    torch.testing.assert_close(power_spectrum2d(offset), power_spectrum2d(x), msg="the DC offsets leaked in")


def test_power_is_averaged_over_maps_before_the_share():
    quiet_high = 0.1 * _filter(_noise(maps=1), LAPLACIAN)
    loud_low = 10 * _filter(_noise(maps=1), _gaussian())
    both = torch.cat([quiet_high, loud_low])
    energy = [power_spectrum2d(m).sum().item() for m in (quiet_high, loud_low)]
    shares = [high_frequency_share(m) for m in (quiet_high, loud_low)]
    weighted = (energy[0] * shares[0] + energy[1] * shares[1]) / sum(energy)
    assert high_frequency_share(both) == pytest.approx(weighted, rel=1e-9)
    assert high_frequency_share(both) < 0.1 < sum(shares) / 2  # energy-weighted, not the mean of the shares


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        high_frequency_share(torch.randn(5))
    with pytest.raises(ValueError, match="at least 2×2"):
        high_frequency_share(torch.randn(1, 8))
    with pytest.raises(ValueError, match="cutoff must be"):
        high_frequency_share(torch.randn(8, 8), cutoff=0.9)
    with pytest.raises(ValueError, match="window must be one of"):
        high_frequency_share(torch.randn(8, 8), window="hamming")
    with pytest.raises(ValueError, match="bins must be"):
        radial_power_spectrum(torch.randn(8, 8), bins=0)


def test_chunked_power_and_the_one_pass_summary_agree_with_the_plain_functions(monkeypatch):
    x = _noise(maps=5, size=24).float()
    whole = power_spectrum2d(x)
    monkeypatch.setattr(spectral, "_CHUNK_ELEMENTS", 24 * 24 * 2)  # 2 maps per chunk: 3 chunks
    torch.testing.assert_close(power_spectrum2d(x), whole, msg="chunks changed the spectrum")
    share, energy, centres, power = spectral_summary(x, 0.3, bins=7)
    assert share == pytest.approx(high_frequency_share(x, 0.3), rel=1e-12)
    torch.testing.assert_close((centres, power), radial_power_spectrum(x, bins=7), msg="summary vs radial spectrum")
    # Parseval: without a window the energy is H·W times the mean variance of the maps.
    variance = x.double().var(dim=(-2, -1), unbiased=False).mean().item()
    assert spectral_summary(x, window=None).energy == pytest.approx(24 * 24 * variance, rel=1e-6)

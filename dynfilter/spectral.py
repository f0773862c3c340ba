"""How much of a feature map's energy is at high spatial frequencies: radial power spectra and shares.

The definition used everywhere in :mod:`dynfilter.inspect` and ``dynfilter inspect``:

- Each 2-D map (the last two dimensions; every leading index — batch, channel — is one map) has its
  own mean removed, so a constant map has no energy at all.
- It is then multiplied by a separable Hann window (``window="hann"``, the default) so that the jump
  between opposite borders of a non-periodic map does not leak into the high frequencies; pass
  ``window=None`` for the plain periodogram.
- Power is ``|FFT|² / Σ window²`` at the FFT frequencies ``f_y, f_x ∈ [−0.5, 0.5)`` cycles/pixel,
  so white noise of variance ``σ²`` has a flat expected spectrum equal to ``σ²`` with or without the window.
- Power is averaged over all maps (per-channel power averaged, i.e. channels weigh by their energy)
  before anything is summed or binned.
- The radial frequency of a bin is ``|f| = √(f_y² + f_x²)``; the high-frequency share above a cutoff
  ``f_c`` is ``Σ_{|f| > f_c} P(f) / Σ_f P(f)``. For white noise it is the share of the frequency square
  ``[−0.5, 0.5]²`` outside the disc of radius ``f_c``: ``1 − π f_c²`` for ``f_c ≤ 0.5`` (0.804 at 0.25).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "DEFAULT_CUTOFF",
    "power_spectrum2d",
    "radial_frequency",
    "radial_power_spectrum",
    "high_frequency_share",
    "white_noise_share",
    "SpectralSummary",
    "spectral_summary",
]

#: The default cutoff of :func:`high_frequency_share`, in cycles/pixel (half of Nyquist).
DEFAULT_CUTOFF = 0.25

_WINDOWS = (None, "hann")
_CHUNK_ELEMENTS = 1 << 22


def _check_maps(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a tensor of 2-D maps (..., H, W), got shape {got}")
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"maps must be at least 2×2 to have a spectrum, got {tuple(x.shape[-2:])}")
    if x.numel() == 0:
        raise ValueError(f"expected at least one map, got shape {tuple(x.shape)}")


def _window(h: int, w: int, window: str | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if window not in _WINDOWS:
        raise ValueError(f"window must be one of {list(_WINDOWS)}, got {window!r}")
    if window is None:
        return torch.ones(h, w, dtype=dtype, device=device)
    wy = torch.hann_window(h, periodic=False, dtype=dtype, device=device)
    wx = torch.hann_window(w, periodic=False, dtype=dtype, device=device)
    return wy[:, None] * wx[None, :]


def power_spectrum2d(x: torch.Tensor, window: str | None = "hann") -> torch.Tensor:
    """The mean power spectrum of the maps in ``x``, DC at index ``[0, 0]`` (FFT order).

    Args:
        x (Tensor[..., H, W]): real maps; each leading index is one map.
        window (str, optional): ``"hann"`` (default) or ``None``; see the module docstring.

    Returns:
        Tensor[H, W], float64: ``mean over maps of |FFT(window · (map − mean))|² / Σ window²``.

    >>> power_spectrum2d(torch.ones(3, 8, 8)).abs().max().item()
    0.0
    """
    _check_maps(x)
    h, w = x.shape[-2:]
    maps = x.detach().reshape(-1, h, w)
    win = _window(h, w, window, torch.float64, maps.device)
    spectrum = torch.zeros(h, w, dtype=torch.float64, device=maps.device)
    step = max(1, _CHUNK_ELEMENTS // (h * w))  # a few maps at a time: memory stays bounded for wide tensors
    for start in range(0, maps.shape[0], step):
        chunk = maps[start:start + step].to(torch.float64)
        chunk = chunk - chunk.mean(dim=(-2, -1), keepdim=True)
        spectrum += torch.fft.fft2(chunk * win).abs().square().sum(dim=0)
    return spectrum / (maps.shape[0] * win.square().sum())


def radial_frequency(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``Tensor[H, W]``: ``√(f_y² + f_x²)`` in cycles/pixel at each FFT bin of an ``H×W`` map.

    >>> radial_frequency(4, 4)[2, 2].item()  # the corner (Nyquist, Nyquist)
    0.7071067811865476
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    return torch.sqrt(fy[:, None].square() + fx[None, :].square())


def radial_power_spectrum(
    x: torch.Tensor, bins: int = 32, window: str | None = "hann"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean power in rings of radial frequency, from 0 to the corner ``√0.5`` cycles/pixel.

    Args:
        x (Tensor[..., H, W]): real maps (see :func:`power_spectrum2d`).
        bins (int): rings of equal width ``√0.5 / bins``.
        window (str, optional): ``"hann"`` or ``None``.

    Returns:
        (centres, power): ``Tensor[bins]`` ring centres in cycles/pixel and ``Tensor[bins]`` mean power of
        the FFT bins in each ring (``nan`` for a ring without a bin). White noise of variance ``σ²`` gives
        about ``σ²`` in every ring except the one holding DC (the mean is removed).

    >>> centres, power = radial_power_spectrum(torch.randn(4, 64, 64), bins=8)
    >>> centres.shape, power.shape
    (torch.Size([8]), torch.Size([8]))
    """
    _check_bins(bins)
    return _radial(power_spectrum2d(x, window), bins)


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")


def _radial(power: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    radius = radial_frequency(*power.shape, device=power.device)
    top = math.sqrt(0.5)
    index = (radius / top * bins).long().clamp_(max=bins - 1).flatten()
    sums = torch.zeros(bins, dtype=power.dtype, device=power.device).index_add_(0, index, power.flatten())
    ones = torch.ones(index.numel(), dtype=power.dtype, device=power.device)
    counts = torch.zeros(bins, dtype=power.dtype, device=power.device).index_add_(0, index, ones)
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) * top / bins
    return centres, (sums / counts).cpu()


def _check_cutoff(cutoff: float) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff < math.sqrt(0.5):
        raise ValueError(f"cutoff must be a radial frequency in (0, √0.5 ≈ 0.707) cycles/pixel, got {cutoff!r}")
    return float(cutoff)


def high_frequency_share(x: torch.Tensor, cutoff: float = DEFAULT_CUTOFF, window: str | None = "hann") -> float:
    """Share of the spectral energy of the maps in ``x`` at radial frequencies above ``cutoff``.

    Args:
        x (Tensor[..., H, W]): real maps; power is averaged over all of them first.
        cutoff (float): ``f_c`` in cycles/pixel, in ``(0, √0.5)``; default 0.25 (half of Nyquist).
        window (str, optional): ``"hann"`` (default) or ``None``.

    Returns:
        float in ``[0, 1]``; ``nan`` when the maps have no energy (constant maps).

    >>> noise = torch.randn(8, 128, 128, generator=torch.Generator().manual_seed(0))
    >>> abs(high_frequency_share(noise, window=None) - (1 - math.pi / 16)) < 0.01  # white noise: the area fraction
    True
    """
    cutoff = _check_cutoff(cutoff)
    return _share(power_spectrum2d(x, window), cutoff)


def _share(power: torch.Tensor, cutoff: float) -> float:
    total = power.sum()
    if total <= 0:
        return float("nan")
    radius = radial_frequency(*power.shape, device=power.device)
    return float(power[radius > cutoff].sum() / total)


class SpectralSummary(NamedTuple):
    """What :func:`spectral_summary` returns."""

    #: :func:`high_frequency_share`.
    share: float
    #: ``Σ_f P(f)``, the mean power summed over all frequencies (the windowed variance times ``H·W``).
    energy: float
    #: ring centres of :func:`radial_power_spectrum`, cycles/pixel.
    centres: torch.Tensor
    #: mean power per ring of :func:`radial_power_spectrum`.
    power: torch.Tensor


def spectral_summary(
    x: torch.Tensor, cutoff: float = DEFAULT_CUTOFF, bins: int = 32, window: str | None = "hann"
) -> SpectralSummary:
    """Share, energy and radial spectrum of ``x`` from one power spectrum (half the FFTs of calling each).

    ``energy · share`` is the energy above the cutoff, so the ratio of two summaries' ``energy · share``
    is the gain of a module at high frequencies.

    >>> s = spectral_summary(torch.randn(2, 16, 16), bins=4)
    >>> 0 < s.share < 1, s.power.shape
    (True, torch.Size([4]))
    """
    cutoff = _check_cutoff(cutoff)
    _check_bins(bins)
    power = power_spectrum2d(x, window)
    return SpectralSummary(_share(power, cutoff), float(power.sum()), *_radial(power, bins))


def white_noise_share(cutoff: float = DEFAULT_CUTOFF) -> float:
    """The high-frequency share of white noise: the area of ``[−0.5, 0.5]²`` outside the disc of radius ``cutoff``.

    >>> round(white_noise_share(0.25), 4)
    0.8037
    """
    fc = _check_cutoff(cutoff)
    if fc <= 0.5:
        return 1.0 - math.pi * fc * fc
    # The disc pokes out of the square; per quadrant: the sector between θ and π/2 − θ (cos θ = 0.5/fc)
    # plus two right triangles with legs 0.5 and √(fc² − 0.25).
    theta = math.acos(0.5 / fc)
    inside = 4.0 * (0.5 * fc * fc * (math.pi / 2 - 2 * theta) + 0.5 * math.sqrt(fc * fc - 0.25))
    return 1.0 - inside

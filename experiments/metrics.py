"""PSNR and SSIM as plain functions, plus :class:`ImageMetrics`, which carries the protocol.

The default protocol is the published one (spec §8d): both images are rounded to 8 bits
(``round(255·clamp(x, 0, 1))``, which is what scikit-image's ``img_as_ubyte`` gives for float32),
PSNR is taken over all channels at once, and SSIM (Gaussian 11×11 window, σ = 1.5, population
covariances, ``K1 = 0.01``, ``K2 = 0.03``, data range 255, mean over the valid region that the window
fits in) is computed per channel and averaged. No border is cropped. These agree with
``skimage.metrics.peak_signal_noise_ratio`` and ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=...)``.

Options: ``space="y"`` measures the luma of MATLAB's ``rgb2ycbcr`` instead,
``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 8-bit ``R, G, B``, rounded to an integer
when quantising (as KAIR/SwinIR's ``bgr2ycbcr(only_y=True)`` does); a one-channel image is taken as
its own luma. ``border=b`` crops ``b`` pixels from every side of both images first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["to_uint8", "rgb_to_y", "psnr", "ssim", "ImageMetrics", "METRIC_SPACES"]

METRIC_SPACES: tuple[str, ...] = ("rgb", "y")
_YCBCR_Y = (65.481, 128.553, 24.966)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``round(255 · clamp(x, 0, 1))`` as ``uint8`` (float32 arithmetic, ties to even, as ``img_as_ubyte``)."""
    return x.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def rgb_to_y(img: torch.Tensor, round_result: bool = True) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` luma of an image on the 0–255 scale.

    Args:
        img (Tensor[3, H, W]): RGB values in ``[0, 255]``.
        round_result (bool): round to integer levels, as when the luma is stored in 8 bits.

    Returns:
        Tensor[1, H, W], float64, in ``[16, 235]``.
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"rgb_to_y expects a (3, H, W) image, got shape {tuple(img.shape)}")
    weights = torch.tensor(_YCBCR_Y, dtype=torch.float64, device=img.device).view(3, 1, 1)
    y = (img.double() * weights).sum(0, keepdim=True) / 255.0 + 16.0
    return y.round() if round_result else y


def _pair(x: torch.Tensor, y: torch.Tensor, border: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"{name}: images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 2:
        x, y = x[None], y[None]
    if x.dim() != 3:
        raise ValueError(f"{name}: expected (C, H, W) or (H, W) images, got shape {tuple(x.shape)}")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"{name}: border must be an int >= 0, got {border!r}")
    h, w = x.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"{name}: border {border} leaves nothing of a {h}x{w} image")
    if border:
        x, y = x[:, border:h - border, border:w - border], y[:, border:h - border, border:w - border]
    return x.double(), y.double()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0, border: int = 0) -> float:
    """Peak signal-to-noise ratio ``10·log10(range² / MSE)`` over all pixels and channels, in float64.

    Args:
        x, y (Tensor[C, H, W] or Tensor[H, W]): on the ``[0, data_range]`` scale.
        data_range (float): the peak value (255 for 8-bit images).
        border (int): pixels cropped from every side first.

    Returns:
        float: dB; ``inf`` when the images are identical.
    """
    x, y = _pair(x, y, border, "psnr")
    mse = torch.mean((x - y) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter(t: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Correlate ``Tensor[N, H, W]`` with ``taps`` along ``H``, keeping positions the taps fit in.

    In-place sums of shifted views: on CPU, several times faster than a float64 conv2d.
    """
    n = t.shape[1] - len(taps) + 1
    out = t[:, :n] * taps[0]
    for i, tap in enumerate(taps[1:], start=1):
        out.add_(t[:, i:i + n], alpha=tap)
    return out


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 255.0,
    border: int = 0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> float:
    """Structural similarity with a Gaussian window, per channel, averaged (Wang et al., 2004).

    Local means, variances and the covariance are Gaussian-weighted (population, not sample,
    estimates); the SSIM map is averaged over the positions where the whole window fits.

    Args:
        x, y (Tensor[C, H, W] or Tensor[H, W]): on the ``[0, data_range]`` scale.
        data_range (float): sets ``C1 = (0.01·range)²`` and ``C2 = (0.03·range)²``.
        border (int): pixels cropped from every side first.
        window_size (int): odd side of the Gaussian window.
        sigma (float): its standard deviation.

    Returns:
        float: mean SSIM, at most 1.
    """
    x, y = _pair(x, y, border, "ssim")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"ssim: window_size must be an odd positive int, got {window_size!r}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim: image {tuple(x.shape[-2:])} is smaller than the {window_size}x{window_size} window")
    g = _gaussian_window(window_size, sigma, x.device).tolist()
    c = x.shape[0]
    # All five moment maps go through one separable "valid" Gaussian filter.
    blurred = _valid_filter(_valid_filter(torch.cat([x, y, x * x, y * y, x * y]), g).transpose(1, 2), g)
    mx, my, exx, eyy, exy = blurred.transpose(1, 2).split(c)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx = exx - mx * mx
    vy = eyy - my * my
    cxy = exy - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2)).mean().item()


@dataclass(frozen=True)
class ImageMetrics:
    """PSNR and SSIM of a restored image against its clean version, under a recorded protocol.

    Args:
        space (str): ``"rgb"`` (all channels, the default) or ``"y"`` (MATLAB ``rgb2ycbcr`` luma).
        border (int): pixels cropped from every side.
        quantize (bool): round both images to 8 bits first (the default, as published).
        ssim_window (int): side of the Gaussian SSIM window.
        ssim_sigma (float): its standard deviation.

    >>> m = ImageMetrics()
    >>> clean = torch.rand(3, 16, 16)
    >>> m(clean, clean)["ssim"]
    1.0
    """

    space: str = "rgb"
    border: int = 0
    quantize: bool = True
    ssim_window: int = 11
    ssim_sigma: float = 1.5

    def __post_init__(self) -> None:
        if self.space not in METRIC_SPACES:
            raise ValueError(f"unknown metric space {self.space!r}; expected one of {METRIC_SPACES}")

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """``Tensor[C, H, W]`` in ``[0, 1]`` to the 0–255 values that are measured."""
        img = to_uint8(img).double() if self.quantize else img.detach().double().clamp(0.0, 1.0) * 255.0
        if self.space == "y" and img.shape[0] == 3:
            img = rgb_to_y(img, round_result=self.quantize)
        return img

    def __call__(self, output: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
        """``{"psnr": dB, "ssim": value}`` for ``Tensor[C, H, W]`` images in ``[0, 1]``."""
        a, b = self.prepare(output), self.prepare(clean)
        return {
            "psnr": psnr(a, b, 255.0, self.border),
            "ssim": ssim(a, b, 255.0, self.border, self.ssim_window, self.ssim_sigma),
        }

    def psnr(self, output: torch.Tensor, clean: torch.Tensor) -> float:
        """PSNR alone (dB), e.g. of the noisy input; values outside ``[0, 1]`` are clamped first."""
        return psnr(self.prepare(output), self.prepare(clean), 255.0, self.border)

    def fields(self) -> dict[str, object]:
        """The protocol fields recorded with each result row."""
        return {
            "metric_space": self.space,
            "metric_quantize": self.quantize,
            "border": self.border,
            "ssim_window": self.ssim_window,
            "ssim_sigma": self.ssim_sigma,
            "data_range": 255,
        }

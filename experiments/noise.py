"""Additive white Gaussian noise with explicit seeds (deepinv ``physics/noise.py`` style).

``σ`` is given on the 0–255 scale and images are in ``[0, 1]``, so the noise standard deviation is
``σ / 255``. By default the noisy image is neither clipped nor quantised, as in the published
training and test code (spec §8a, §8d).

Test noise is reproducible per image from a recorded seed. The published colour test re-seeds
PyTorch's CPU generator with 20 before every image and draws ``Tensor(image.shape).normal_(0, σ/255)``;
:func:`image_seed` with ``seed_mode="fixed"`` and :meth:`GaussianNoise.__call__` with that seed
reproduce those exact noise values (the noise is always drawn on the CPU, then moved to the image's
device, so the values do not depend on the device). ``seed_mode="per_image"`` uses ``seed + index``
instead, so that images of the same size get different noise.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GaussianNoise", "image_seed", "SEED_MODES"]

SEED_MODES: tuple[str, ...] = ("fixed", "per_image")


def image_seed(seed: int, index: int, mode: str = "fixed") -> int:
    """The seed for the ``index``-th test image: ``seed`` (``"fixed"``, published) or ``seed + index``."""
    if mode == "fixed":
        return seed
    if mode == "per_image":
        return seed + index
    raise ValueError(f"unknown seed mode {mode!r}; expected one of {SEED_MODES}")


class GaussianNoise:
    """``y = x + n``, ``n ~ N(0, (σ/255)²)`` i.i.d. per pixel and channel.

    Args:
        sigma (float): ``σ`` on the 0–255 scale, ``≥ 0``.
        clip (bool): clamp ``y`` to ``[0, 1]``.
        quantize (bool): round ``y`` to the 8-bit grid (``round(255·y)/255``); implies ``clip``,
            as when the noisy image is stored as an 8-bit file.

    >>> noise = GaussianNoise(25)
    >>> x = torch.zeros(3, 4, 4)
    >>> bool((noise(x, seed=1) == noise(x, seed=1)).all())
    True
    """

    def __init__(self, sigma: float, clip: bool = False, quantize: bool = False) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0 on the 0-255 scale, got {sigma!r}")
        self.sigma = float(sigma)
        self.clip = bool(clip)
        self.quantize = bool(quantize)

    def sample(
        self, shape: torch.Size | tuple[int, ...], *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The noise alone, float32, drawn on ``generator``'s device (CPU when only ``seed`` is given).

        Exactly one of ``seed`` (a fresh CPU generator seeded with it) and ``generator`` (used and
        advanced) must be given, so that every draw is reproducible.
        """
        if (seed is None) == (generator is None):
            raise ValueError("pass exactly one of seed= or generator= so the noise is reproducible")
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        noise = torch.empty(shape, dtype=torch.float32, device=generator.device)
        # normal_(0, std) rather than randn()·std: the published test draws it this way.
        return noise.normal_(0.0, self.sigma / 255.0, generator=generator)

    def __call__(
        self, x: torch.Tensor, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Add noise to ``x`` (any shape, values in ``[0, 1]``); see :meth:`sample` for the seeding rule."""
        noisy = x + self.sample(x.shape, seed=seed, generator=generator).to(device=x.device, dtype=x.dtype)
        if self.quantize:
            return noisy.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        if self.clip:
            return noisy.clamp(0.0, 1.0)
        return noisy

    def fields(self) -> dict[str, object]:
        """The protocol fields recorded with each result row."""
        return {"noise": "awgn", "sigma": self.sigma, "clip": self.clip or self.quantize, "quantize": self.quantize}

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma:g}, clip={self.clip}, quantize={self.quantize})"

"""AWGN: reproducible from a seed, independent across seeds, right moments, the published draw."""

from __future__ import annotations

import pytest
import torch

from experiments.noise import GaussianNoise, image_seed


def test_same_seed_same_noise_new_seed_new_noise():
    noise, x = GaussianNoise(25), torch.rand(3, 32, 40)
    a, b, c = noise(x, seed=7), noise(x, seed=7), noise(x, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Different seeds give uncorrelated noise, not shifted copies.
    corr = torch.corrcoef(torch.stack([(a - x).flatten(), (c - x).flatten()]))[0, 1]
    assert abs(corr) < 0.05


def test_generator_is_advanced():
    noise, g = GaussianNoise(10), torch.Generator().manual_seed(3)
    first, second = noise.sample((100,), generator=g), noise.sample((100,), generator=g)
    assert not torch.equal(first, second)
    g.manual_seed(3)
    torch.testing.assert_close(noise.sample((100,), generator=g), first, rtol=0, atol=0)


@pytest.mark.parametrize("sigma", [5, 25, 50.0])
def test_moments_match_sigma(sigma):
    n = GaussianNoise(sigma).sample((4, 3, 128, 128), seed=1).double()
    std = sigma / 255
    # 196,608 samples: the standard errors of the mean and the std are std/443 and std/627.
    assert abs(n.mean().item()) < 5 * std / 443
    assert abs(n.std().item() / std - 1) < 5 / 627
    # Excess kurtosis of a Gaussian is 0 (a uniform would give -1.2).
    z = (n - n.mean()) / n.std()
    assert abs((z**4).mean().item() - 3) < 0.05


def test_matches_published_test_draw():
    # ADFNet_RGB/test.py: torch.manual_seed(20); FloatTensor(img.size()).normal_(0, sigma/255).
    clean = torch.rand(1, 3, 21, 17)
    torch.manual_seed(20)
    published = torch.FloatTensor(clean.size()).normal_(mean=0, std=50 / 255.0)
    ours = GaussianNoise(50)(clean, seed=image_seed(20, 5, "fixed"))
    torch.testing.assert_close(ours, clean + published, rtol=0, atol=0)


def test_clip_and_quantize():
    x = torch.rand(3, 64, 64)
    raw = GaussianNoise(50)(x, seed=0)
    assert raw.min() < 0 and raw.max() > 1  # not clipped by default
    clipped = GaussianNoise(50, clip=True)(x, seed=0)
    torch.testing.assert_close(clipped, raw.clamp(0, 1), rtol=0, atol=0)
    q = GaussianNoise(50, quantize=True)(x, seed=0)
    levels = q * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert q.min() >= 0 and q.max() <= 1
    assert (q - clipped).abs().max() <= 0.5 / 255 + 1e-6
    assert GaussianNoise(50, quantize=True).fields() == {"noise": "awgn", "sigma": 50.0, "clip": True, "quantize": True}


def test_zero_sigma_is_identity():
    x = torch.rand(2, 5, 5)
    assert torch.equal(GaussianNoise(0)(x, seed=3), x)


def test_seed_modes():
    assert [image_seed(20, i, "fixed") for i in range(3)] == [20, 20, 20]
    assert [image_seed(20, i, "per_image") for i in range(3)] == [20, 21, 22]
    with pytest.raises(ValueError, match="unknown seed mode"):
        image_seed(20, 0, "random")


def test_errors():
    with pytest.raises(ValueError, match="sigma must be"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="sigma must be"):
        GaussianNoise(float("nan"))
    with pytest.raises(ValueError, match="exactly one of seed"):
        GaussianNoise(5)(torch.zeros(3))
    with pytest.raises(ValueError, match="exactly one of seed"):
        GaussianNoise(5)(torch.zeros(3), seed=1, generator=torch.Generator())

"""Paired gains with their uncertainty: a Student t interval over per-seed differences, and a verdict.

A study's gain at one grid point is measured over seeds: each seed gives one paired difference
``d_i = PSNR(enhanced_i) − PSNR(baseline_i)`` (same initial weights, patches and noise; see
:mod:`experiments.sweep`). With ``n`` seeds the 95 % interval is

    mean(d) ± t(0.975, n − 1) · sd(d) / √n        (sd with n − 1 in the denominator)

the textbook interval of a paired t-test. It assumes the differences are roughly normal and the seeds
independent; with 3–5 seeds it is wide on purpose. The verdict reads the interval: ``gain`` when it
lies above 0, ``loss`` when below, ``not resolved`` when it contains 0. One seed gives no interval
and the verdict ``1 seed: no verdict``: one difference says nothing about how much the next seed would move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

__all__ = ["LEVEL", "VERDICTS", "Interval", "t_quantile", "paired_interval", "seeds_for"]

LEVEL = 0.95
#: Every verdict :func:`paired_interval` can give.
VERDICTS: tuple[str, ...] = ("gain", "loss", "not resolved", "1 seed: no verdict")


@dataclass(frozen=True)
class Interval:
    """The mean of paired differences and its two-sided confidence interval.

    Attributes:
        mean (float): mean difference.
        half_width (float): ``t · sd / √n``; ``nan`` for one seed.
        n (int): number of differences (seeds).
        sd (float): sample standard deviation (``n − 1``); ``nan`` for one seed.
        level (float): confidence level.
    """

    mean: float
    half_width: float
    n: int
    sd: float
    level: float = LEVEL

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def verdict(self) -> str:
        """``gain``, ``loss``, ``not resolved`` (the interval contains 0) or ``1 seed: no verdict``."""
        if self.n < 2 or math.isnan(self.half_width):
            return VERDICTS[3]
        if self.low > 0:
            return "gain"
        if self.high < 0:
            return "loss"
        return "not resolved"

    def text(self, digits: int = 2) -> str:
        """``+0.14 ± 0.05`` (or ``+0.14 (1 seed)``)."""
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (1 seed)"
        return f"{self.mean:+.{digits}f} ± {self.half_width:.{digits}f}"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy).

    >>> round(t_quantile(0.975, 2), 4), round(t_quantile(0.975, 4), 4)
    (4.3027, 2.7764)
    """
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    return float(t.ppf(p, df))


def paired_interval(differences: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided ``level`` Student t interval of paired differences (one per seed).

    Missing values (``nan``) are left out. Raises ``ValueError`` when none is left.

    >>> iv = paired_interval([0.20, 0.30, 0.40])
    >>> round(iv.mean, 3), round(iv.half_width, 4), iv.verdict
    (0.3, 0.2484, 'gain')
    >>> paired_interval([0.4]).verdict
    '1 seed: no verdict'
    """
    values = [float(d) for d in differences if not math.isnan(float(d))]
    if not values:
        raise ValueError("no paired differences to summarise")
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be in (0, 1), got {level}")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, n, math.nan, level)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, half, n, sd, level)


def seeds_for(sd: float, half_width: float, level: float = LEVEL, most: int = 100_000) -> int | None:
    """The fewest seeds whose ``level`` interval is at most ``half_width`` wide each side, if the paired
    differences have standard deviation ``sd``: the smallest ``n ≥ 2`` with ``t(n − 1) · sd / √n ≤ half_width``.

    A planning number: ``sd`` is itself estimated from a few seeds. ``None`` when ``sd`` or ``half_width``
    is not a positive number, or when more than ``most`` seeds would be needed.

    >>> seeds_for(0.1, 0.1), seeds_for(0.1, 0.02), seeds_for(float("nan"), 0.1)
    (7, 99, None)
    """
    if not (sd > 0 and half_width > 0):  # also false for nan
        return None
    p = 0.5 + level / 2
    # t(n - 1) falls towards the normal quantile, so (z sd / hw)^2 is a lower bound to start from.
    n = max(2, math.floor((t_quantile(p, 10**6) * sd / half_width) ** 2))
    while n <= most:
        if t_quantile(p, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
        n += 1
    return None

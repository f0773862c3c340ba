"""Argument and input checks shared by the backbones: a clear ``ValueError`` at the public boundary."""

from __future__ import annotations

from dynfilter.layers._checks import check_features

__all__ = ["check_features", "check_positive"]


def check_positive(**values: object) -> None:
    """Raise unless every keyword value is a positive ``int`` (``bool`` is refused)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

"""Input checks shared by the layers: clear ``ValueError`` instead of a shape error deep in torch."""

from __future__ import annotations

import torch

__all__ = ["check_features"]


def check_features(x: torch.Tensor, channels: int, where: str) -> None:
    """Raise unless ``x`` is a 4-D (B, C, H, W) tensor with ``channels`` channels."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{where} expects a 4-D tensor (B, {channels}, H, W), got shape {got}")
    if x.shape[1] != channels:
        raise ValueError(f"{where} expects {channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")

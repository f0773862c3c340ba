"""Self-ensemble at test time: denoise the 8 flips and rotations of an image and average them back.

Each of the 8 symmetries of the square (identity, three rotations by 90°, and each of those after a
left-right flip) is applied to the noisy image, the model denoises it, the inverse symmetry maps the
result back, and the 8 results are averaged (the "+" or "×8" results of the denoising literature).
It costs 8 forward passes. Rotations swap height and width, so the model must take both sizes.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["SYMMETRIES", "self_ensemble"]

#: The 8 symmetries as ``(quarter turns, flip first)``; each is undone by flipping back after ``-turns``.
SYMMETRIES: tuple[tuple[int, bool], ...] = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def _apply(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, dims=(-2, -1))


def _undo(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


def self_ensemble(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The mean of ``undo(run(apply(x)))`` over the 8 :data:`SYMMETRIES`.

    Args:
        run: denoises ``Tensor[B, C, h, w]`` into the same shape, e.g.
            ``functools.partial(experiments.protocol.denoise, model, multiple=8)``.
        x (Tensor[B, C, H, W]): the noisy images.

    Returns:
        Tensor[B, C, H, W]

    >>> x = torch.rand(1, 3, 5, 7)
    >>> torch.allclose(self_ensemble(lambda t: t, x), x)
    True
    """
    total = torch.zeros_like(x)
    for turns, flip in SYMMETRIES:
        total += _undo(run(_apply(x, turns, flip)), turns, flip)
    return total / len(SYMMETRIES)

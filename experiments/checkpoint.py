"""Training checkpoints: written atomically, and complete enough to rebuild the model they hold.

A checkpoint is a ``torch.save`` dict with

- ``"model"``, ``"optimizer"``, ``"scheduler"``: state dicts (the model's without any DDP wrapper);
- ``"iteration"``: training steps completed; ``"iterations"``: steps planned;
- ``"rng"``: ``{"torch": global CPU RNG state, "stream": the data stream's generator state}``;
- ``"train_seconds"``, ``"last_loss"``;
- ``"model_name"``, ``"model_kwargs"``, ``"recipe"``, ``"recipe_kwargs"``: what :func:`build_model`
  needs to rebuild the architecture (the surgery recipe is applied before the weights are loaded);
- ``"config"``: the resolved run settings, for the record;
- ``"tested_buffers"`` (optional): the BatchNorm statistics the run was tested with, when they were
  re-estimated after training (:func:`experiments.batchnorm.recalibrate_batchnorm`); training resumes
  from ``"model"``, testing and inference use these (:func:`model_from_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._io import atomic_write

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "snapshot_path",
    "build_model",
    "model_from_checkpoint",
    "recipe_names",
]

FORMAT = 1
_REQUIRED = ("model", "iteration", "model_name", "model_kwargs")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` to a temporary sibling, then ``os.replace`` it over ``path``.

    An interrupted save leaves the previous checkpoint intact.
    """
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a dynfilter training checkpoint (the message names it and what is missing).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # The checkpoint holds plain containers, tensors and numbers only, so the safe loader reads it.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a dynfilter training checkpoint: it lacks {missing}")
    return state


def snapshot_path(checkpoint: str | os.PathLike, iteration: int) -> Path:
    """Where the copy of ``checkpoint`` taken at step ``iteration`` lives: ``<stem>-at-<iteration>.pt`` beside it.

    >>> snapshot_path("runs/a/checkpoint.pt", 200).name
    'checkpoint-at-200.pt'
    """
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-at-{int(iteration)}{path.suffix}")


def recipe_names() -> list[str]:
    """The surgery recipes a config or checkpoint may name (``dynfilter.surgery.recipes``)."""
    from dynfilter.surgery import recipes

    return recipes.available()


def build_model(
    name: str,
    model_kwargs: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    recipe_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build backbone ``name`` and, if ``recipe`` is given, rewrite it with that surgery recipe.

    Args:
        name: a name from ``backbones.available()``.
        model_kwargs: arguments of the backbone.
        recipe: a name from :func:`recipe_names`, e.g. ``"dncnn_dconv"``; ``None`` for the baseline.
        recipe_kwargs: keyword arguments of the recipe (e.g. block arguments passed through).
        seed: seeds PyTorch's global RNG first, so the initial weights (backbone and inserted blocks)
            depend on it alone.

    >>> build_model("dncnn", {"depth": 3, "channels": 4}, seed=0).depth
    3
    """
    import backbones

    if seed is not None:
        torch.manual_seed(seed)
    model = backbones.build(name, **dict(model_kwargs or {}))
    if recipe is None:
        if recipe_kwargs:
            raise ValueError(f"recipe_kwargs {dict(recipe_kwargs)} were given without a recipe")
        return model
    from dynfilter.surgery import recipes

    return recipes.get(recipe)(model, **dict(recipe_kwargs or {})).apply()


def model_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", tested: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a training checkpoint, in eval mode; returns ``(model, checkpoint)``.

    The architecture comes from the checkpoint's ``model_name``/``model_kwargs`` and its surgery
    ``recipe``; the weights are then loaded strictly. With ``tested`` (the default) the BatchNorm
    statistics are those the run was tested with (``"tested_buffers"``, when re-estimated), so that
    evaluating the model reproduces the run's results row; ``tested=False`` gives the weights as trained.
    """
    state = load_checkpoint(path, map_location)
    model = build_model(state["model_name"], state["model_kwargs"], state.get("recipe"), state.get("recipe_kwargs"))
    weights = dict(state["model"])
    if tested:
        weights.update(state.get("tested_buffers") or {})
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path} do not fit the model they name ({state['model_name']}): {exc}") from exc
    return model.to(map_location).eval(), state

"""Training checkpoints: written atomically, and complete enough to rebuild the model they hold.

A checkpoint is a ``torch.save`` dict with

- ``"model"``, ``"optimizer"``, ``"scheduler"``: state dicts (the model's without any DDP wrapper);
- ``"scaler"`` (fp16 training only): the gradient scaler's state (:class:`experiments.train_step.TrainStep`);
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
import zipfile
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
    "check_fits",
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


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` with the safe loader (checkpoints hold containers, tensors and numbers only).

    Errors say what the file is and what was expected: an empty file, one cut short, one that is not
    a ``torch.save`` archive at all.
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"cannot read checkpoint {path}: the file is empty (0 bytes; was its write interrupted?)")
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read checkpoint {path}: it is a torch.save archive cut short ({size:,} bytes; "
                         f"was its write or copy interrupted?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        if not head.startswith(b"PK"):
            raise ValueError(f"cannot read checkpoint {path}: it is not a file written by torch.save "
                             f"({size:,} bytes starting with {head!r})") from exc
        raise ValueError(f"cannot read checkpoint {path}: a damaged or foreign torch.save file ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a dynfilter training checkpoint (the message names it and what is missing).
    """
    path = Path(path)
    state = _torch_load(path, map_location)
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


def _read_weights(path: Path, map_location: str | torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, state_dict)`` of a training checkpoint, a ``{"model": state_dict}`` dict or a bare state dict."""
    state = _torch_load(path, map_location)
    meta: dict[str, Any] = {}
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        meta, state = state, state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a published ADFNet_Real checkpoint: {epoch, state_dict, optimizer}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a state_dict nor a dict with a 'model' state_dict")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return meta, state


def _published_adfnet_keys(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` under this package's names when they are a published ADFNet checkpoint for ``model``.

    The official code's key names (``backbones.adfnet.convert_official_state_dict``) are used only when
    ``weights`` do not fit ``model`` as they are and fit it exactly once renamed; anything else is
    returned unchanged, for :func:`check_fits` to report.
    """
    from backbones.adfnet import ADFNet, convert_official_state_dict

    expected = model.state_dict()
    if not isinstance(model, ADFNet) or set(weights) == set(expected):
        return weights
    renamed = convert_official_state_dict(weights)
    return renamed if set(renamed) == set(expected) else weights


def check_fits(expected: Mapping[str, Any], given: Mapping[str, Any], what: str) -> None:
    """Raise one readable ``ValueError`` naming a few missing, unexpected and mis-shaped keys.

    Call it before ``load_state_dict``: a strict load that fails has already copied the keys that fit.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = [f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("keys with other shapes, checkpoint vs model", shapes)) if items]
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")


def model_from_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    tested: bool = True,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint holds, in eval mode; returns ``(model, checkpoint)``.

    The one loader of the project (``dynfilter eval``, ``denoise`` and the BatchNorm re-test use it). It
    reads a training checkpoint (:func:`save_checkpoint`), a ``{"model": state_dict}`` dict or a bare
    state dict; a ``module.`` prefix (DataParallel) is removed. A bare state dict for an ADFNet may use
    the published code's key names (ADFNet_RGB / ADFNet_Gray checkpoints, or ADFNet_Real's
    ``{"state_dict": …}``); they are renamed. The architecture is the checkpoint's
    ``model_name``/``model_kwargs`` with its surgery ``recipe`` applied, or ``model_name``/``model_kwargs``
    given here (needed for a bare state dict; naming another model than the checkpoint's drops its
    recipe). Weights load strictly; a mismatch names the keys. With ``tested`` (the default) the
    BatchNorm statistics are those the run was tested with (``"tested_buffers"``, when re-estimated),
    so that evaluating the model reproduces the run's results row; ``tested=False`` gives the weights as
    trained.

    Returns:
        (model, checkpoint): the checkpoint's dict (``{"model": …}`` for a bare state dict) with
        ``model_name``, ``model_kwargs`` and ``recipe`` set to what was built.
    """
    path = Path(path)
    meta, weights = _read_weights(path, map_location)
    recipe = meta.get("recipe")
    if model_name is None:
        model_name = meta.get("model_name")
        if model_name is None:
            raise ValueError(f"{path} does not record its model: pass --model NAME (and --kwargs if needed)")
        if model_kwargs is None:
            model_kwargs = meta.get("model_kwargs")
    elif model_name != meta.get("model_name", model_name):
        recipe = None  # another architecture was named; the checkpoint's surgery does not apply
    elif model_kwargs is None:
        model_kwargs = meta.get("model_kwargs")
    model_kwargs = dict(model_kwargs or {})
    model = build_model(model_name, model_kwargs, recipe, meta.get("recipe_kwargs") if recipe else None)
    weights = dict(weights)
    if not meta:
        weights = _published_adfnet_keys(model, weights)
    if tested:
        weights.update(meta.get("tested_buffers") or {})
    check_fits(model.state_dict(), weights, f"the weights in {path} do not fit {model_name}({model_kwargs})")
    model.load_state_dict(weights, strict=True)
    info = {**meta, "model": weights, "model_name": model_name, "model_kwargs": model_kwargs, "recipe": recipe}
    return model.to(map_location).eval(), info

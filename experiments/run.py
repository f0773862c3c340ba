"""One experiment run: settings → trained model → test metrics, cost and versions, as one result row.

A run's *settings* are a plain dict (what a sweep hashes into the run id, and what a checkpoint keeps)::

    {"backbone": "dncnn", "model": {...}, "variant": "dconv", "recipe": "dncnn_dconv", "recipe_kwargs": {},
     "seed": 0, "data": {...}, "noise": {"sigma": 50}, "train": {...}, "test": {...}}

with the ``data``/``noise``/``train``/``test`` sections of :mod:`experiments.config`. Data flows one way:
the data module's images → the noise → the model → the protocol's metrics → the row.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .checkpoint import build_model
from .train import PatchSampler, TrainResult, TrainSettings, fit, get_loss, loss_name

__all__ = [
    "canonical",
    "settings_hash",
    "resolve_device",
    "model_kwargs",
    "training_set",
    "train_model",
    "evaluate_model",
    "measure_model",
    "versions",
    "execute",
]


# Settings that do not change what a run computes; left out of the hash so they can differ per machine.
_UNHASHED: tuple[str, ...] = ("data.data_root", "train.checkpoint_every", "train.device", "train.threads")


def canonical(value: Any) -> Any:
    """JSON-ready, with integral floats as ints so that ``50`` and ``50.0`` hash alike."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def settings_hash(settings: Mapping[str, Any], drop: Iterable[str] = ()) -> str:
    """An 8-hex-digit hash of ``settings`` without the unhashed keys and the dotted paths in ``drop``."""
    s = canonical(copy.deepcopy(dict(settings)))
    for path in (*_UNHASHED, *drop):
        *parents, last = path.split(".")
        node = s
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(s, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def resolve_device(name: str | None) -> torch.device:
    """``"auto"`` (or ``None``) is the rank's CUDA device when CUDA is available, else the CPU."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc


def model_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone arguments, with ``in_channels`` taken from ``data.channels`` (they must agree)."""
    kwargs = dict(settings.get("model") or {})
    channels = settings["data"].get("channels", 3)
    if kwargs.setdefault("in_channels", channels) != channels:
        raise ValueError(
            f"model in_channels={kwargs['in_channels']} but data.channels={channels}; the images are converted "
            f"to data.channels, so set the two alike"
        )
    return kwargs


def training_set(data: Mapping[str, Any]) -> Any:
    """The training images: a set name or folder (clean; noise is synthesised) or ``{noisy:, clean:}`` folders."""
    from .data import PairedImageFolder, open_dataset

    train = data["train"]
    if isinstance(train, Mapping):
        if set(train) != {"noisy", "clean"}:
            raise ValueError(f"data.train as a mapping needs exactly 'noisy' and 'clean' folders, got {sorted(train)}")
        return PairedImageFolder(train["noisy"], train["clean"], channels=data.get("channels"))
    return open_dataset(str(train), data.get("data_root"), channels=data.get("channels"))


def _noise(settings: Mapping[str, Any], paired: bool) -> Any:
    from .noise import GaussianNoise

    return None if paired else GaussianNoise(settings["noise"]["sigma"])


def _check_resumable(settings: Mapping[str, Any], checkpoint: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint trained with other settings (a longer budget is fine)."""
    from .checkpoint import load_checkpoint

    stored = load_checkpoint(checkpoint).get("config")
    if stored is None:
        return
    drop = ("train.iterations",)
    if settings_hash(stored, drop) != settings_hash(settings, drop):
        changed = sorted(k for k in set(stored) | set(settings) if canonical(stored.get(k)) != canonical(settings.get(k)))
        raise ValueError(
            f"{checkpoint} was trained with different settings (they differ in {changed}); "
            f"resume with the same settings or train into another folder"
        )


def train_model(
    settings: Mapping[str, Any],
    checkpoint: str | os.PathLike | None,
    *,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    meta: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Build the run's model from its seed and recipe, then train it (resuming from ``checkpoint``).

    Returns:
        (model, result): the trained model in eval mode on ``device`` and the :class:`TrainResult`.
    """
    train = settings["train"]
    kwargs = model_kwargs(settings)
    if checkpoint is not None and Path(checkpoint).is_file():
        _check_resumable(settings, checkpoint)
    model = build_model(settings["backbone"], kwargs, settings.get("recipe"), settings.get("recipe_kwargs"), seed=settings["seed"])
    dataset = training_set(settings["data"])
    sampler = PatchSampler(dataset, train["patch_size"], train["batch_size"], augment=train["augment"])
    optim = TrainSettings(
        iterations=int(train["iterations"]),
        lr=float(train["lr"]),
        betas=tuple(train["betas"]),
        eps=float(train["eps"]),
        weight_decay=float(train["weight_decay"]),
        lr_step=int(train["lr_step"]),
        lr_gamma=float(train["lr_gamma"]),
        checkpoint_every=int(train["checkpoint_every"]),
    )
    record = {
        **dict(meta or {}),
        "model_name": settings["backbone"],
        "model_kwargs": kwargs,
        "recipe": settings.get("recipe"),
        "recipe_kwargs": dict(settings.get("recipe_kwargs") or {}),
        "config": json.loads(json.dumps(settings)),
    }
    result = fit(
        model,
        sampler,
        get_loss(train["loss"], paired=sampler.paired),
        optim,
        seed=int(settings["seed"]),
        noise=_noise(settings, sampler.paired),
        checkpoint=checkpoint,
        meta=record,
        device=resolve_device(device if device is not None else train.get("device")),
        progress=progress,
    )
    return model, result


def evaluate_model(
    model: nn.Module, settings: Mapping[str, Any], per_image: str | os.PathLike | None = None
) -> dict[str, Any]:
    """PSNR/SSIM on every test set of ``settings["data"]["test"]`` under the published protocol.

    Returns ``{"psnr_<set>": …, "ssim_<set>": …, "images_<set>": …, "test_<field>": …}``, the
    protocol fields prefixed ``test_``. ``per_image`` (a CSV path) keeps the per-image rows.
    """
    from .data import open_dataset
    from .protocol import TestProtocol, evaluate, summarize

    data, test = settings["data"], settings["test"]
    names = [data["test"]] if isinstance(data["test"], str) else list(data["test"])
    protocol = TestProtocol(sigma=settings["noise"]["sigma"], seed=int(test["seed"]), seed_mode=test["seed_mode"])
    rows: list[dict[str, Any]] = []
    for name in names:
        dataset = open_dataset(name, data.get("data_root"), channels=data.get("channels"))
        limit = int(test["max_images"]) if test.get("max_images") else None
        rows += evaluate(model, dataset, protocol, limit=limit)
    out: dict[str, Any] = {}
    for summary in summarize(rows):
        name = summary.pop("set")
        out[f"psnr_{name}"] = summary.pop("psnr")
        out[f"ssim_{name}"] = summary.pop("ssim")
        out[f"images_{name}"] = summary.pop("images")
        out.update({f"test_{k}": v for k, v in summary.items()})
    if per_image is not None:
        import pandas as pd

        from ._io import atomic_write

        atomic_write(per_image, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    return out


def measure_model(model: nn.Module, measure: Mapping[str, Any], in_channels: int) -> dict[str, Any]:
    """Parameters and MACs (``dynfilter.complexity.profile``) and the median latency of one forward pass."""
    from dynfilter.complexity import measure_latency, profile

    h, w = (int(s) for s in measure["size"])
    size = (1, in_channels, h, w)
    cost = profile(model, size)
    device = next(model.parameters()).device
    x = torch.rand(size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(inp)

    model.eval()
    latency = measure_latency(
        forward, x, runs=int(measure["latency_repeats"]), warmup=int(measure["latency_warmup"]),
        threads=measure.get("latency_threads"),
    )
    return {
        "params": cost.params,
        "macs": cost.macs,
        "cost_input": "x".join(str(s) for s in size),
        "latency_ms": latency.median_ms,
        "latency_threads": latency.threads,
        "latency_device": latency.device,
    }


def versions() -> dict[str, str]:
    """Versions and host recorded with every row."""
    import torchvision

    import dynfilter

    return {
        "dynfilter_version": dynfilter.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
    }


def execute(
    settings: Mapping[str, Any],
    measure: Mapping[str, Any],
    run_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, then evaluate and measure it; returns its result row.

    ``run_dir`` receives ``checkpoint.pt`` (the resume point, and what ``dynfilter denoise`` reads)
    and ``images.csv`` (per-image test rows).
    """
    run_dir = Path(run_dir)
    model, result = train_model(settings, run_dir / "checkpoint.pt", progress=progress, meta=meta)
    tic = time.perf_counter()
    metrics = evaluate_model(model, settings, run_dir / "images.csv")
    eval_seconds = time.perf_counter() - tic
    cost = measure_model(model, measure, model_kwargs(settings)["in_channels"])
    train = settings["train"]
    return {
        "backbone": settings["backbone"],
        "variant": settings.get("variant", "baseline"),
        "recipe": settings.get("recipe") or "",
        "recipe_kwargs": json.dumps(settings.get("recipe_kwargs") or {}, sort_keys=True),
        "model_kwargs": json.dumps(model_kwargs(settings), sort_keys=True),
        "seed": settings["seed"],
        "train_data": json.dumps(settings["data"]["train"]) if isinstance(settings["data"]["train"], Mapping)
        else settings["data"]["train"],
        "sigma": settings["noise"]["sigma"],
        "iterations": result.iterations,
        "batch_size": train["batch_size"],
        "patch_size": train["patch_size"],
        "lr": train["lr"],
        "lr_step": train["lr_step"],
        "lr_gamma": train["lr_gamma"],
        "loss": loss_name(train["loss"], paired=isinstance(settings["data"]["train"], Mapping)),
        "final_loss": result.final_loss,
        "train_seconds": result.train_seconds,
        "eval_seconds": eval_seconds,
        "train_threads": torch.get_num_threads(),
        **metrics,
        **cost,
        **versions(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

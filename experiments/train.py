"""Training denoisers: random patches, the 8 dihedral transforms, noise drawn on the fly, Adam + StepLR.

The trainer receives everything as arguments (deepinv ``Trainer`` style): the model, a
:class:`PatchSampler` over the training images, the noise model (or none, for paired real-noise data)
and a loss. Defaults follow the published ADFNet colour training (spec §8a): Adam with lr 1e-4,
β = (0.9, 0.999), ε = 1e-8, the lr halved in steps, L2 loss; Charbonnier (ε = 1e-3) for paired data (§8c).

Randomness. The seed fixes the initial weights (:func:`experiments.checkpoint.build_model` seeds the
global RNG) and one CPU ``torch.Generator`` that drives everything else in a fixed order each step:
image indices, crop positions, dihedral transforms, then the noise. Two runs with the same seed
give bit-identical weights on CPU, and a run stopped and resumed from its checkpoint gives the same
weights as one that never stopped, because the checkpoint carries the generator state too.

Several processes (``torchrun``, DDP). Every rank draws the same *global* batch from the stream and
keeps its own slice, so a DDP run sees exactly the batches of a one-process run with the same global
batch size and, with a mean-reduced loss, follows the same gradients up to the order of float sums.
BatchNorm statistics are per rank (as in any DDP run without SyncBatchNorm). Only rank 0 writes.

Run as ``torchrun --nproc_per_node 2 -m experiments.train ARGS`` (the arguments of ``dynfilter train``).
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import ddp
from .checkpoint import check_fits, load_checkpoint, save_checkpoint, snapshot_path
from .settings import Train
from .train_step import TrainStep, memory_format

__all__ = [
    "LOSSES",
    "l2_loss",
    "l2_sum_loss",
    "charbonnier_loss",
    "loss_name",
    "get_loss",
    "dihedral",
    "PatchSampler",
    "TrainResult",
    "fit",
    "carry_optimizer_state",
    "STREAM_SEED_OFFSET",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The data stream's generator is seeded with seed + this, so it does not replay the init draws.
STREAM_SEED_OFFSET = 1_000_003


def l2_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels (``nn.MSELoss()``).

    The published code uses a sum divided by ``2·B`` (:func:`l2_sum_loss`); Adam is invariant to a
    constant scale of the loss up to ``ε``, so the two train alike, and the mean keeps the printed
    loss comparable across patch and batch sizes.
    """
    return torch.mean((output - target) ** 2)


def l2_sum_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5·‖output − target‖²`` summed over pixels and averaged over the batch: the published scale (§8a)."""
    return torch.sum((output - target) ** 2) / (2 * output.shape[0])


def charbonnier_loss(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``sqrt((output − target)² + ε²)``, ``ε = 1e-3`` (the real-noise training, §8c)."""
    return torch.mean(torch.sqrt((output - target) ** 2 + eps * eps))


LOSSES: dict[str, Loss] = {"l2": l2_loss, "l2_sum": l2_sum_loss, "charbonnier": charbonnier_loss}


def loss_name(name: str, paired: bool = False) -> str:
    """``name`` with ``"auto"`` resolved: L2 for synthetic noise, Charbonnier for paired data."""
    if name == "auto":
        name = "charbonnier" if paired else "l2"
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: auto, {', '.join(LOSSES)}")
    return name


def get_loss(name: str, paired: bool = False) -> Loss:
    """The loss called ``name`` (``"auto"`` as in :func:`loss_name`)."""
    return LOSSES[loss_name(name, paired)]


def dihedral(x: torch.Tensor, transform: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two dimensions.

    ``transform`` in 0–7: rotate by ``90°·(transform mod 4)``, then mirror left-right if ``transform ≥ 4``.

    >>> x = torch.arange(4).reshape(1, 2, 2)
    >>> len({tuple(dihedral(x, t).flatten().tolist()) for t in range(8)})
    8
    """
    if not 0 <= transform < 8:
        raise ValueError(f"transform must be in 0..7, got {transform}")
    x = torch.rot90(x, transform % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if transform >= 4 else x


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    # Images are decoded from 8-bit files, so this round trip is exact and keeps memory 4x lower.
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


class PatchSampler:
    """Random training patches: uniform image, uniform crop position, uniform dihedral transform.

    Each item of ``images`` is one image ``Tensor[C, H, W]`` in ``[0, 1]`` or a tuple of aligned
    images (``(noisy, clean)`` for paired data); a tuple is cropped and transformed as one. Images
    are kept in memory as 8-bit.

    Args:
        images: the training images (a dataset from :mod:`experiments.data` works).
        patch_size (int): side of the square crops.
        batch_size (int): patches per batch.
        augment (bool): apply one of the 8 dihedral transforms to each patch.

    Raises:
        ValueError: an image smaller than ``patch_size`` (the message names it), or no images.

    >>> s = PatchSampler([torch.rand(3, 20, 30)], patch_size=8, batch_size=2)
    >>> [b.shape for b in s(torch.Generator().manual_seed(0))]
    [torch.Size([2, 3, 8, 8])]
    """

    def __init__(self, images: Sequence[Any], patch_size: int, batch_size: int, augment: bool = True) -> None:
        if patch_size < 1 or batch_size < 1:
            raise ValueError(f"patch_size and batch_size must be positive, got {patch_size} and {batch_size}")
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        names = getattr(images, "names", None)
        self.images: list[tuple[torch.Tensor, ...]] = []
        for i in range(len(images)):
            item = images[i]
            group = tuple(item) if isinstance(item, (tuple, list)) else (item,)
            if any(t.shape[-2:] != group[0].shape[-2:] for t in group):
                raise ValueError(f"training item {i} holds images of different sizes {[tuple(t.shape) for t in group]}")
            h, w = group[0].shape[-2:]
            if h < patch_size or w < patch_size:
                label = names[i] if names is not None else f"#{i}"
                raise ValueError(
                    f"training image {label} is {h}×{w} (H×W), smaller than patch_size {patch_size}; "
                    f"lower train.patch_size or leave the image out"
                )
            self.images.append(tuple(_to_uint8(t) for t in group))
        if not self.images:
            raise ValueError("no training images")
        self.paired = len(self.images[0]) > 1

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One batch: a tuple with one ``Tensor[B, C, p, p]`` float32 in ``[0, 1]`` per image of an item."""
        p = self.patch_size
        crops: list[list[torch.Tensor]] = [[] for _ in self.images[0]]
        indices = torch.randint(len(self.images), (self.batch_size,), generator=generator).tolist()
        for index in indices:
            group = self.images[index]
            h, w = group[0].shape[-2:]
            top = int(torch.randint(h - p + 1, (1,), generator=generator))
            left = int(torch.randint(w - p + 1, (1,), generator=generator))
            transform = int(torch.randint(8, (1,), generator=generator)) if self.augment else 0
            for out, image in zip(crops, group):
                out.append(dihedral(image[:, top : top + p, left : left + p], transform))
        return tuple(torch.stack(c).float().div_(255.0) for c in crops)


@dataclass
class TrainResult:
    """What :func:`fit` reports: steps done, seconds spent (over all resumptions), the last loss.

    ``resumed_from`` is the step the run resumed at (0 for a fresh run); ``losses`` are the losses of the
    steps run in this call and ``spent_seconds`` their time (``train_seconds`` also counts the steps of
    the checkpoint it resumed from, which may come from another run).

    >>> TrainResult(iterations=5, train_seconds=1.5, final_loss=0.01).resumed_from
    0
    """

    iterations: int
    train_seconds: float
    final_loss: float
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)
    spent_seconds: float = 0.0


def _show_progress(progress: bool | None, rank: int) -> bool:
    if rank != 0:
        return False
    return sys.stderr.isatty() if progress is None else bool(progress)


def fit(
    model: nn.Module,
    sampler: PatchSampler,
    loss: Loss,
    settings: Train,
    *,
    seed: int,
    noise: Callable[..., torch.Tensor] | None = None,
    checkpoint: str | os.PathLike | None = None,
    meta: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    snapshots: Iterable[int] = (),
) -> TrainResult:
    """Train ``model`` in place for ``settings.iterations`` steps, resuming from ``checkpoint`` if present.

    Each step draws a global batch from ``sampler``, adds ``noise`` drawn from the stream generator
    (``noise(clean, generator=g)``, e.g. :class:`experiments.noise.GaussianNoise`) unless the sampler
    yields ``(noisy, clean)`` pairs, keeps this rank's slice, and takes one Adam step on ``loss``.
    The model ends in eval mode.

    Args:
        model: the network, ``Tensor[B, C, H, W] → Tensor[B, C, H, W]``.
        sampler: training patches.
        loss: ``loss(output, clean) → scalar``.
        settings: the training settings; :func:`fit` reads the optimiser, schedule, iterations,
            checkpoint frequency and how each step runs (``precision``, ``channels_last``, ``compile``:
            :class:`~experiments.train_step.TrainStep`); the sampler already holds the patch and batch sizes.
        seed: seeds the data stream (the model is assumed already initialised from it).
        noise: the synthetic noise; ``None`` for paired samplers.
        checkpoint: file to resume from and write to (atomically, every ``checkpoint_every`` steps and
            at the end); ``None`` trains without checkpoints.
        meta: extra entries stored in the checkpoint (``model_name``, ``model_kwargs``, ``recipe``, …).
        device: where the model and batches live; the stream generator stays on the CPU.
        progress: show a tqdm bar with the loss and it/s; ``None`` shows it when stderr is a terminal.
        snapshots: steps at which to keep a copy of the checkpoint as well, at
            :func:`~experiments.checkpoint.snapshot_path` (the branch points of warm-started runs).

    Returns:
        TrainResult: with ``iterations`` equal to ``settings.iterations``.
    """
    from tqdm.auto import tqdm

    if sampler.paired == (noise is not None):
        raise ValueError("give noise for clean-image samplers and no noise for paired (noisy, clean) samplers")
    rank, world = ddp.world()
    if sampler.batch_size % world:
        raise ValueError(f"the global batch size {sampler.batch_size} must be divisible by the {world} processes")
    local = sampler.batch_size // world
    device = torch.device(device)
    model.to(device, memory_format=memory_format(settings.channels_last))
    stream = torch.Generator().manual_seed(seed + STREAM_SEED_OFFSET)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    start, seconds, spent, last_loss = 0, 0.0, 0.0, math.nan
    scaler_state = None
    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        if int(state["iteration"]) > settings.iterations:
            raise ValueError(
                f"checkpoint {checkpoint} has done {state['iteration']} iterations, more than the "
                f"{settings.iterations} asked for; use a new run folder"
            )
        check_fits(model.state_dict(), state["model"], f"the weights in {checkpoint} do not fit this model")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler_state = state.get("scaler")
        stream.set_state(state["rng"]["stream"])
        torch.set_rng_state(state["rng"]["torch"])
        start, seconds, last_loss = int(state["iteration"]), float(state["train_seconds"]), float(state["last_loss"])
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    train_step = TrainStep(net, optimizer, loss, precision=settings.precision, channels_last=settings.channels_last,
                           compile=settings.compile, device=device)
    train_step.load_state_dict(scaler_state)
    keep = {int(step) for step in snapshots}

    def save(iteration: int, path: str | os.PathLike | None = checkpoint) -> None:
        if path is None or rank != 0:
            return
        save_checkpoint(path, {
            **dict(meta or {}),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **({"scaler": train_step.state_dict()} if train_step.scaler is not None else {}),
            "iteration": iteration,
            "iterations": settings.iterations,
            "rng": {"torch": torch.get_rng_state(), "stream": stream.get_state()},
            "train_seconds": seconds,
            "last_loss": last_loss,
        })

    losses: list[float] = []
    net.train()
    bar = tqdm(total=settings.iterations, initial=start, disable=not _show_progress(progress, rank),
               unit="it", dynamic_ncols=True, desc=str((meta or {}).get("run_id", "train")))
    for iteration in range(start + 1, settings.iterations + 1):
        tic = time.perf_counter()
        batch = sampler(stream)
        if noise is not None:
            clean = batch[0]
            noisy = noise(clean, generator=stream)
        else:
            noisy, clean = batch
        rows = slice(rank * local, (rank + 1) * local)
        value = train_step(noisy[rows], clean[rows])
        with warnings.catch_warnings():
            # fp16: the scaler skips the steps whose gradients overflowed; the schedule still counts them.
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`"))
            scheduler.step()
        last_loss = float(value.detach())
        if not math.isfinite(last_loss):
            run = (meta or {}).get("run_id", "the run")
            raise ValueError(f"the training loss became {last_loss} at iteration {iteration} of {run}; lower train.lr")
        losses.append(last_loss)
        step_seconds = time.perf_counter() - tic
        seconds += step_seconds
        spent += step_seconds
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{scheduler.get_last_lr()[0]:.3g}", refresh=False)
        if iteration % settings.checkpoint_every == 0 or iteration == settings.iterations:
            save(iteration)
        if iteration in keep and checkpoint is not None:
            save(iteration, snapshot_path(checkpoint, iteration))
    bar.close()
    if start == settings.iterations and checkpoint is not None and rank == 0 and not Path(checkpoint).is_file():
        save(start)
    if world > 1:
        torch.distributed.barrier()
    model.to(memory_format=torch.contiguous_format)  # testing and inference get the usual layout
    model.eval()
    return TrainResult(settings.iterations, seconds, last_loss, start, losses, spent)


def carry_optimizer_state(
    state: Mapping[str, Any], old: nn.Module, new: nn.Module, key_map: Mapping[str, str]
) -> dict[str, Any]:
    """An optimizer ``state_dict`` for ``new`` that continues ``state`` (saved for ``old``) where they share weights.

    Optimizer states are keyed by parameter position; ``key_map`` (``{name in new: name in old}``, e.g.
    :meth:`dynfilter.surgery.plan.Plan.key_map`) says which parameter of ``new`` is which of ``old``. A
    carried parameter keeps its state (Adam's moments and step count); a new one has none, so the
    optimizer starts it fresh. The single parameter group's settings are kept.

    >>> old = nn.Linear(2, 2); new = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> opt = torch.optim.Adam(old.parameters()); old(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> carried = carry_optimizer_state(opt.state_dict(), old, new, {"0.weight": "weight", "0.bias": "bias"})
    >>> sorted(carried["state"]), carried["param_groups"][0]["params"]
    ([0, 1], [0, 1, 2, 3])
    """
    groups = state["param_groups"]
    if len(groups) != 1:
        raise ValueError(f"can only carry a single-group optimizer state, this one has {len(groups)} groups")
    old_index = {name: i for i, (name, _) in enumerate(old.named_parameters())}
    new_names = [name for name, _ in new.named_parameters()]
    carried = {}
    for i, name in enumerate(new_names):
        j = old_index.get(key_map.get(name, ""))
        if j is not None and j in state["state"]:
            carried[i] = state["state"][j]
    group = {**groups[0], "params": list(range(len(new_names)))}
    return {"state": carried, "param_groups": [group]}


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

"""Re-estimate the BatchNorm statistics of trained models before testing them.

The DnCNN baseline keeps KAIR's BatchNorm momentum of 0.9, so its running statistics are mostly those
of the last training batch, and a test PSNR can move by a dB with that one batch. Re-estimating the
statistics as an average over many batches (:func:`recalibrate_batchnorm`) removes that noise. Runs do
it before testing by default (``test.recalibrate_bn``, :func:`recalibrate_for_test`, with
``test.bn_batches`` noisy training batches drawn from their own seed, alike for both arms of a pair);
the command below does it afterwards for every run of an older results folder and writes both PSNRs
side by side:

    dynfilter batchnorm results/budget --runs 'dncnn-it6000-*' --data-root /path/to/data

It writes ``<results>/batchnorm.csv``: ``id``, then ``psnr_<set>`` (as trained) and
``psnr_<set>_recalibrated`` per test set. Models without BatchNorm are skipped.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from .settings import RunSettings

__all__ = ["BN_SEED_OFFSET", "recalibrate_batchnorm", "noisy_batches", "recalibrate_for_test", "recalibrate_results"]

# The BatchNorm batches are drawn from seed + this, apart from the training stream (train.STREAM_SEED_OFFSET).
BN_SEED_OFFSET = 2_000_029


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every BatchNorm's running mean and variance to their average over ``batches``.

    Each batch (``Tensor[B, C, H, W]``, the model's input) goes through the model in training mode
    with no gradient; with ``momentum=None`` BatchNorm then keeps the plain average of the batch
    statistics (unbiased variances), as if every batch counted equally. Momentum and training mode
    are restored afterwards; no other parameter changes. If there is no batch, or a batch fails, the
    statistics are those the model had before.

    Returns:
        int: the number of BatchNorm layers re-estimated (0: nothing to do, no batch is run).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    >>> recalibrate_batchnorm(net, [torch.randn(4, 1, 5, 5) for _ in range(3)])
    1
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    batches = iter(batches)
    first = next(batches, None)
    if first is None:  # before anything is reset: the statistics stay as they were
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    saved = [(m, m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for batch in itertools.chain([first], batches):
            model(batch)
    except BaseException:
        for m, _, buffers in saved:  # a failed re-estimation leaves the model as it was
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
        raise
    finally:
        for m, momentum, _ in saved:
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def noisy_batches(settings: RunSettings, count: int, seed: int) -> Iterator[torch.Tensor]:
    """``count`` model inputs drawn as in the run's training (training set, patch and batch size, noise).

    Paired training data gives its noisy images; synthetic noise is drawn from the same generator.
    """
    from .run import training_noise, training_set
    from .train import PatchSampler

    sampler = PatchSampler(training_set(settings.data), settings.train.patch_size, settings.train.batch_size)
    noise = training_noise(settings, sampler.paired)
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(int(count)):
        batch = sampler(generator)
        yield batch[0] if noise is None else noise(batch[0], generator=generator)


def recalibrate_for_test(model: nn.Module, settings: RunSettings) -> int:
    """Re-estimate ``model``'s BatchNorm statistics over ``settings.test.bn_batches`` training batches.

    The batches come from :func:`noisy_batches` seeded with ``seed + BN_SEED_OFFSET``: the same for the
    baseline and the enhanced run of a seed. Returns the number of BatchNorm layers re-estimated (0, and
    nothing drawn, for a model without BatchNorm).
    """
    if not has_batchnorm(model):
        return 0
    device = next(model.parameters()).device
    batches = (b.to(device) for b in noisy_batches(settings, settings.test.bn_batches, settings.seed + BN_SEED_OFFSET))
    return recalibrate_batchnorm(model, batches)


def recalibrate_results(
    results: str | os.PathLike,
    runs: str = "*",
    batches: int = 100,
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
) -> Path:
    """Re-test every finished run of ``results`` whose id matches ``runs`` (a glob) after
    :func:`recalibrate_batchnorm` over ``batches`` noisy training batches; write ``batchnorm.csv``.

    Each run's settings come from its checkpoint: the batches are drawn as in its training (training
    set, patch and batch size, σ), from ``seed``, and testing follows its recorded protocol
    (:func:`experiments.run.evaluate_model`). ``batchnorm.csv`` is itself a results table: each run's row
    with ``psnr_<set>``/``ssim_<set>`` re-tested, the values as trained kept as ``as_trained_psnr_<set>``
    (and ``as_trained_ssim_<set>``), so ``dynfilter plot RESULTS/batchnorm.csv --out DIR`` gives the
    re-tested gains with their intervals. Models without BatchNorm are left out. Returns the CSV's path.
    """
    import pandas as pd
    from tqdm import tqdm

    from ._io import atomic_write
    from .checkpoint import model_from_checkpoint
    from .results import read_results
    from .run import evaluate_model

    folder = Path(results)
    table = read_results(folder)
    chosen = table[[fnmatch.fnmatch(i, runs) for i in table["id"]]]
    if chosen.empty:
        raise ValueError(f"no finished run of {folder} matches {runs!r}")
    rows = []
    for _, row in tqdm(list(chosen.iterrows()), desc="recalibrating", unit="run"):
        model, state = model_from_checkpoint(folder / "runs" / row["id"] / "checkpoint.pt", tested=False)
        settings = RunSettings.from_dict(state["config"]).replace(**{"data.data_root": data_root})
        if recalibrate_batchnorm(model, noisy_batches(settings, batches, seed)) == 0:
            continue
        tested = evaluate_model(model.eval(), settings)
        metrics = {k: v for k, v in tested.items() if k.startswith(("psnr_", "ssim_"))}
        rows.append({**row.to_dict(), **{f"as_trained_{k}": row[k] for k in metrics if k in row}, **metrics,
                     "bn_recalibrated": True, "bn_batches": batches})
    path = folder / "batchnorm.csv"
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    return path


if __name__ == "__main__":  # the same as `dynfilter batchnorm ...`
    import sys

    from .cli import main

    sys.exit(main(["batchnorm", *sys.argv[1:]]))

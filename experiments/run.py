"""One experiment run: settings → trained model → test metrics, cost and versions, as one result row.

A run's settings are a :class:`~experiments.settings.RunSettings` (typed, frozen); its plain dict
(:meth:`~experiments.settings.RunSettings.to_dict`) is what a sweep hashes into the run id and what a
checkpoint keeps. Data flows one way: the data module's images → the noise → the model → the protocol's
metrics → the row.

Paired arms. A baseline run and an enhanced run of the same seed differ only in the surgery: the seed
fixes the global RNG before the backbone is built, so every layer the two share starts from the same
weights (the inserted blocks draw theirs afterwards), and it seeds the one data stream from which the
patches, their flips and the training noise are drawn in a fixed order, whatever the model. The BatchNorm
re-estimation before testing draws its batches from its own seed, alike for both arms, and the test noise
is fixed by the test protocol. So a gain measures the block, not the luck of the draw
(common random numbers); tests/experiments/test_paired.py checks each of these.

Protocols (:data:`PROTOCOLS`), how an enhanced run is trained:

- ``scratch``: from its initial weights, for ``train.iterations`` steps, as the baseline (the paper's);
- ``warm_start`` ("surgery on a trained model"): the baseline of the same seed is trained ``branch_at``
  steps (or its snapshot at that step is reused), the recipe is applied with ``preserve_output=True``
  so the model computes exactly what the baseline did, and training continues to ``train.iterations``
  with the baseline's optimizer state for the carried weights (fresh for the new ones), its learning-rate
  schedule and its data stream. The baseline run itself is the other arm: it continues on the same
  stream from the same state, so the two arms differ only in the inserted block.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .settings import Data, Measure, RunSettings, plain
from .train import PatchSampler, TrainResult, carry_optimizer_state, fit, get_loss, loss_name

__all__ = [
    "PROTOCOLS",
    "PAIR_FREE",
    "canonical",
    "settings_hash",
    "check_protocol",
    "differences",
    "baseline_settings",
    "resolve_device",
    "model_kwargs",
    "training_set",
    "training_noise",
    "train_model",
    "evaluate_model",
    "test_model",
    "measure_model",
    "cpu_threads",
    "versions",
    "execute",
]


# Settings that do not change what a run computes; left out of the hash so they can differ per machine.
# channels_last and compile change only the memory layout and the kernels (float sums in another order),
# as device and threads do.
_UNHASHED: tuple[str, ...] = (
    "data.data_root", "train.checkpoint_every", "train.device", "train.threads", "train.channels_last", "train.compile",
)
# Settings added after results existed: left out of the hash at their default, so earlier runs keep their ids
# and their checkpoints resume; any other value is hashed (bf16 or fp16 training computes something else).
_HASHED_UNLESS_DEFAULT: dict[str, Any] = {"train.precision": "fp32"}

PROTOCOLS: tuple[str, ...] = ("scratch", "warm_start")
#: The settings in which the two arms of a pair (baseline and enhanced, same seed) may differ.
PAIR_FREE: tuple[str, ...] = ("variant", "recipe", "recipe_kwargs", "protocol", "branch_at")


def canonical(value: Any) -> Any:
    """JSON-ready, with integral floats as ints so that ``50`` and ``50.0`` hash alike."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def settings_hash(settings: RunSettings | Mapping[str, Any], drop: Iterable[str] = ()) -> str:
    """An 8-hex-digit hash of ``settings`` without the unhashed keys and the dotted paths in ``drop``.

    ``train.precision`` counts only when it is not ``fp32``, so the runs made before it existed keep their ids.

    >>> base = RunSettings("dncnn")
    >>> settings_hash(base) == settings_hash(base.replace(**{"train.compile": True, "train.channels_last": True}))
    True
    >>> settings_hash(base) == settings_hash(base.replace(**{"train.precision": "bf16"}))
    False
    """
    s = canonical(plain(settings))
    at_default = [path for path, default in _HASHED_UNLESS_DEFAULT.items() if _get(s, path) in (None, default)]
    for path in (*_UNHASHED, *at_default, *drop):
        *parents, last = path.split(".")
        node = s
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(s, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def check_protocol(settings: RunSettings, where: str = "the run") -> None:
    """Raise ``ValueError`` unless ``protocol``/``branch_at`` make sense for these settings."""
    protocol, branch_at = settings.protocol, settings.branch_at
    if protocol not in PROTOCOLS:
        raise ValueError(f"{where}: unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol == "scratch":
        if branch_at is not None:
            raise ValueError(f"{where}: branch_at={branch_at!r} needs protocol: warm_start")
        return
    if not settings.recipe:
        raise ValueError(f"{where}: protocol warm_start needs a recipe (it is surgery on the trained baseline)")
    iterations = settings.train.iterations
    if isinstance(branch_at, bool) or not isinstance(branch_at, int) or not 0 < branch_at < iterations:
        raise ValueError(
            f"{where}: protocol warm_start needs branch_at, the baseline's steps before the surgery, an integer "
            f"with 0 < branch_at < train.iterations = {iterations}; got {branch_at!r}"
        )


def baseline_settings(settings: RunSettings, iterations: int | None = None) -> RunSettings:
    """The settings of the baseline paired with ``settings`` (no surgery), optionally for another budget.

    >>> s = baseline_settings(RunSettings("dncnn", variant="dconv", recipe="r", recipe_kwargs={"a": 1},
    ...                                   protocol="warm_start", branch_at=5), iterations=5)
    >>> s.recipe, s.protocol, s.branch_at, s.train.iterations
    (None, 'scratch', None, 5)
    """
    base = settings.replace(variant="baseline", recipe=None, recipe_kwargs={}, protocol="scratch", branch_at=None)
    return base if iterations is None else base.replace(**{"train.iterations": int(iterations)})


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


def model_kwargs(settings: RunSettings) -> dict[str, Any]:
    """The backbone arguments, with ``in_channels`` taken from ``data.channels`` (they must agree)."""
    kwargs = dict(settings.model)
    channels = settings.data.channels
    if kwargs.setdefault("in_channels", channels) != channels:
        raise ValueError(
            f"model in_channels={kwargs['in_channels']} but data.channels={channels}; the images are converted "
            f"to data.channels, so set the two alike"
        )
    return kwargs


def training_set(data: Data) -> Any:
    """The training images: a set name or folder (clean; noise is synthesised) or ``{noisy:, clean:}`` folders."""
    from .data import PairedImageFolder, open_dataset

    train = data.train
    if isinstance(train, Mapping):
        if set(train) != {"noisy", "clean"}:
            raise ValueError(f"data.train as a mapping needs exactly 'noisy' and 'clean' folders, got {sorted(train)}")
        return PairedImageFolder(train["noisy"], train["clean"], channels=data.channels)
    return open_dataset(str(train), data.data_root, channels=data.channels)


def training_noise(settings: RunSettings, paired: bool) -> Any:
    """The synthetic training noise of the run, or ``None`` for paired (noisy, clean) data."""
    from .noise import GaussianNoise

    return None if paired else GaussianNoise(settings.noise.sigma)


def _check_resumable(settings: RunSettings, checkpoint: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint trained with other settings (a longer budget is fine)."""
    stored = load_checkpoint(checkpoint).get("config")
    if stored is None:
        return
    drop = ("train.iterations", "variant")  # a longer budget continues; a variant's name is only a label
    if settings_hash(stored, drop) != settings_hash(settings, drop):
        changed = [k for k in differences(stored, settings.to_dict()) if k not in drop and k not in _UNHASHED]
        shown = ", ".join(f"{k} ({_get(stored, k)!r} there, {_get(settings.to_dict(), k)!r} now)" for k in changed[:6])
        raise ValueError(
            f"{checkpoint} was trained with different settings: {shown}; "
            f"resume with the same settings or train into another folder"
        )


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts (``50`` equals ``50.0``).

    >>> differences({"train": {"lr": 1e-3, "iterations": 5}, "seed": 0}, {"train": {"lr": 1e-4, "iterations": 5}, "seed": 0})
    ['train.lr']
    """
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += differences(x, y, f"{prefix}{key}.")
        elif canonical(x) != canonical(y):
            out.append(f"{prefix}{key}")
    return out


def _get(settings: Mapping[str, Any], path: str) -> Any:
    node: Any = settings
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _recipe_kwargs(settings: RunSettings) -> dict[str, Any]:
    """The recipe's arguments as applied: ``preserve_output=True`` added for a warm start."""
    kwargs = dict(settings.recipe_kwargs)
    if settings.protocol == "warm_start":
        kwargs["preserve_output"] = True
    return kwargs


def _branch(
    settings: RunSettings,
    checkpoint: Path,
    record: Mapping[str, Any],
    sources: Iterable[str | os.PathLike],
    progress: bool | None,
    device: str | torch.device | None,
) -> float:
    """Write the warm-started run's first checkpoint: the baseline at ``branch_at`` after the surgery.

    The baseline's state at ``branch_at`` comes from the first of ``sources`` that holds it (snapshots
    kept by the paired baseline run) or is trained here, into ``branch.pt`` beside ``checkpoint``
    (resumable, bit-identical to the baseline run's own trajectory on the same machine and threads).
    Returns the seconds spent training the baseline here (0 when a snapshot was reused).
    """
    from dynfilter.surgery import recipes

    from ._io import atomic_write

    branch_at = settings.branch_at
    base = baseline_settings(settings, iterations=branch_at)
    branch = checkpoint.with_name("branch.pt")
    if not branch.is_file():
        for source in sources:
            if Path(source).is_file() and int(load_checkpoint(source)["iteration"]) == branch_at:
                atomic_write(branch, lambda tmp, src=Path(source): shutil.copyfile(src, tmp))
                break
    meta = {**dict(record), "run_id": f"{record.get('run_id', 'run')} (baseline to step {branch_at})"}
    baseline, pretrained = train_model(base, branch, progress=progress, device=device, meta=meta)
    state = load_checkpoint(branch)
    baseline = baseline.cpu()
    plan = recipes.get(settings.recipe)(baseline, **_recipe_kwargs(settings))
    if not plan.keeps_output:
        raise ValueError(f"recipe {settings.recipe!r} with {_recipe_kwargs(settings)} does not keep the baseline's "
                         f"output, so a warm start would not begin where the baseline is")
    enhanced = plan.apply()
    optimizer = carry_optimizer_state(state["optimizer"], baseline, enhanced, plan.key_map(enhanced))
    save_checkpoint(checkpoint, {
        **dict(record),
        "model": enhanced.state_dict(),
        "optimizer": optimizer,
        "scheduler": state["scheduler"],
        "iteration": branch_at,
        "iterations": settings.train.iterations,
        "rng": state["rng"],
        "train_seconds": float(state["train_seconds"]),
        "last_loss": float(state["last_loss"]),
    })
    return pretrained.spent_seconds


def train_model(
    settings: RunSettings,
    checkpoint: str | os.PathLike | None,
    *,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    meta: Mapping[str, Any] | None = None,
    snapshots: Iterable[int] = (),
    branch_sources: Iterable[str | os.PathLike] = (),
) -> tuple[nn.Module, TrainResult]:
    """Build the run's model from its seed and recipe, then train it (resuming from ``checkpoint``).

    A ``warm_start`` run first writes its branch checkpoint (see :func:`_branch`; ``branch_sources`` are
    snapshot files of the paired baseline to reuse) and then resumes from it; it needs a ``checkpoint``.
    ``snapshots`` are steps at which to keep copies of the checkpoint (:func:`~experiments.checkpoint.snapshot_path`).

    Returns:
        (model, result): the trained model in eval mode on ``device`` and the :class:`TrainResult`.
    """
    train = settings.train
    kwargs = model_kwargs(settings)
    check_protocol(settings)
    record = {
        **dict(meta or {}),
        "model_name": settings.backbone,
        "model_kwargs": kwargs,
        "recipe": settings.recipe,
        "recipe_kwargs": _recipe_kwargs(settings),
        "config": settings.to_dict(),
    }
    branch_seconds = 0.0
    if checkpoint is not None and Path(checkpoint).is_file():
        _check_resumable(settings, checkpoint)
    elif settings.protocol == "warm_start":
        if checkpoint is None:
            raise ValueError("a warm_start run needs a checkpoint file to branch into")
        branch_seconds = _branch(settings, Path(checkpoint), record, branch_sources, progress, device)
    model = build_model(settings.backbone, kwargs, settings.recipe, record["recipe_kwargs"], seed=settings.seed)
    sampler = PatchSampler(training_set(settings.data), train.patch_size, train.batch_size, augment=train.augment)
    result = fit(
        model,
        sampler,
        get_loss(train.loss, paired=sampler.paired),
        train,
        seed=settings.seed,
        noise=training_noise(settings, sampler.paired),
        checkpoint=checkpoint,
        meta=record,
        device=resolve_device(device if device is not None else train.device),
        progress=progress,
        snapshots=snapshots,
    )
    result.spent_seconds += branch_seconds
    return model, result


def evaluate_model(
    model: nn.Module, settings: RunSettings, per_image: str | os.PathLike | None = None
) -> dict[str, Any]:
    """PSNR/SSIM on every test set of ``settings.data.test`` under the published protocol.

    Returns ``{"psnr_<set>": …, "ssim_<set>": …, "images_<set>": …, "test_<field>": …}``, the
    protocol fields prefixed ``test_``. ``per_image`` (a CSV path) keeps the per-image rows.
    """
    from .data import open_dataset
    from .protocol import TestProtocol, evaluate, summarize

    data, test = settings.data, settings.test
    protocol = TestProtocol(sigma=settings.noise.sigma, seed=test.seed, seed_mode=test.seed_mode)
    rows: list[dict[str, Any]] = []
    for name in data.test:
        dataset = open_dataset(name, data.data_root, channels=data.channels)
        rows += evaluate(model, dataset, protocol, limit=test.max_images or None)
    out: dict[str, Any] = {}
    for summary in summarize(rows):
        name = summary.pop("set")
        out[f"psnr_{name}"] = summary.pop("psnr")
        out[f"ssim_{name}"] = summary.pop("ssim")
        out[f"images_{name}"] = summary.pop("images")
        out.update({f"test_{k}": v for k, v in summary.items()})
    if per_image is not None:
        import pandas as pd

        from .results import write_checked_csv

        write_checked_csv(per_image, pd.DataFrame(rows))  # rows checked as in results.csv
    return out


def test_model(
    model: nn.Module,
    settings: RunSettings,
    checkpoint: str | os.PathLike | None = None,
    per_image: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Re-estimate BatchNorm statistics if ``test.recalibrate_bn`` (and the model has BatchNorm), then
    :func:`evaluate_model`.

    The re-estimated statistics are stored in ``checkpoint`` as ``"tested_buffers"`` so that
    :func:`~experiments.checkpoint.model_from_checkpoint` gives the model that was tested; the trained
    ones stay for resuming. Returns the metrics with ``bn_recalibrated`` and ``bn_batches``.
    """
    from .batchnorm import recalibrate_for_test

    layers = recalibrate_for_test(model, settings) if settings.test.recalibrate_bn else 0
    if layers and checkpoint is not None and Path(checkpoint).is_file():
        norms = {name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        buffers = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.rpartition(".")[0] in norms
                   and k.rpartition(".")[2] in ("running_mean", "running_var", "num_batches_tracked")}
        state = load_checkpoint(checkpoint)
        save_checkpoint(checkpoint, {**state, "tested_buffers": buffers})
    metrics = evaluate_model(model.eval(), settings, per_image)
    return {"bn_recalibrated": bool(layers), "bn_batches": settings.test.bn_batches if layers else 0, **metrics}


def measure_model(model: nn.Module, measure: Measure, in_channels: int) -> dict[str, Any]:
    """Parameters and MACs (``dynfilter.complexity.profile``) and the median latency of one forward pass."""
    from dynfilter.complexity import measure_latency, profile

    h, w = measure.size
    size = (1, in_channels, h, w)
    cost = profile(model, size)
    device = next(model.parameters()).device
    x = torch.rand(size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(inp)

    model.eval()
    latency = measure_latency(
        forward, x, runs=measure.latency_repeats, warmup=measure.latency_warmup, threads=measure.latency_threads
    )
    return {
        "params": cost.params,
        "macs": cost.macs,
        "cost_input": "x".join(str(s) for s in size),
        "latency_ms": latency.median_ms,
        "latency_threads": latency.threads,
        "latency_device": latency.device,
    }


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Within the block torch uses ``threads`` CPU threads (``None``: as it is); restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    settings: RunSettings,
    measure: Measure,
    run_dir: str | os.PathLike,
    *,
    progress: bool | None = None,
    meta: Mapping[str, Any] | None = None,
    snapshots: Iterable[int] = (),
    branch_sources: Iterable[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, then test and measure it; returns its result row.

    Training and testing use ``train.threads`` CPU threads when set. ``run_dir`` receives
    ``checkpoint.pt`` (the resume point, and what ``dynfilter denoise`` reads) and ``images.csv``
    (per-image test rows); ``snapshots`` and ``branch_sources`` as in :func:`train_model`.
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    train = settings.train
    with cpu_threads(train.threads):
        threads = torch.get_num_threads()
        model, result = train_model(settings, checkpoint, progress=progress, meta=meta, snapshots=snapshots,
                                    branch_sources=branch_sources)
        tic = time.perf_counter()
        metrics = test_model(model, settings, checkpoint, run_dir / "images.csv")
        eval_seconds = time.perf_counter() - tic
    cost = measure_model(model, measure, model_kwargs(settings)["in_channels"])
    paired = isinstance(settings.data.train, Mapping)
    return {
        "backbone": settings.backbone,
        "variant": settings.variant,
        "recipe": settings.recipe or "",
        "recipe_kwargs": json.dumps(settings.recipe_kwargs, sort_keys=True),
        "model_kwargs": json.dumps(model_kwargs(settings), sort_keys=True),
        "protocol": settings.protocol,
        "branch_at": settings.branch_at if settings.branch_at is not None else "",
        "seed": settings.seed,
        "train_data": json.dumps(settings.data.train) if paired else settings.data.train,
        "sigma": settings.noise.sigma,
        "iterations": result.iterations,
        "batch_size": train.batch_size,
        "patch_size": train.patch_size,
        "lr": train.lr,
        "lr_step": train.lr_step,
        "lr_gamma": train.lr_gamma,
        "loss": loss_name(train.loss, paired=paired),
        "precision": train.precision,
        "channels_last": train.channels_last,
        "compile": train.compile,
        "final_loss": result.final_loss,
        "train_seconds": result.train_seconds,
        "train_seconds_spent": result.spent_seconds,
        "resumed_from": result.resumed_from,  # > 0: continued a checkpoint (a killed run's, or a shorter twin's)
        "eval_seconds": eval_seconds,
        "train_threads": threads,
        **metrics,
        **cost,
        **versions(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

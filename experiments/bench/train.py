"""Benchmark suite ``train``: training steps per second per model and trainer option, FLOP/s and the paper run's time.

The models are those of the ``paper`` preset's studies (DnCNN-5/32 with and without DConv, RDN-3/16 with
and without MDCB, the published ADFNet), built as a sweep builds them; each is timed with
:class:`experiments.train_step.TrainStep`, the trainer's own step (Adam, L2 loss), under each option of
:func:`train_options`. Per row:

- ``step s`` (median of interleaved rounds) and ``it/s`` = 1 / ``step s``;
- ``fwd GMACs``: :func:`dynfilter.complexity.profile` of one ``1×3×H×W`` patch times the batch (MACs are
  linear in the batch);
- ``GFLOP/s``: ``2 × 3 × fwd MACs × it/s``. Convention: a training step costs about 3 forward passes
  (the backward pass computes the gradient of the input and of the weights, each about one forward),
  and one MAC is 2 FLOPs. It is the useful arithmetic rate, not a hardware counter;
- ``speedup``: against the first option (fp32 eager unless ``--options`` says otherwise);
- ``loss rel Δ``: the first step's loss against the first option's on the same weights and batch (the
  options' numerics, inductor's generated code included);
- ``paper run h``: the ``paper`` preset's iterations × the step time, **projected** to the preset's
  batch and patch size in proportion to the MACs when a smaller shape was timed (``--batch``,
  ``--patch``, ``--quick``). A projection: memory traffic, caches and the GPU's occupancy do not scale
  exactly with the MACs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .harness import BenchConfig, Row, Section, rounds_note

__all__ = ["TrainOption", "BENCH_MODELS", "train_options", "train_suite", "paper_shape", "TRAIN_MAC_FACTOR"]

#: A training step ≈ this many forward passes' MACs (the convention of the ``GFLOP/s`` column).
TRAIN_MAC_FACTOR = 3

#: Model label -> (``paper`` preset study, its grid point, its variant).
BENCH_MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "DnCNN-5/32": ("dncnn", {"depth": 5, "channels": 32}, "baseline"),
    "DnCNN-5/32 + DConv": ("dncnn", {"depth": 5, "channels": 32}, "dconv"),
    "RDN-3/16": ("rdn", {"num_blocks": 3, "channels": 16}, "baseline"),
    "RDN-3/16 + MDCB": ("rdn", {"num_blocks": 3, "channels": 16}, "mdcb"),
    "ADFNet": ("adfnet", {"widths": [32, 64, 128, 256]}, "adfnet"),
}


@dataclass(frozen=True)
class TrainOption:
    """One combination of the trainer options (``train.precision``, ``train.channels_last``, ``train.compile``)."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        """``"bf16 + channels_last + compile"``; ``"fp32"`` for the defaults.

        >>> TrainOption("bf16", compile=True).label
        'bf16 + compile'
        """
        parts = [self.precision] + ["channels_last"] * self.channels_last + ["compile"] * self.compile
        return " + ".join(parts)


def train_options(config: BenchConfig) -> list[TrainOption]:
    """The options timed: each one alone against fp32 eager, then all of them together.

    fp16 is timed on CUDA only (on a CPU without float16 arithmetic it runs emulated and says nothing
    about a GPU); ``compile`` is left out in quick mode (compiling takes minutes on a CPU).
    ``config.train_options`` picks some of them by label, in its order.

    >>> [o.label for o in train_options(BenchConfig(train_options=("bf16", "fp32")))]
    ['bf16', 'fp32']
    """
    cuda = torch.device(config.device).type == "cuda"
    options = [TrainOption(), TrainOption("bf16")] + ([TrainOption("fp16")] if cuda else [])
    options.append(TrainOption(channels_last=True))
    if not config.quick:
        options += [TrainOption(compile=True), TrainOption("bf16", channels_last=True, compile=True)]
    if not config.train_options:
        return options
    known = {o.label: o for o in options}
    unknown = [label for label in config.train_options if label not in known]
    if unknown:
        raise ValueError(f"unknown train-suite option(s) {unknown} here; known: {list(known)}")
    return [known[label] for label in config.train_options]


def paper_shape() -> tuple[int, int, int]:
    """``(iterations, batch_size, patch_size)`` of the ``paper`` preset."""
    from experiments.config import load_config

    train = load_config("paper")["train"]
    return int(train["iterations"]), int(train["batch_size"]), int(train["patch_size"])


def _paper_run(label: str) -> Any:
    """The ``paper`` preset's run (seed 0) behind ``label`` of :data:`BENCH_MODELS`."""
    from experiments.config import load_config, study_config
    from experiments.sweep import expand

    study, axes, variant = BENCH_MODELS[label]
    runs = [r for r in expand(study_config(load_config("paper"), study)[1])
            if r.settings.variant == variant and r.settings.seed == 0 and all(r.axes.get(k) == v for k, v in axes.items())]
    if len(runs) != 1:
        raise ValueError(f"the paper preset has {len(runs)} runs for {label} ({study} {axes} {variant}); expected 1")
    return runs[0]


def _build(label: str) -> nn.Module:
    from experiments.checkpoint import build_model
    from experiments.run import model_kwargs

    settings = _paper_run(label).settings  # the paper's variants train from scratch: recipe_kwargs as given
    return build_model(settings.backbone, model_kwargs(settings), settings.recipe, settings.recipe_kwargs or None, seed=0)


def _shape(config: BenchConfig) -> tuple[int, int]:
    """``(batch, patch)`` timed: the paper preset's, ``--batch``/``--patch`` where given, (2, 16) in quick mode."""
    _, batch, patch = paper_shape()
    if config.quick:
        batch, patch = 2, 16
    return config.train_batch or batch, config.train_patch or patch


def _step(model: nn.Module, option: TrainOption, x: torch.Tensor, y: torch.Tensor, device: str) -> Callable[[], float]:
    from experiments.train import l2_loss
    from experiments.train_step import TrainStep, memory_format

    model = copy.deepcopy(model).to(device, memory_format=memory_format(option.channels_last)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = TrainStep(model, optimizer, l2_loss, precision=option.precision, channels_last=option.channels_last,
                     compile=option.compile, device=device)
    return lambda: float(step(x, y))


def _rows(label: str, config: BenchConfig, batch: int, patch: int) -> list[Row]:
    from dynfilter.complexity import profile

    device = config.device
    iterations, paper_batch, paper_patch = paper_shape()
    model = _build(label)
    per_image = profile(model, (1, 3, patch, patch)).macs
    macs = per_image * batch
    paper_macs = profile(model, (1, 3, paper_patch, paper_patch)).macs * paper_batch
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, patch, patch, generator=generator).to(device)
    y = torch.rand(batch, 3, patch, patch, generator=generator).to(device)
    options = train_options(config)
    steps = {o.label: _step(model, o, x, y, device) for o in options}
    first: dict[str, float] = {}
    first_loss: dict[str, float] = {}
    for name, step in steps.items():  # the first call compiles (compile) and allocates; timed apart
        tic = time.perf_counter()
        first_loss[name] = step()  # the same weights and batch for every option
        first[name] = time.perf_counter() - tic
    reference_loss = first_loss[options[0].label]
    timings = _time(steps, config)
    base = timings[options[0].label].median  # the first option (fp32 eager by default)
    rows = []
    for option in options:
        t = timings[option.label]
        its = 1.0 / t.median
        projected = t.median * paper_macs / macs
        rows.append({
            "model": label,
            "option": option.label,
            "precision": option.precision,
            "channels_last": option.channels_last,
            "compile": option.compile,
            "shape": f"{batch}×3×{patch}×{patch}",
            "step s": t.median,
            "it/s": its,
            "speedup": base / t.median,
            "fwd GMACs": macs / 1e9,
            "GFLOP/s": 2 * TRAIN_MAC_FACTOR * macs * its / 1e9,
            "paper shape": f"{paper_batch}×3×{paper_patch}×{paper_patch}",
            "paper GMACs": paper_macs / 1e9,
            "paper step s": projected,
            "paper iterations": iterations,
            "paper run h": iterations * projected / 3600,
            "projected": macs != paper_macs,
            "first step s": first[option.label],
            "loss rel Δ": abs(first_loss[option.label] - reference_loss) / reference_loss,
            "threads": t.threads,
        })
    return rows


def _time(steps: dict[str, Callable[[], float]], config: BenchConfig) -> dict[str, Any]:
    from dynfilter.complexity import time_callables

    return time_callables(steps, config.repeat, config.warmup, config.device, config.settle)


COLUMNS = ("model", "option", "shape", "step s", "it/s", "speedup", "fwd GMACs", "GFLOP/s", "paper step s",
           "paper run h", "first step s", "loss rel Δ", "threads")


def train_suite(config: BenchConfig) -> list[Section]:
    """One section: every model of :data:`BENCH_MODELS` (or ``config.train_models``) under every :func:`train_options`."""
    labels = list(config.train_models or BENCH_MODELS)
    unknown = [m for m in labels if m not in BENCH_MODELS]
    if unknown:
        raise ValueError(f"unknown train-suite model(s) {unknown}; known: {list(BENCH_MODELS)}")
    batch, patch = _shape(config)
    iterations, paper_batch, paper_patch = paper_shape()
    options = train_options(config)
    rows = [row for label in labels for row in _rows(label, config, batch, patch)]
    projected = (batch, patch) != (paper_batch, paper_patch)
    note = (
        f"Timed shape {batch}×3×{patch}×{patch}; {rounds_note(config.repeat, config.settle)} per option after "
        f"{config.warmup} warm-up round(s) and one first call (its time, compiling included, is 'first step s'; "
        f"'loss rel Δ' compares its loss, on the same weights and batch, with the first option's; 'speedup' is "
        f"against the first option, {options[0].label}). "
        f"The trainer's step (experiments.train_step.TrainStep: Adam, L2 loss). GFLOP/s = 2 × {TRAIN_MAC_FACTOR} × "
        f"forward MACs × it/s (a step ≈ {TRAIN_MAC_FACTOR} forward passes). 'paper run h' = {iterations:,} iterations "
        f"(the paper preset) × 'paper step s'"
        + (f", which is **projected** from the timed shape to {paper_batch}×3×{paper_patch}×{paper_patch} in "
           f"proportion to the MACs." if projected else f", measured at the paper shape.")
    )
    return [Section("Training throughput", rows, columns=COLUMNS, note=note)]

"""``dynfilter train``: train one denoiser, resuming from its folder's checkpoint, then test it.

Several processes: ``torchrun --nproc_per_node 2 -m experiments.train --model dncnn ...`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import run_flag_paths

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

_FLAGS = ("sigma", "iters", "batch_size", "patch_size", "lr", "train_data", "data_root", "channels", "device", "threads",
          "precision", "channels_last", "compile")
# CLI flag (argparse dest) -> config path it overrides.
SHORTCUTS = run_flag_paths(*_FLAGS)


HELP = "train one denoiser (resumes from the run folder's checkpoint)"
DESCRIPTION = (
    "Train one denoiser with Adam, random patches, the 8 flips/rotations and noise drawn on the fly. "
    "Settings come from --preset/--config (sections data, noise, train, test), then --set, then the flags "
    "below. A killed run continues from <out>/checkpoint.pt when started again with the same arguments."
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    from experiments.config import add_config_arguments
    from ._args import add_kwargs_argument, add_recipe_arguments, add_run_flags
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="backbone name (see `dynfilter info`)")
    add_kwargs_argument(parser)
    add_recipe_arguments(parser)
    add_run_flags(parser, *_FLAGS)
    parser.add_argument("--seed", type=int, help="seed of the initial weights, patches, flips and noise")
    parser.add_argument("--test", help="comma-separated test sets (default: the config's data.test)")
    parser.add_argument("--out", help="run folder for the checkpoint and results (default: runs/<run id>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-eval", action="store_true", help="skip the test after training")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from experiments import ddp
    from experiments.config import config_from_args
    from experiments.run import cpu_threads
    from experiments.settings import RUN_SECTIONS, SECTIONS, RunSettings, section
    from experiments.sweep import make_run

    from ._args import parse_kwargs

    config = config_from_args(args, SHORTCUTS)
    if args.test is not None:
        config["data"]["test"] = [s.strip() for s in args.test.split(",") if s.strip()]
    seed = args.seed if args.seed is not None else config["seeds"][0]
    recipe_kwargs = parse_kwargs(args.recipe_kwargs)
    if recipe_kwargs and not args.recipe:
        raise ValueError("--recipe-kwargs needs --recipe")
    settings = RunSettings(
        backbone=args.model,
        model=parse_kwargs(args.kwargs),
        variant=args.recipe or "baseline",
        recipe=args.recipe,
        recipe_kwargs=recipe_kwargs,
        seed=seed,
        **{name: section(SECTIONS[name], config[name]) for name in RUN_SECTIONS},
    )
    spec = make_run(settings, "train")
    out = Path(args.out) if args.out else Path("runs") / spec.id
    rank, world = ddp.setup()
    try:
        with cpu_threads(settings.train.threads):
            summary = _train_and_test(spec, out, rank, world, args)
    finally:
        ddp.cleanup()
    return summary


def _train_and_test(spec: Any, out: Any, rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    import json

    from experiments.config import dump_config
    from experiments.run import model_kwargs, test_model, train_model

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.yaml").write_text(dump_config({"id": spec.id, **spec.settings.to_dict()}))
        print(f"run {spec.id} -> {out}" + (f" ({world} processes)" if world > 1 else ""))
    model, result = train_model(
        spec.settings, out / "checkpoint.pt", progress=False if args.no_progress else None, meta={"run_id": spec.id}
    )
    train = spec.settings.train
    summary: dict[str, Any] = {"id": spec.id, "checkpoint": str(out / "checkpoint.pt"),
                               "iterations": result.iterations, "final_loss": result.final_loss,
                               "train_seconds": result.train_seconds, "precision": train.precision,
                               "channels_last": train.channels_last, "compile": train.compile}
    if rank == 0:
        print(f"trained {result.iterations} iterations in {result.train_seconds:.1f} s "
              f"(resumed at {result.resumed_from}); final loss {result.final_loss:.4g}")
        if not args.no_eval:
            metrics = test_model(model, spec.settings, out / "checkpoint.pt", out / "images.csv")
            summary.update(metrics)
            for key, value in metrics.items():
                if key.startswith("psnr_"):
                    print(f"  {key[5:]}: PSNR {value:.2f} dB, SSIM {metrics['ssim_' + key[5:]]:.4f}")
        summary["model_kwargs"] = model_kwargs(spec.settings)
        (out / "result.json").write_text(json.dumps(summary, indent=2, default=str))
        print(f"checkpoint: {out / 'checkpoint.pt'}")
    return summary

"""``dynfilter train``: train one denoiser, resuming from its folder's checkpoint, then test it.

Several processes: ``torchrun --nproc_per_node 2 -m experiments.train --model dncnn ...`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]

# CLI flag (argparse dest) -> config path it overrides.
SHORTCUTS = {
    "sigma": "noise.sigma",
    "iters": "train.iterations",
    "batch_size": "train.batch_size",
    "patch_size": "train.patch_size",
    "lr": "train.lr",
    "train_data": "data.train",
    "data_root": "data.data_root",
    "channels": "data.channels",
    "device": "train.device",
    "threads": "train.threads",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from experiments.config import add_config_arguments

    from ._args import add_kwargs_argument

    parser = subparsers.add_parser(
        "train",
        help="train one denoiser (resumes from the run folder's checkpoint)",
        description="Train one denoiser with Adam, random patches, the 8 flips/rotations and noise drawn on the fly. "
        "Settings come from --preset/--config (sections data, noise, train, test), then --set, then the flags "
        "below. A killed run continues from <out>/checkpoint.pt when started again with the same arguments.",
    )
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="backbone name (see `dynfilter info`)")
    add_kwargs_argument(parser)
    parser.add_argument("--recipe", help="surgery recipe applied before training, e.g. dncnn_dconv or rdn_mdcb")
    parser.add_argument("--recipe-kwargs", default="", metavar="K=V[,K=V...]", help="arguments of the recipe")
    parser.add_argument("--sigma", type=float, help="training and test noise level on the 0-255 scale")
    parser.add_argument("--iters", type=int, help="training iterations")
    parser.add_argument("--batch-size", type=int, help="patches per iteration (global, over all processes)")
    parser.add_argument("--patch-size", type=int, help="side of the square training patches")
    parser.add_argument("--lr", type=float, help="initial learning rate")
    parser.add_argument("--seed", type=int, help="seed of the initial weights, patches, flips and noise")
    parser.add_argument("--train-data", help="training set: builtin-train, a standard set name or an image folder")
    parser.add_argument("--test", help="comma-separated test sets (default: the config's data.test)")
    parser.add_argument("--data-root", help="folder holding the standard sets (or set DYNFILTER_DATA)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="train on colour (3) or grey (1) images")
    parser.add_argument("--out", help="run folder for the checkpoint and results (default: runs/<run id>)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-eval", action="store_true", help="skip the test after training")
    parser.set_defaults(run=run)
    return parser


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
    summary: dict[str, Any] = {"id": spec.id, "checkpoint": str(out / "checkpoint.pt"),
                               "iterations": result.iterations, "final_loss": result.final_loss,
                               "train_seconds": result.train_seconds}
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

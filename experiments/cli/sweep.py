"""``dynfilter sweep STUDY``: train and test every run of a study's grid; finished runs are skipped."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_run_flags, run_flag_paths

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

DEFAULT_PRESET = "quick"

_FLAGS = ("iters", "sigma", "data_root", "device", "threads", "precision", "channels_last", "compile")
# CLI flag (argparse dest) -> path inside the study it overrides (after the study's own sections).
SHORTCUTS = run_flag_paths(*_FLAGS)


HELP = "run a study: backbone grid x {baseline, enhanced} x seeds, one results row per run"
DESCRIPTION = (
    "Train and test every run of STUDY (e.g. dncnn: depth x channels x {baseline, DConv}; rdn: "
    "blocks x channels x {baseline, MDCB}) from a preset or your own config. Rows go to <out>/results.csv; "
    "finished runs are skipped and killed runs resume from <out>/runs/<id>/checkpoint.pt. Several processes "
    "may share <out> (each claims runs with a lock), e.g. one per --shard i/n. --jobs N runs N at once here, "
    "--executor ray as tasks of a Ray cluster (docs/experiments.md, Scaling out)."
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    from experiments.config import add_config_arguments
    parser.add_argument("study", nargs="?", help="study name in the config (dncnn, rdn, ...); optional if it has one")
    add_config_arguments(parser, DEFAULT_PRESET)
    parser.add_argument("--out", help="results folder (default: results/<preset or config name>)")
    parser.add_argument("--list", action="store_true", help="list the run ids and their status, run nothing")
    parser.add_argument("--run", dest="run_ids", action="append", default=[], metavar="ID",
                        help="run only this id (repeatable)")
    parser.add_argument("--shard", metavar="I/N", help="run only shard I of N (0 <= I < N) of the sorted ids")
    add_run_flags(parser, *_FLAGS)
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    scale = parser.add_argument_group("scaling out (docs/experiments.md, Scaling out)")
    scale.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="local executor: run N runs at once, each in its own process with cores // N torch "
                       "threads unless --threads is given (default 1: one after the other in this process)")
    scale.add_argument("--devices", metavar="LIST",
                       help="local executor: comma-separated devices dealt out to the jobs in turn, e.g. cuda:0,cuda:1")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local (default): this machine; ray: each chain of runs is a Ray task "
                       "(needs pip install 'dynfilter[distributed]')")
    scale.add_argument("--address", help="ray: the cluster to join (host:port of the head, ray://host:port or auto); "
                       "default: start a Ray instance of this machine's cores for the sweep")
    scale.add_argument("--gpus-per-run", type=float, default=0.0, metavar="F",
                       help="ray: fraction of a GPU each run reserves (0.25 packs four runs on a GPU; default 0: "
                       "no reservation, train.device as configured)")
    parser.add_argument(
        "--no-continue", dest="continue_budgets", action="store_false",
        help="train every run from step 0 instead of continuing the finished checkpoint of its shorter-budget twin",
    )


def _check_executor(args: argparse.Namespace) -> list[str]:
    """Refuse options of one executor given to the other; returns the --devices list."""
    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()]
    if args.jobs < 1:
        raise ValueError(f"--jobs takes a positive number of runs to run at once, got {args.jobs}")
    if args.executor == "ray" and (args.jobs != 1 or devices):
        raise ValueError("--jobs and --devices are for the local executor; with --executor ray, Ray runs as many "
                         "runs at once as the cluster has CPUs (--threads each) and GPUs (--gpus-per-run each)")
    if args.executor == "local" and (args.address is not None or args.gpus_per_run):
        raise ValueError("--address and --gpus-per-run are for --executor ray; the local executor takes --jobs "
                         "and --devices")
    if args.gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run takes a fraction of a GPU >= 0 (e.g. 0.25), got {args.gpus_per_run}")
    if args.address is not None:
        from experiments.ray_sweep import check_address  # imports no ray

        check_address(args.address)
    return devices


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from experiments.config import config_from_args, set_path, study_config
    from experiments.results import ResultsTable
    from experiments.sweep import expand, parse_shard, run_status, run_sweep, select_runs

    config = config_from_args(args, {}, DEFAULT_PRESET)
    name, study = study_config(config, args.study)
    for attr, path in SHORTCUTS.items():
        if getattr(args, attr) is not None:
            set_path(study, path, getattr(args, attr))
    if args.seeds is not None:
        try:
            study["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    devices = _check_executor(args)
    runs = expand(study)
    chosen = select_runs(runs, args.run_ids, parse_shard(args.shard) if args.shard else None)
    label = Path(args.config).stem if args.config else (args.preset or DEFAULT_PRESET)
    out = Path(args.out) if args.out else Path("results") / label

    if args.list:
        ResultsTable(out).report_damaged()
        finished = ResultsTable(out).ids()
        statuses = {r.id: run_status(r, out, finished) for r in chosen}
        width = max((len(i) for i in statuses), default=0)
        for run_id, status in statuses.items():
            print(f"{run_id:<{width}}  {status}")
        print(f"{len(chosen)} of {len(runs)} runs of study {name!r}; results folder {out}")
        return {"runs": statuses}

    print(f"study {name!r}: {len(chosen)} of {len(runs)} runs -> {out}")
    common = dict(pool=runs, study=study, continue_budgets=args.continue_budgets)
    if args.executor == "ray":
        from experiments.ray_sweep import run_sweep_ray

        outcome = run_sweep_ray(chosen, out, study["measure"], address=args.address, gpus_per_run=args.gpus_per_run,
                                **common)
    elif args.jobs > 1 or devices:
        from experiments.packing import run_packed

        outcome = run_packed(chosen, out, study["measure"], jobs=args.jobs, devices=devices, **common)
    else:
        outcome = run_sweep(chosen, out, study["measure"], progress=False if args.no_progress else None, **common)
    print(f"{len(outcome['done'])} run(s) finished now, {len(outcome['skipped'])} already done, "
          f"{len(outcome['busy'])} claimed by other processes")
    print(f"results table: {ResultsTable(out).path}")
    return {"out": str(out), **outcome}

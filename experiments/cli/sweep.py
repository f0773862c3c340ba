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
    "may share <out> (each claims runs with a lock), e.g. one per --shard i/n."
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
    parser.add_argument(
        "--no-continue", dest="continue_budgets", action="store_false",
        help="train every run from step 0 instead of continuing the finished checkpoint of its shorter-budget twin",
    )


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
    outcome = run_sweep(
        chosen, out, study["measure"], pool=runs, study=study, continue_budgets=args.continue_budgets,
        progress=False if args.no_progress else None,
    )
    print(f"{len(outcome['done'])} run(s) finished now, {len(outcome['skipped'])} already done, "
          f"{len(outcome['busy'])} claimed by other processes")
    print(f"results table: {ResultsTable(out).path}")
    return {"out": str(out), **outcome}

"""``dynfilter batchnorm RESULTS``: re-test a results folder's runs after re-estimating their BatchNorm statistics."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_data_root_argument

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "re-test finished runs after re-estimating their BatchNorm statistics (older results folders)"
DESCRIPTION = (
    "For every finished run of RESULTS whose id matches --runs, re-estimate the BatchNorm running "
    "statistics as the average over --batches noisy training batches (weights untouched), test again under the "
    "run's recorded protocol, and write <RESULTS>/batchnorm.csv with both PSNRs per test set. Runs made since "
    "test.recalibrate_bn became the default are tested this way already."
)
EPILOG = "example: dynfilter batchnorm results/budget --runs 'dncnn-it6000-*' --data-root ../shared/data"


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    parser.add_argument("results", metavar="RESULTS", help="a sweep's results folder")
    parser.add_argument("--runs", default="*", help="glob over run ids (default: all)")
    parser.add_argument("--batches", type=int, default=100, help="training batches to average over (default 100)")
    add_data_root_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches drawn (default 0)")


def run(args: argparse.Namespace) -> Any:
    from experiments.batchnorm import recalibrate_results

    if args.batches < 1:
        raise ValueError(f"--batches must be at least 1, got {args.batches}")
    path = recalibrate_results(args.results, args.runs, args.batches, args.data_root, args.seed)
    print(f"wrote {path}")
    return path

"""``dynfilter plot RESULTS [--x AXIS]``: gain-vs-axis curves, PSNR vs MACs/params and a markdown table from a results table."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "plot a results table: gain vs depth, PSNR vs MACs/params, markdown table"
DESCRIPTION = (
    "Read RESULTS (a results.csv written by `dynfilter sweep`, or its folder) and write "
    "gain.png/.svg (PSNR(enhanced) - PSNR(baseline) vs depth or blocks, or the grid axis named by --x, one line "
    "per value of the other axes and variant, one panel per backbone and test set), cost.png/.svg (PSNR vs MACs "
    "and params), table.md and gains.csv. Gains are paired by seed and summarised over seeds as the mean with "
    "its 95 % Student t interval and a verdict (gain, loss, or not resolved when the interval contains 0)."
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    parser.add_argument("results", metavar="RESULTS", help="results.csv or the folder holding it")
    parser.add_argument("--out", help="output folder (default: <results folder>/plots)")
    parser.add_argument(
        "--x", metavar="AXIS",
        help="grid axis on the gain plot's x axis, e.g. iterations for a budget study (default: the first axis)",
    )
    parser.add_argument(
        "--against", metavar="VARIANT",
        help="measure gains against this variant instead of the baselines, seed by seed (e.g. compare two inits)",
    )
    parser.add_argument("--print", dest="print_table", action="store_true", help="also print the markdown table")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from experiments.plot import plot_results

    paths = plot_results(args.results, args.out, args.x, args.against)
    if args.print_table:
        print(paths["markdown"])
    print(paths["summary"])
    if paths["gain"]:
        print(f"gain plot:  {paths['gain'][0]}  (and .svg)")
        print(f"gains:      {paths['gains']}  (interval and verdict per configuration and test set)")
    else:
        print("gain plot:  none (no enhanced run has a finished baseline yet)")
    print(f"cost plot:  {paths['cost'][0]}  (and .svg)")
    print(f"table:      {paths['table']}")
    if paths["ablation"]:
        print(f"Table 4:    {paths['ablation']}  (ablation - ADFNet per seed, beside the paper's numbers)")
    return paths

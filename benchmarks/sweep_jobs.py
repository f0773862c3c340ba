"""Sweep throughput with N runs at once (``dynfilter sweep --jobs N``), from a fresh results folder each time.

``python benchmarks/sweep_jobs.py [--jobs 1 2] [--study dncnn] [--preset smoke] [--set KEY=VALUE ...]
[--device DEV] [--devices LIST] [--executor local|ray]`` runs the same sweep once per ``--jobs`` value,
each as its own ``dynfilter sweep`` process (start-up, testing and measuring included, as a user sees
it), and prints a markdown table: runs, torch threads per job (the rows' ``train_threads``), wall
time, runs per hour and the speed-up over the first row. ``--executor ray`` times the Ray executor
(a local instance) once, beside them.

Results: ``docs/experiments.md`` ("Scaling out"); on a GPU machine ``benchmarks/gpu_check.sh`` runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.results import ResultsTable


def _time_sweep(args: argparse.Namespace, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "experiments.cli", "sweep", args.study, "--preset", args.preset,
               "--out", str(out), "--no-progress", *extra]
    for item in args.set:
        command += ["--set", item]
    if args.device:
        command += ["--device", args.device]
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = ResultsTable(out).read()
    return {"runs": len(rows), "threads": sorted(set(rows["train_threads"])), "seconds": seconds,
            "train": float(rows["train_seconds_spent"].sum())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="values of --jobs to time (default 1 2)")
    parser.add_argument("--study", default="dncnn")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--device", help="train.device of every run (e.g. cuda)")
    parser.add_argument("--devices", help="passed to dynfilter sweep --devices")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="ray: also time --executor ray (a local instance of this machine's cores)")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in args.jobs:
            extra = ["--jobs", str(jobs)] + (["--devices", args.devices] if args.devices else [])
            results.append((f"--jobs {jobs}", _time_sweep(args, Path(tmp) / f"jobs{jobs}", extra)))
        if args.executor == "ray":
            results.append(("--executor ray", _time_sweep(args, Path(tmp) / "ray", ["--executor", "ray"])))
    print(f"sweep {args.study} --preset {args.preset} {' '.join('--set ' + s for s in args.set)}"
          f"{' --device ' + args.device if args.device else ''}")
    print("| executor | runs | torch threads per run | wall s | training s (sum over runs) | runs per hour | speed-up |")
    print("|---|---|---|---|---|---|---|")
    first = results[0][1]["seconds"]
    for label, r in results:
        print(f"| {label} | {r['runs']} | {','.join(map(str, r['threads']))} | {r['seconds']:.1f} | {r['train']:.1f} "
              f"| {3600 * r['runs'] / r['seconds']:.0f} | {first / r['seconds']:.2f}x |")


if __name__ == "__main__":
    main()

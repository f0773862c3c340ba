"""Rerun the dynamic-filter benchmark from a source checkout: ``python benchmarks/bench_dynamic_filter.py [options]``.

The same as ``dynfilter bench --suite dynamic adfnet [options]``: the suites live in
``experiments/bench/dynamic.py`` and the reusable harness (timing, peak memory, copy bandwidth,
tables) in ``experiments/bench/harness.py``, inside the installed package, so that the CLI works without
this folder. Options are those of ``dynfilter bench --help``; a ``--suite`` given here replaces the
default. Method and results: ``docs/performance.md``.
"""

from __future__ import annotations

import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "dynamic", "adfnet", *sys.argv[1:]]))

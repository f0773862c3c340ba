"""Rerun the deformable-conv and whole-ADFNet benchmarks from a source checkout: ``python benchmarks/bench_deform.py [options]``.

The same as ``dynfilter bench --suite deform adfnet model [options]``: the ``deform`` and ``model`` suites
live in ``experiments/bench/deform.py`` (``adfnet``, inference against the reference ops, in
``experiments/bench/dynamic.py``), inside the installed package. Options are those of
``dynfilter bench --help``. Method and results: ``docs/performance.md``.
"""

from __future__ import annotations

import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "deform", "adfnet", "model", *sys.argv[1:]]))

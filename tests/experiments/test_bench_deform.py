"""The ``deform`` and ``model`` benchmark suites run (quick shapes) and report consistent ratios."""

from __future__ import annotations

import pytest

from experiments.bench.deform import deform_suite, model_suite
from experiments.bench.harness import SUITES, BenchConfig

QUICK = BenchConfig(repeat=1, warmup=0, quick=True)


def test_suites_are_registered():
    assert SUITES["deform"] == "experiments.bench.deform:deform_suite"
    assert SUITES["model"] == "experiments.bench.deform:model_suite"


def test_deform_suite_quick(one_thread):
    timing, targets = deform_suite(QUICK)
    assert [r["B, C, H, W"] for r in timing.rows] == ["1×16×24×20", "2×32×12×10"]
    for row in timing.rows:
        assert row["fwd speedup"] == pytest.approx(row["tv fwd ms"] / row["lean fwd ms"])
        assert row["f+b speedup"] == pytest.approx(row["tv f+b ms"] / row["lean f+b ms"])
        b, c, h, w = map(int, row["B, C, H, W"].split("×"))
        assert row["columns MiB"] == pytest.approx(b * c * 9 * h * w * 4 / 2**20)
        assert row["lean fwd peak MiB"] > 0
    assert targets.rows[0]["worst case reached"] == min(r["fwd speedup"] for r in timing.rows)


def test_model_suite_quick(one_thread):
    train, targets, options = model_suite(QUICK)
    (row,) = train.rows
    assert row["training speedup"] == pytest.approx(row["ref step s"] / row["lean step s"])
    assert targets.rows[0]["worst case reached"] == row["training speedup"]
    by_name = {r["variant"]: r for r in options.rows}
    assert list(by_name) == ["lean (default)", "lean, bfloat16 autocast"]  # no compiling in quick mode
    assert by_name["lean (default)"]["max abs Δ output"] == 0 and by_name["lean (default)"]["speedup vs default"] == 1
    # bfloat16 changes the output, but stays near it (values are images in [0, 1]).
    assert 0 < by_name["lean, bfloat16 autocast"]["max abs Δ output"] < 0.1

"""The ``onnx`` benchmark suite runs (quick shapes) and reports finite, consistent times."""

from __future__ import annotations

import math

import pytest

from experiments.bench.harness import SUITES, BenchConfig, format_markdown

QUICK = BenchConfig(repeat=1, warmup=0, quick=True)


def test_onnx_suite_is_registered():
    assert SUITES["onnx"] == "experiments.bench.onnx:onnx_suite"


def test_onnx_suite_without_onnxruntime_reports_an_empty_table(monkeypatch):
    import importlib.util

    from experiments.bench.onnx import ONNX_COLUMNS, onnx_suite

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    (section,) = onnx_suite(QUICK)
    assert section.rows == [] and tuple(section.columns) == ONNX_COLUMNS
    assert "onnxruntime not installed" in section.note


def test_onnx_suite_quick(one_thread):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from experiments.bench.onnx import ONNX_COLUMNS, onnx_suite

    (section,) = onnx_suite(QUICK)
    assert tuple(section.columns) == ONNX_COLUMNS
    assert [(r["model"], r["input"]) for r in section.rows] == [
        ("ADFNet (widths 8, 8, 8, 16)", "1×3×32×32"),
        ("DnCNN-3/8 + DConv", "1×3×32×32"),
    ]
    for row in section.rows:
        assert set(ONNX_COLUMNS) <= set(row)
        for key in ("torch ms", "ort ms", "ort/torch"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["ort/torch"] == pytest.approx(row["ort ms"] / row["torch ms"])
        assert row["max abs diff"] < 1e-4
        assert row["torch threads"] == row["ort threads"] == 1
    table = format_markdown(section)
    assert table.count("\n| ") == 3  # header and two rows


def test_onnx_suite_refuses_cuda():
    from experiments.bench.onnx import onnx_suite

    with pytest.raises(ValueError, match="runs on CPU"):
        onnx_suite(BenchConfig(repeat=1, warmup=0, quick=True, device="cuda"))

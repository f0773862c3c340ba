"""``benchmarks/tiling.py`` (tiled against whole, peak memory) runs and reports consistent numbers (tiny sizes)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

import backbones
from dynfilter.surgery import recipes
from experiments.data import open_dataset

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tiling.py"


def _script():
    spec = importlib.util.spec_from_file_location("tiling_benchmark", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trained_section_on_a_pooling_model(one_thread):
    torch.manual_seed(0)
    model = recipes.dncnn_dconv(backbones.build("dncnn", depth=3, channels=8), init="published").apply().eval()
    section = _script().trained_section(model, "tiny", open_dataset("builtin", channels=3), 1, [128, 256], 32, 50.0)
    whole, *tiled = section.rows
    assert whole["tile"] == "whole" and whole["Δ PSNR dB"] == 0 and [r["tile"] for r in tiled] == [128, 256]
    for row in tiled:
        assert row["Δ PSNR dB"] == row["mean PSNR dB"] - whole["mean PSNR dB"]
        # SEKG's channel branch pools over the whole input, so tiles differ from it, a little.
        assert 0 < row["max abs Δ vs whole"] < 1 and math.isfinite(row["PSNR tiled vs whole dB"])


def test_memory_section_tiles_hold_less(one_thread):
    section = _script().memory_section(side=48, tile=24, overlap=8)
    whole, tiled = section.rows
    assert 0 < tiled["peak MiB"] < whole["peak MiB"]

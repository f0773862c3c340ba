"""``dynfilter bench --suite train``: every model × option, and each derived column recomputed from its inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.bench.harness import SUITES, BenchConfig
from experiments.bench.train import BENCH_MODELS, TRAIN_MAC_FACTOR, TrainOption, train_options, train_suite
from experiments.cli import main

CONFIG = BenchConfig(repeat=1, warmup=0, settle=0, quick=True, train_batch=1, train_patch=8)
PAPER = yaml.safe_load((Path(__file__).parents[2] / "experiments" / "presets" / "paper.yaml").read_text())["train"]


def _dncnn_macs(batch: int, side: int, depth: int = 5, channels: int = 32) -> int:
    """Hand count of DnCNN with BatchNorm: 3×3 convs C_in·C_out·9 per pixel, 2 per element per BN (fvcore)."""
    convs = 3 * channels * 9 + (depth - 2) * channels * channels * 9 + channels * 3 * 9
    return batch * side * side * (convs + (depth - 2) * channels * 2)


@pytest.fixture(scope="module")
def rows():
    (section,) = train_suite(CONFIG)
    return section.rows


def test_a_row_for_every_model_and_option(rows):
    expected = [(m, o.label) for m in BENCH_MODELS for o in train_options(CONFIG)]
    assert [(r["model"], r["option"]) for r in rows] == expected
    assert SUITES["train"] == "experiments.bench.train:train_suite"


def test_derived_columns_follow_from_the_row(rows):
    for r in rows:
        its = 1 / r["step s"]
        assert r["it/s"] == pytest.approx(its)
        assert r["GFLOP/s"] == pytest.approx(2 * 3 * r["fwd GMACs"] * its)
        assert r["paper step s"] == pytest.approx(r["step s"] * r["paper GMACs"] / r["fwd GMACs"])
        assert r["paper iterations"] == PAPER["iterations"] == 1_000_000
        assert r["paper run h"] == pytest.approx(PAPER["iterations"] * r["paper step s"] / 3600)
        assert r["shape"] == "1×3×8×8" and r["paper shape"] == f"{PAPER['batch_size']}×3×128×128"
        assert r["projected"] is True and r["speedup"] > 0
    assert TRAIN_MAC_FACTOR == 3


def test_macs_match_a_hand_count(rows):
    dncnn = next(r for r in rows if r["model"] == "DnCNN-5/32")
    assert dncnn["fwd GMACs"] * 1e9 == pytest.approx(_dncnn_macs(1, 8))
    assert dncnn["paper GMACs"] * 1e9 == pytest.approx(_dncnn_macs(16, 128))
    adfnet = [r["fwd GMACs"] for r in rows if r["model"] == "ADFNet"]
    assert len(set(adfnet)) == 1 and adfnet[0] > dncnn["fwd GMACs"], "the options do not change the MACs"


def test_the_options_compute_the_same_loss(rows):
    for r in rows:
        tolerance = {"fp32": 1e-4, "bf16": 0.15}[r["precision"]]  # as in test_train_step.py
        assert r["loss rel Δ"] <= tolerance, (r["model"], r["option"], r["loss rel Δ"])
        if r["precision"] == "bf16":
            assert r["loss rel Δ"] > 0


def test_options_per_device_and_mode():
    labels = [o.label for o in train_options(BenchConfig(device="cpu"))]
    assert labels == ["fp32", "bf16", "fp32 + channels_last", "fp32 + compile", "bf16 + channels_last + compile"]
    assert "fp16" in [o.label for o in train_options(BenchConfig(device="cuda"))]  # a pure function: no GPU needed
    assert not any(o.compile for o in train_options(BenchConfig(quick=True)))
    assert TrainOption("fp16", channels_last=True).label == "fp16 + channels_last"


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown train-suite model\(s\) \['VGG'\]; known: \['DnCNN-5/32'"):
        train_suite(BenchConfig(quick=True, train_models=("VGG",)))
    assert main(["bench", "--suite", "train", "--quick", "--patch", "0", "--out", str(tmp_path)]) != 0
    assert "--patch must be >= 1, got 0" in capsys.readouterr().err


def test_all_leaves_the_train_suite_out(tmp_path, monkeypatch):
    import experiments.bench.harness as harness

    ran = []
    monkeypatch.setattr(harness, "run_suites", lambda names, config: ran.extend(names) or [])
    assert main(["bench", "--out", str(tmp_path)]) == 0
    assert ran == [n for n in SUITES if n != "train"] and "train" in SUITES

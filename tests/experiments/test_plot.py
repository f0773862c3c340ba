"""Plots and tables from a synthetic results table whose gains are known by construction."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image

from experiments.cli import main
from experiments.plot import gain_table, plot_gain, plot_results, resolve_axis
from experiments.results import ResultsTable, read_results

# DnCNN gains at depth 5 / 10 / 15 (the paper's claim) for 32 channels, half of them for 64; seed 0 gets
# +0.02 and seed 1 −0.02 around them, so the mean is the gain and the sample std is 0.02·√2.
DNCNN_GAIN = {(5, 32): 0.60, (10, 32): 0.24, (15, 32): 0.15, (5, 64): 0.30, (10, 64): 0.12, (15, 64): 0.075}
SEED_SHIFT = {0: 0.02, 1: -0.02}
RDN_GAIN = {(b, c): 0.05 * b - c / 100 for b in (3, 6, 9) for c in (16, 32)}


def _rows():
    rows = []
    for (d, c), gain in DNCNN_GAIN.items():
        for seed, shift in SEED_SHIFT.items():
            base = 27.0 + d / 10 + c / 100 + seed / 10
            for variant, recipe, psnr in (("baseline", "", base), ("dconv", "dncnn_dconv", base + gain + shift)):
                rows.append(dict(
                    id=f"dncnn-d{d}-c{c}-{variant}-s{seed}", study="dncnn", backbone="dncnn", variant=variant,
                    recipe=recipe, grid_axes="depth,channels", depth=d, channels=c, seed=seed,
                    pair=f"p-{d}-{c}-{seed}", cell=f"c-{d}-{c}-{variant}", psnr_CBSD68=psnr, psnr_Kodak24=psnr + 1,
                    ssim_CBSD68=0.7, ssim_Kodak24=0.75, params=1000 * d * c + (500 if recipe else 0),
                    macs=2e6 * d * c, cost_input="1x3x128x128", train_seconds=10.0 * d,
                ))
    for (b, c), gain in RDN_GAIN.items():
        base = 28.0 + b / 10
        for variant, recipe, psnr in (("baseline", "", base), ("mdcb", "rdn_mdcb", base + gain)):
            rows.append(dict(
                id=f"rdn-b{b}-c{c}-{variant}-s0", study="rdn", backbone="rdn", variant=variant, recipe=recipe,
                grid_axes="num_blocks,channels", num_blocks=b, channels=c, seed=0, pair=f"q-{b}-{c}",
                cell=f"r-{b}-{c}-{variant}", psnr_CBSD68=psnr, psnr_Kodak24=psnr, ssim_CBSD68=0.7, ssim_Kodak24=0.7,
                params=5000 * b * c, macs=3e6 * b * c, cost_input="1x3x128x128", train_seconds=5.0 * b,
            ))
    # An enhanced run whose baseline has not finished: left out of the gains.
    rows.append(dict(id="dncnn-d20-c32-dconv-s0", study="dncnn", backbone="dncnn", variant="dconv",
                     recipe="dncnn_dconv", grid_axes="depth,channels", depth=20, channels=32, seed=0,
                     pair="orphan", cell="c-orphan", psnr_CBSD68=30.0, psnr_Kodak24=31.0, params=1, macs=1.0,
                     cost_input="1x3x128x128", train_seconds=1.0))
    return rows


@pytest.fixture
def results(tmp_path):
    table = ResultsTable(tmp_path)
    for row in _rows():
        table.append(row)
    return tmp_path


def test_gains_match_construction(results):
    gains = gain_table(read_results(results))
    dncnn = gains[gains["backbone"] == "dncnn"]
    assert len(dncnn) == len(DNCNN_GAIN), "the orphan enhanced run must be left out"
    for _, row in dncnn.iterrows():
        expected = DNCNN_GAIN[(row["depth"], row["channels"])]
        assert row["gain_CBSD68"] == pytest.approx(expected, abs=1e-9)
        assert row["gain_Kodak24"] == pytest.approx(expected, abs=1e-9)
        assert row["gain_CBSD68_std"] == pytest.approx(0.02 * math.sqrt(2), abs=1e-9)
        assert row["seeds"] == 2
        # Two seeds: t(0.975, 1) = 12.7062 (printed t tables) times sd / sqrt(2) = 0.02: a half-width of 0.254 dB.
        assert row["gain_CBSD68_ci"] == pytest.approx(12.7062 * 0.02, abs=1e-4)
        assert row["gain_CBSD68_low"] == pytest.approx(expected - 12.7062 * 0.02, abs=1e-4)
        assert row["verdict_CBSD68"] == ("gain" if expected > 12.7062 * 0.02 else "not resolved")
    rdn = gains[gains["backbone"] == "rdn"]
    assert len(rdn) == 6
    for _, row in rdn.iterrows():
        assert row["gain_CBSD68"] == pytest.approx(RDN_GAIN[(row["num_blocks"], row["channels"])], abs=1e-9)
        # One seed: no spread, no interval, no verdict.
        assert math.isnan(row["gain_CBSD68_std"]) and math.isnan(row["gain_CBSD68_ci"]) and row["seeds"] == 1
        assert row["verdict_CBSD68"] == "1 seed: no verdict"


def test_plot_results_writes_figures_and_table(results, capsys):
    assert main(["plot", str(results / "results.csv")]) == 0
    printed = capsys.readouterr().out
    out = results / "plots"
    for stem in ("gain", "cost"):
        with Image.open(out / f"{stem}.png") as im:
            assert im.width > 400 and im.height > 300
        assert (out / f"{stem}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert str(out / "gain.png") in printed and str(out / "table.md") in printed
    table = (out / "table.md").read_text()
    # Hand-computed cells: the paper's 0.60 dB at depth 5 with the seed spread, and an RDN gain.
    assert ("| 5 | 32 | dconv | 2 | 28.47 | 29.47 | +0.60 ± 0.25 | gain | +0.60 ± 0.25 | gain | 160,500 | 0.320 | 50 |"
            in table)
    # Depth 15, width 64: 0.075 dB lies inside its ±0.25 dB interval.
    assert "| 15 | 64 | dconv | 2 | 29.27 | 30.27 | +0.07 ± 0.25 | not resolved |" in table
    assert "| 9 | 16 | mdcb | 1 | 29.19 | 29.19 | +0.29 | 1 seed: no verdict | +0.29 | 1 seed: no verdict |" in table
    gains = pd.read_csv(out / "gains.csv")
    assert {"gain_CBSD68_ci", "gain_CBSD68_low", "gain_CBSD68_high", "verdict_CBSD68", "seeds"} <= set(gains.columns)
    assert "dncnn depth=5 channels=32 dconv  CBSD68: +0.60 ± 0.25 dB (2 seeds, gain)" in printed
    assert "**dncnn**" in table and "**rdn**" in table


def test_plot_without_pairs_draws_cost_only(tmp_path):
    table = ResultsTable(tmp_path)
    table.append({**_rows()[0]})
    paths = plot_results(tmp_path, tmp_path / "figs")
    assert paths["gain"] == [] and paths["cost"][0].is_file() and paths["table"].is_file()


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "results table not found" in capsys.readouterr().err


# A budget study: gain vs training iterations for two DConv initialisations at depth 5 and 10. Seed
# shifts of −0.1 / 0 / +0.1 dB give the gain as the mean and exactly 0.1 dB as the sample std.
BUDGET_GAIN = {("dconv", 5): (-0.8, -0.3, 0.2), ("dconv_identity", 5): (-0.1, -0.05, 0.3),
               ("dconv", 10): (-1.0, -0.6, -0.2), ("dconv_identity", 10): (-0.2, 0.0, 0.1)}
BUDGETS = (600, 2000, 6000)
BUDGET_SHIFT = {0: -0.1, 1: 0.0, 2: 0.1}


def _budget_rows():
    rows = []
    for it_i, it in enumerate(BUDGETS):
        for d in (5, 10):
            for seed, shift in BUDGET_SHIFT.items():
                base = 24.0 + it / 10000 + seed / 100
                variants = [("baseline", "", "{}", 0.0, 0.1, 2.0)]
                variants += [(v, "dncnn_dconv", f'{{"init": "{v[6:] or "published"}"}}',
                              BUDGET_GAIN[(v, d)][it_i] + shift, 0.12, 2.5) for v in ("dconv", "dconv_identity")]
                for variant, recipe, kwargs, gain, s_per_it, latency in variants:
                    rows.append(dict(
                        id=f"dncnn-it{it}-d{d}-c32-{variant}-s{seed}", study="dncnn", backbone="dncnn",
                        variant=variant, recipe=recipe, recipe_kwargs=kwargs, grid_axes="train.iterations,depth,channels",
                        **{"train.iterations": it}, depth=d, channels=32, seed=seed, pair=f"p-{it}-{d}-{seed}",
                        cell=f"c-{it}-{d}-{variant}", psnr_CBSD68=base + gain, params=1000 * d, macs=1e8 * d,
                        cost_input="1x3x128x128", iterations=it, train_seconds=s_per_it * it, latency_ms=latency * d,
                    ))
    return rows


def test_budget_gains_spreads_and_x_axis(tmp_path, capsys):
    table = ResultsTable(tmp_path)
    for row in _budget_rows():
        table.append(row)
    df = read_results(tmp_path)
    gains = gain_table(df)
    assert len(gains) == 2 * 2 * 3
    for _, g in gains.iterrows():
        expected = BUDGET_GAIN[(g["variant"], g["depth"])][BUDGETS.index(g["train.iterations"])]
        assert g["gain_CBSD68"] == pytest.approx(expected, abs=1e-9)
        assert g["gain_CBSD68_std"] == pytest.approx(0.1, abs=1e-9) and g["seeds"] == 3
    assert resolve_axis(df, "iterations") == "train.iterations" == resolve_axis(df, "train.iterations")
    with pytest.raises(ValueError, match="x axis 'lr' is not a grid axis .* train.iterations, depth, channels"):
        resolve_axis(df, "lr")

    assert main(["plot", str(tmp_path), "--x", "iterations", "--out", str(tmp_path / "figs")]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "figs" / "gain.png") as im:
        assert im.width > 400
    text = (tmp_path / "figs" / "table.md").read_text()
    # Hand-computed: depth 5, 2,000 iterations, identity init: PSNR 24 + 0.2 + mean(seed)/100 − 0.05 = 24.16 dB;
    # 0.12 s/it; latency 2.5 ms × 5.
    # t(0.975, 2) = 4.3027 times sd / sqrt(3) = 0.1 / sqrt(3): a half-width of 0.248 dB.
    assert ("| 2000 | 5 | 32 | dconv_identity | 3 | 24.16 | -0.05 ± 0.25 | not resolved | 5,000 | 0.500 | 240 | "
            "120.0 | 12.50 |" in text)
    assert "| 600 | 5 | 32 | dconv | 3 | 23.27 | -0.80 ± 0.25 | loss |" in text
    assert "| 600 | 10 | 32 | baseline | 3 | 24.07 |  |  | 10,000 | 1.000 | 60 | 100.0 | 20.00 |" in text
    # Within each depth, the budgets ascend (the variants of one budget side by side).
    lines = [line for line in text.splitlines() if line.startswith("| ") and "| 5 | 32 | dconv |" in line]
    assert [line.split(" | ")[0] for line in lines] == ["| 600", "| 2000", "| 6000"]
    assert main(["plot", str(tmp_path), "--x", "sigma"]) == 2
    assert "x axis 'sigma' is not a grid axis" in capsys.readouterr().err


def test_gain_plot_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(_budget_rows())
    captured = {}
    original = plt.close
    try:
        plt.close = lambda fig=None: captured.setdefault("fig", fig)
        plot_gain(df, tmp_path, x="iterations")
    finally:
        plt.close = original
    ax = captured["fig"].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "training iterations"
    # One line per depth and variant; channels (one value) is left out of the labels.
    labels = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert labels == ["depth=10, dconv", "depth=10, dconv_identity", "depth=5, dconv", "depth=5, dconv_identity"]
    plt.close(captured["fig"])


def test_gains_against_another_variant(tmp_path, capsys):
    df = pd.DataFrame(_budget_rows())
    # Identity start against the published start, seed by seed: the seed shifts cancel.
    gains = gain_table(df, against="dconv")
    identity = gains[gains["variant"] == "dconv_identity"]
    assert len(identity) == 6
    for _, g in identity.iterrows():
        i = BUDGETS.index(g["train.iterations"])
        expected = BUDGET_GAIN[("dconv_identity", g["depth"])][i] - BUDGET_GAIN[("dconv", g["depth"])][i]
        assert g["gain_CBSD68"] == pytest.approx(expected, abs=1e-9)
        assert g["gain_CBSD68_std"] == pytest.approx(0.0, abs=1e-9)
    # The baseline against the published start is the published start's gain with the sign turned.
    baseline = gains[gains["variant"] == "baseline"]
    for _, g in baseline.iterrows():
        expected = -BUDGET_GAIN[("dconv", g["depth"])][BUDGETS.index(g["train.iterations"])]
        assert g["gain_CBSD68"] == pytest.approx(expected, abs=1e-9)
    table = ResultsTable(tmp_path / "t")
    for row in _budget_rows():
        table.append(row)
    assert main(["plot", str(tmp_path / "t"), "--x", "iterations", "--against", "dconv", "--out", str(tmp_path / "f")]) == 0
    assert "PSNR(dconv)" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "t"), "--against", "nope"]) == 2
    assert "--against 'nope' is not a variant" in capsys.readouterr().err

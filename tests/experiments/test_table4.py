"""The ADFNet ablation study (Table 4): its presets, its paired design, and the Table 4 table."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from dynfilter.layers.adfnet_layout import LAYOUTS
from dynfilter.surgery import recipes
from experiments.checkpoint import build_model
from experiments.cli import main
from experiments.config import load_config, study_config
from experiments.results import ResultsTable
from experiments.run import PAIR_FREE
from experiments.sweep import expand
from experiments.table4 import PAPER, ablation_markdown, ablation_table, layout_of

WIDTHS = [8, 8, 8, 8]


@pytest.mark.parametrize("preset", ["smoke", "quick", "standard", "paper"])
def test_every_preset_has_every_table_4_row_against_a_recipe_less_adfnet(preset):
    runs = expand(study_config(load_config(preset), "adfnet")[1])
    seeds = {r.settings.seed for r in runs}
    assert len(runs) == len(LAYOUTS) * len(seeds)
    rows = pd.DataFrame([{"backbone": r.settings.backbone, "recipe": r.settings.recipe or "",
                          "recipe_kwargs": r.settings.recipe_kwargs} for r in runs])
    assert sorted(set(rows.apply(layout_of, axis=1))) == sorted(LAYOUTS) == sorted(PAPER)
    baselines = [r for r in runs if not r.settings.recipe]
    assert {r.settings.backbone for r in baselines} == {"adfnet"} and len(baselines) == len(seeds)
    # One pair per seed: every arm of a seed is compared with that seed's ADFNet, all else equal.
    for seed in seeds:
        arms = [r for r in runs if r.settings.seed == seed]
        assert len({r.pair for r in arms}) == 1
        plain = [{k: v for k, v in r.settings.to_dict().items() if k not in PAIR_FREE} for r in arms]
        assert all(p == plain[0] for p in plain)
    assert len({r.pair for r in runs}) == len(seeds)


def test_preset_widths():
    widths = {p: study_config(load_config(p), "adfnet")[1]["grid"]["widths"] for p in ("quick", "standard", "paper")}
    assert widths == {"quick": [[8, 8, 16, 16]], "standard": [[8, 16, 16, 32]], "paper": [[32, 64, 128, 256]]}


@pytest.mark.parametrize("variant", ["wo_dcb", "wo_mdcb", "wo_dcb_mdcb", "wo_mfi", "encoder", "all"])
def test_ablation_arms_share_the_initial_weights_of_every_common_layer(variant):
    kwargs = {"widths": WIDTHS, "offset_channels": 8}
    baseline = build_model("adfnet", kwargs, seed=3)
    ablated = build_model("adfnet", kwargs, "adfnet_ablation", {"variant": variant}, seed=3)
    plan = recipes.get("adfnet_ablation")(build_model("adfnet", kwargs, seed=3), variant=variant)
    shared = plan.key_map(ablated)
    base, abl = baseline.state_dict(), ablated.state_dict()
    assert shared and ("head.weight" in shared)
    for new, old in shared.items():
        assert torch.equal(abl[new], base[old]), f"{variant}: {new} differs from ADFNet's {old}"
    # The same architecture as the registered ablation, parameter for parameter.
    registered = build_model(LAYOUTS[variant].model, kwargs, seed=3).state_dict()
    assert {k: tuple(v.shape) for k, v in registered.items()} == {k: tuple(v.shape) for k, v in abl.items()}
    other = build_model("adfnet", kwargs, "adfnet_ablation", {"variant": variant}, seed=4).state_dict()
    assert not torch.equal(other["head.weight"], abl["head.weight"])


def _row(variant, recipe_variant, seed, kodak, cbsd, params):
    recipe = "adfnet_ablation" if recipe_variant else ""
    kwargs = f'{{"variant": "{recipe_variant}"}}' if recipe_variant else "{}"
    return dict(id=f"{variant}-{seed}", backbone="adfnet", variant=variant, recipe=recipe, recipe_kwargs=kwargs,
                pair=f"p{seed}", cell=f"c-{variant}", seed=seed, grid_axes="widths", widths="[8, 8, 16, 16]",
                psnr_Kodak24=kodak, psnr_CBSD68=cbsd, params=params, macs=2.0e9)


def _hand_table() -> pd.DataFrame:
    rows = []
    for seed, (k, c) in enumerate([(30.0, 28.0), (29.0, 27.5), (29.5, 27.0)]):
        rows.append(_row("adfnet", None, seed, k, c, 1_000_000))
    # Kodak24 differences -0.10, -0.20, -0.05; CBSD68 -0.30, -0.32, -0.28.
    for seed, (k, c) in enumerate([(29.9, 27.70), (28.8, 27.18), (29.45, 26.72)]):
        rows.append(_row("wo_dcb", "wo_dcb", seed, k, c, 990_000))
    rows.append(_row("dyn_all", "dyn_all", 0, 30.1, 28.1, 1_100_000))  # one seed: no interval
    rows.append(dict(_row("other", None, 0, 1.0, 1.0, 1), backbone="dncnn", pair="q0", cell="d"))
    return pd.DataFrame(rows)


def test_ablation_table_against_hand_computed_differences_and_intervals():
    table = ablation_table(_hand_table())
    assert table["layout"].tolist() == ["wo_dcb", "all", "decoder"]  # the paper's order; DnCNN left out
    wo = table.iloc[0]
    # mean -0.116667, sd 0.076376, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.076376 / sqrt(3) = 0.189725
    assert wo["diff_Kodak24"] == pytest.approx(-0.116667, abs=1e-5)
    assert wo["diff_Kodak24_ci"] == pytest.approx(0.189725, abs=1e-5)
    assert wo["verdict_Kodak24"] == "not resolved"
    # mean -0.30, sd 0.02: half-width 4.302653 * 0.02 / sqrt(3) = 0.049683, all below 0
    assert wo["diff_CBSD68"] == pytest.approx(-0.30, abs=1e-9)
    assert wo["diff_CBSD68_ci"] == pytest.approx(0.049683, abs=1e-5)
    assert wo["diff_CBSD68_high"] == pytest.approx(-0.250317, abs=1e-5) and wo["verdict_CBSD68"] == "loss"
    assert wo["psnr_Kodak24"] == pytest.approx((29.9 + 28.8 + 29.45) / 3)
    assert wo["reference"] == "adfnet" and wo["seeds"] == 3 and wo["params"] == 990_000
    assert (wo["paper_Kodak24"], wo["paper_diff_Kodak24"], wo["paper_params_m"]) == (29.69, -0.12, 7.64)
    assert (wo["paper_CBSD68"], wo["paper_diff_CBSD68"]) == (28.36, -0.07)
    one = table.iloc[1]
    assert one["diff_Kodak24"] == pytest.approx(0.1) and math.isnan(one["diff_Kodak24_ci"])
    assert one["verdict_Kodak24"] == "1 seed: no verdict" and one["paper_diff_CBSD68"] == -0.05
    base = table.iloc[2]
    assert math.isnan(base.get("diff_Kodak24", float("nan"))) and base["paper_Kodak24"] == 29.81
    text = ablation_markdown(_hand_table())
    assert "| w/o DCB | wo_dcb | 3 | 990,000 | 7.64 | 2.000 | 29.38 | −0.12 ± 0.19 | not resolved | 27.20 | −0.30 ± 0.05 | loss | 29.69 | −0.12 | 28.36 | −0.07 |" in text
    assert "| dynamic everywhere | dyn_all | 1 | 1,100,000 | 7.30 |" in text and "+0.10 | 1 seed: no verdict" in text
    assert "| ADFNet (dynamic decoder) | adfnet | 3 | 1,000,000 | 7.65 | 2.000 | 29.50 | reference |" in text
    assert "29.37" in text and "8,628,579" in text
    # Spread: Kodak24 sd 0.076376; t(n-1) * sd / sqrt(n) first <= |paper diff| 0.12 at n = 5 (n = 4: 0.1215);
    # CBSD68 sd 0.02 against 0.07: n = 3 (0.0497; n = 2: 0.1797).
    assert wo["diff_Kodak24_std"] == pytest.approx(0.076376, abs=1e-5)
    assert (wo["seeds_Kodak24"], wo["seeds_CBSD68"]) == (5, 3)
    assert "| w/o DCB | 0.08 | 5 | 0.02 | 3 |" in text
    # Per seed, in the table's order (wo_dcb, dyn_all, adfnet); dyn_all ran one seed.
    assert "| 0 | 29.90 | 30.10 | 30.00 |" in text and "| 1 | 28.80 |  | 29.00 |" in text
    assert "| 2 | 26.72 |  | 27.00 |" in text  # CBSD68


def test_paper_numbers():
    assert list(PAPER) == ["wo_dcb_mdcb", "wo_dcb", "wo_mdcb", "wo_mfi", "all", "encoder", "decoder"]
    assert [r.params_m for r in PAPER.values()] == [7.71, 7.64, 7.72, 7.65, 7.30, 7.65, 7.65]
    assert [r.psnr["Kodak24"] for r in PAPER.values()] == [29.61, 29.69, 29.66, 29.77, 29.77, 29.73, 29.81]
    assert [r.psnr["CBSD68"] for r in PAPER.values()] == [28.33, 28.36, 28.37, 28.40, 28.38, 28.38, 28.43]
    # Every ablation is below ADFNet in the paper.
    assert all(r.psnr[s] < PAPER["decoder"].psnr[s] for k, r in PAPER.items() if k != "decoder" for s in r.psnr)


def test_layout_of_rows_and_bad_variants():
    assert layout_of(pd.Series({"backbone": "adfnet_dyn_encoder", "recipe": ""})) == "encoder"
    assert layout_of(pd.Series({"backbone": "adfnet", "recipe": float("nan")})) == "decoder"
    assert layout_of(pd.Series({"backbone": "dncnn", "recipe": "dncnn_dconv", "recipe_kwargs": "{}"})) is None
    assert ablation_table(pd.DataFrame([dict(_row("b", None, 0, 1, 1, 1), backbone="dncnn")])).empty
    bad = pd.DataFrame([_row("x", "wo_sekg", 0, 1, 1, 1)])
    with pytest.raises(ValueError, match="unknown ADFNet variant.*wo_sekg.*known: wo_dcb_mdcb"):
        ablation_table(bad)


def test_smoke_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["sweep", "adfnet", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    df = ResultsTable(out).read()
    assert len(df) == len(LAYOUTS) and df["psnr_builtin"].notna().all()
    assert main(["plot", str(out)]) == 0
    assert "Table 4:" in capsys.readouterr().out
    text = (out / "plots" / "ablation.md").read_text()
    for layout in LAYOUTS.values():
        assert f"| {layout.row} |" in text
    table = ablation_table(df)
    assert table["seeds"].eq(1).all() and table["verdict_builtin"].dropna().eq("1 seed: no verdict").all()
    # Ours: parameters counted on the models trained, beside the paper's.
    for _, r in table.iterrows():
        model = build_model(LAYOUTS[r["layout"]].model, {"widths": WIDTHS, "offset_channels": 8})
        assert r["params"] == sum(p.numel() for p in model.parameters())

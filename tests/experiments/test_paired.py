"""The paired design: baseline and enhanced arms of one seed share initial weights, patches, noise and
BatchNorm batches; the warm-start protocol branches from the baseline itself; intervals are honest."""

from __future__ import annotations

import math

import pytest
import torch

from dynfilter.surgery import recipes
from experiments import run as run_mod
from experiments import stats
from experiments.checkpoint import build_model, load_checkpoint, model_from_checkpoint, snapshot_path
from experiments.config import load_config, study_config
from experiments.noise import GaussianNoise
from experiments.results import ResultsTable
from experiments.sweep import expand, run_sweep
from experiments.train import PatchSampler

WARM = {"recipe": "dncnn_dconv", "recipe_kwargs": {"keep_conv": True}, "protocol": "warm_start", "branch_at": 3}


def _study(seeds=(0,), iterations=5, variants=None, depth=(4,)):
    overrides = [f"seeds={list(seeds)}", f"train.iterations={iterations}", f"studies.dncnn.grid.depth={list(depth)}",
                 "test.bn_batches=2"]
    study = study_config(load_config("smoke", overrides=overrides), "dncnn")[1]
    if variants is not None:
        study["variants"] = variants
    return study


def _arms(runs, seed=0):
    """``{variant: settings}`` of the runs of one seed."""
    return {r.settings.variant: r.settings for r in runs if r.settings.seed == seed}


@pytest.mark.parametrize("backbone, kwargs, recipe", [
    ("dncnn", {"depth": 6, "channels": 8}, "dncnn_dconv"),
    ("rdn", {"num_blocks": 3, "channels": 8, "layers_per_block": 2}, "rdn_mdcb"),
])
def test_arms_share_the_initial_weights_of_every_common_layer(backbone, kwargs, recipe):
    baseline = build_model(backbone, kwargs, seed=3)
    enhanced = build_model(backbone, kwargs, recipe, seed=3)
    plan = recipes.get(recipe)(build_model(backbone, kwargs, seed=3))
    shared = {new: old for new, old in plan.key_map(enhanced).items()}
    base, enh = baseline.state_dict(), enhanced.state_dict()
    replaced = set(base) - set(shared.values())
    assert replaced and len(shared) >= len(base) - len(replaced) > 0
    for new, old in shared.items():
        assert torch.equal(enh[new], base[old]), f"{new} differs from the baseline's {old}"
    # Independent check: another seed gives other weights, so equality above is not a coincidence.
    other = build_model(backbone, kwargs, recipe, seed=4).state_dict()
    assert not all(torch.equal(other[k], enh[k]) for k in shared if enh[k].is_floating_point())


def _record_stream(monkeypatch):
    """Patch the sampler and the noise to record every clean batch and every noise draw."""
    seen: dict[str, list[torch.Tensor]] = {"clean": [], "noise": []}
    sample, add = PatchSampler.__call__, GaussianNoise.__call__

    def sampler_call(self, generator):
        batch = sample(self, generator)
        seen["clean"].append(batch[0].clone())
        return batch

    def noise_call(self, x, *, seed=None, generator=None):
        noisy = add(self, x, seed=seed, generator=generator)
        seen["noise"].append((noisy - x).clone())
        return noisy

    monkeypatch.setattr(PatchSampler, "__call__", sampler_call)
    monkeypatch.setattr(GaussianNoise, "__call__", noise_call)
    return seen


def _streams(monkeypatch, tmp_path, settings, name):
    seen = _record_stream(monkeypatch)
    run_mod.train_model(settings, tmp_path / name / "checkpoint.pt", progress=False)
    monkeypatch.undo()
    return seen


def test_arms_see_the_same_training_patches(monkeypatch, tmp_path):
    runs = expand(_study(seeds=(0, 1)))
    arms = _arms(runs)
    base = _streams(monkeypatch, tmp_path, arms["baseline"], "base")
    enhanced = _streams(monkeypatch, tmp_path, arms["dconv"], "dconv")
    assert len(base["clean"]) == arms["baseline"].train.iterations == len(enhanced["clean"])
    assert all(torch.equal(a, b) for a, b in zip(base["clean"], enhanced["clean"]))
    other_seed = _streams(monkeypatch, tmp_path, _arms(runs, seed=1)["dconv"], "other")
    assert not torch.equal(other_seed["clean"][0], base["clean"][0]), "another seed must draw other patches"


def test_arms_see_the_same_noise_draws(monkeypatch, tmp_path):
    runs = expand(_study(seeds=(0, 1)))
    arms = _arms(runs)
    base = _streams(monkeypatch, tmp_path, arms["baseline"], "base")
    enhanced = _streams(monkeypatch, tmp_path, arms["dconv"], "dconv")
    assert len(base["noise"]) == 5 and all(torch.equal(a, b) for a, b in zip(base["noise"], enhanced["noise"]))
    # The noise is real N(0, (50/255)^2) noise, not a constant.
    assert abs(float(torch.cat([n.flatten() for n in base["noise"]]).std()) - 50 / 255) < 0.02
    other_seed = _streams(monkeypatch, tmp_path, _arms(runs, seed=1)["baseline"], "other")
    assert not torch.equal(other_seed["noise"][0], base["noise"][0])


def test_arms_reestimate_batchnorm_on_the_same_batches(monkeypatch):
    from experiments import batchnorm

    arms = _arms(expand(_study()))
    inputs: dict[str, list[torch.Tensor]] = {}
    original = batchnorm.recalibrate_batchnorm
    for variant, settings in arms.items():
        def record(model, batches, variant=variant):
            batches = [b.clone() for b in batches]
            inputs[variant] = batches
            return original(model, batches)

        monkeypatch.setattr(batchnorm, "recalibrate_batchnorm", record)
        model = build_model("dncnn", run_mod.model_kwargs(settings), settings.recipe, settings.recipe_kwargs, seed=0)
        assert batchnorm.recalibrate_for_test(model, settings) > 0
    assert len(inputs["baseline"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(inputs["baseline"], inputs["dconv"]))


def test_warm_start_branches_from_the_baseline_and_continues_its_stream(monkeypatch, tmp_path):
    runs = expand(_study(variants={"baseline": {}, "warm": WARM}))
    arms = _arms(runs)
    base_stream = _streams(monkeypatch, tmp_path, arms["baseline"], "base")
    warm_stream = _streams(monkeypatch, tmp_path, arms["warm"], "warm")
    # The warm run trained the baseline to step 3 itself, then continued to 5: the same 5 batches.
    assert len(warm_stream["clean"]) == 5
    assert all(torch.equal(a, b) for a, b in zip(base_stream["clean"], warm_stream["clean"]))
    assert all(torch.equal(a, b) for a, b in zip(base_stream["noise"], warm_stream["noise"]))

    # At the branch point the enhanced model computes exactly what the baseline did at step 3.
    branch = load_checkpoint(tmp_path / "warm" / "branch.pt")
    assert branch["iteration"] == 3
    baseline = build_model("dncnn", branch["model_kwargs"])
    baseline.load_state_dict(branch["model"])
    state = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")
    assert state["iteration"] == 5 and state["recipe_kwargs"] == {"keep_conv": True, "preserve_output": True}
    enhanced = build_model("dncnn", state["model_kwargs"], state["recipe"], state["recipe_kwargs"])
    plan = recipes.dncnn_dconv(baseline, keep_conv=True, preserve_output=True)
    started = plan.apply()
    x = torch.rand(2, 3, 12, 12)
    assert torch.equal(started.eval()(x), baseline.eval()(x))
    # The carried weights kept their Adam moments (the first three steps), the DConv started without.
    key_map = plan.key_map(started)
    names = [n for n, _ in baseline.named_parameters()]
    opt = branch["optimizer"]["state"]
    enhanced.load_state_dict(state["model"])
    assert any(k.endswith("dconv.kernel.weight") or ".dconv." in k for k in started.state_dict())
    from experiments.train import carry_optimizer_state

    carried = carry_optimizer_state(branch["optimizer"], baseline, started, key_map)
    new_names = [n for n, _ in started.named_parameters()]
    for i, name in enumerate(new_names):
        if name in key_map:
            assert torch.equal(carried["state"][i]["exp_avg"], opt[names.index(key_map[name])]["exp_avg"])
            assert int(carried["state"][i]["step"]) == 3
        else:
            assert i not in carried["state"], f"{name} is new and must start without optimizer state"


def test_warm_start_reuses_the_baseline_snapshot_and_matches_retraining(tmp_path):
    study = _study(seeds=(0,), variants={"baseline": {}, "warm": WARM})
    runs = expand(study)
    run_sweep(runs, tmp_path / "a", study["measure"], progress=False, log=lambda *a: None)
    base_id = next(r.id for r in runs if r.settings.variant == "baseline")
    warm_id = next(r.id for r in runs if r.settings.variant == "warm")
    snap = snapshot_path(tmp_path / "a" / "runs" / base_id / "checkpoint.pt", 3)
    assert snap.is_file() and load_checkpoint(snap)["iteration"] == 3
    # The warm run started from that snapshot instead of retraining: its branch file is a copy of it.
    branch = load_checkpoint(tmp_path / "a" / "runs" / warm_id / "branch.pt")
    assert all(torch.equal(branch["model"][k], load_checkpoint(snap)["model"][k]) for k in branch["model"])
    # Retraining the baseline inside the warm run (no snapshot) gives the same final weights.
    warm_only = [r for r in runs if r.id == warm_id]
    run_sweep(warm_only, tmp_path / "b", study["measure"], progress=False, log=lambda *a: None)
    a = load_checkpoint(tmp_path / "a" / "runs" / warm_id / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "runs" / warm_id / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = ResultsTable(tmp_path / "a").read().set_index("id")
    assert rows.loc[warm_id, "protocol"] == "warm_start" and rows.loc[warm_id, "branch_at"] == 3
    assert rows.loc[base_id, "protocol"] == "scratch"
    assert rows.loc[base_id, "pair"] == rows.loc[warm_id, "pair"]


def test_a_tested_checkpoint_reproduces_its_row(tmp_path):
    from experiments.run import evaluate_model

    study = _study()
    runs = expand(study)[:1]
    run_sweep(runs, tmp_path, study["measure"], progress=False, log=lambda *a: None)
    row = ResultsTable(tmp_path).read().iloc[0]
    assert bool(row["bn_recalibrated"]) and row["bn_batches"] == 2
    path = tmp_path / "runs" / runs[0].id / "checkpoint.pt"
    tested, _ = model_from_checkpoint(path)
    assert evaluate_model(tested, runs[0].settings)["psnr_builtin"] == pytest.approx(row["psnr_builtin"], abs=1e-9)
    trained, _ = model_from_checkpoint(path, tested=False)
    key = next(k for k in tested.state_dict() if k.endswith("running_var"))
    assert not torch.equal(trained.state_dict()[key], tested.state_dict()[key])
    assert evaluate_model(trained, runs[0].settings)["psnr_builtin"] != row["psnr_builtin"]


def test_protocol_settings_are_checked():
    with pytest.raises(ValueError, match="0 < branch_at < train.iterations = 5"):
        expand(_study(variants={"baseline": {}, "warm": {**WARM, "branch_at": 5}}))
    with pytest.raises(ValueError, match="needs a recipe"):
        expand(_study(variants={"warm": {"protocol": "warm_start", "branch_at": 2}}))
    with pytest.raises(ValueError, match="unknown protocol 'warm'"):
        expand(_study(variants={"warm": {**WARM, "protocol": "warm"}}))
    with pytest.raises(ValueError, match="branch_at=2 needs protocol: warm_start"):
        expand(_study(variants={"x": {"recipe": "dncnn_dconv", "branch_at": 2}}))


def test_t_quantiles_match_printed_tables():
    # Two-sided 95 % critical values of Student's t, as printed in every statistics textbook.
    printed = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 29: 2.045}
    for df, value in printed.items():
        assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_intervals_cover_the_true_gain_95_percent_of_the_time():
    gen = torch.Generator().manual_seed(0)
    for n in (3, 5):
        trials, covered = 4000, 0
        for _ in range(trials):
            d = (0.2 + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)).tolist()
            iv = stats.paired_interval(d)
            covered += iv.low <= 0.2 <= iv.high
        # Binomial sd at 95 % over 4000 trials is 0.0034; allow 4 of them.
        assert abs(covered / trials - 0.95) < 0.014, (n, covered / trials)


def test_verdicts_read_the_interval():
    assert stats.paired_interval([0.5, 0.6, 0.7]).verdict == "gain"
    assert stats.paired_interval([-0.5, -0.6, -0.7]).verdict == "loss"
    assert stats.paired_interval([-0.1, 0.2, 0.05]).verdict == "not resolved"
    single = stats.paired_interval([0.9])
    assert single.verdict == "1 seed: no verdict" and math.isnan(single.half_width)
    assert stats.paired_interval([0.3, float("nan"), 0.3]).n == 2
    with pytest.raises(ValueError):
        stats.paired_interval([])

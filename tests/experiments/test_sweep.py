"""Sweeps: run ids, grid axes, shards, skip-finished, claims shared between processes, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from experiments import run as run_mod
from experiments._io import try_file_lock
from experiments.cli import main
from experiments.config import apply_overrides, load_config, study_config
from experiments.results import ResultsTable
from experiments.sweep import expand, parse_shard, run_status, run_sweep, select_runs


def _study(overrides=(), name="dncnn"):
    return study_config(load_config("smoke", overrides=overrides), name)[1]


def test_paper_grids_expand_to_the_figure_7_runs():
    for preset in ("quick", "standard", "paper"):
        dncnn = expand(study_config(load_config(preset), "dncnn")[1])
        points = {(r.settings.model["depth"], r.settings.model["channels"], r.settings.recipe) for r in dncnn}
        # The demo covers depth 5 and 10 at width 32 (docs/extension-study.md says why); the others the whole grid.
        depths, widths = ((5, 10), (32,)) if preset == "quick" else ((5, 10, 15), (32, 64))
        assert points == {(d, c, v) for d in depths for c in widths for v in (None, "dncnn_dconv")}
        rdn = expand(study_config(load_config(preset), "rdn")[1])
        points = {(r.settings.model["num_blocks"], r.settings.model["channels"], r.settings.recipe) for r in rdn}
        assert points == {(b, c, v) for b in (3, 6, 9) for c in (16, 32) for v in (None, "rdn_mdcb")}


def test_ids_are_stable_readable_and_follow_the_settings():
    runs = expand(_study())
    ids = [r.id for r in runs]
    assert len(set(ids)) == 4
    assert ids == [r.id for r in expand(_study())], "the same config must give the same ids"
    assert ids[0].startswith("dncnn-d3-c8-baseline-s0-") and ids[1].startswith("dncnn-d3-c8-dconv-s0-")
    # A changed training setting gives new ids everywhere; paths, devices and checkpoint frequency do not.
    assert not set(ids) & {r.id for r in expand(_study(["train.iterations=4"]))}
    same = ["data.data_root=/elsewhere", "train.device=cpu", "train.checkpoint_every=1", "train.threads=1"]
    assert ids == [r.id for r in expand(_study(same))]
    # 50 and 50.0 are the same setting.
    assert ids == [r.id for r in expand(_study(["noise.sigma=50.0"]))]
    # Adding a grid value keeps the ids of the runs that were there.
    wider = expand(_study(["studies.dncnn.grid.depth=[3, 4, 5]"]))
    assert set(ids) < {r.id for r in wider} and len(wider) == 6


def test_pairs_and_cells_link_variants_and_seeds():
    runs = expand(_study(["seeds=[0, 1]"]))
    assert len(runs) == 8
    for r in runs:
        partners = [o for o in runs if o.pair == r.pair and o is not r]
        assert len(partners) == 1
        assert partners[0].settings.seed == r.settings.seed
        assert partners[0].settings.variant != r.settings.variant
        assert partners[0].axes == r.axes
        same_cell = [o for o in runs if o.cell == r.cell]
        assert sorted(o.settings.seed for o in same_cell) == [0, 1]


def test_recipe_kwargs_iterations_and_seed_axes():
    grid = '{depth: [3], train.iterations: [2, 5], recipe_kwargs.kernel_size: [3, 5], seed: [0, 7]}'
    runs = expand(_study([f"studies.dncnn.grid={grid}"]))
    base = [r for r in runs if r.settings.recipe is None]
    enhanced = [r for r in runs if r.settings.recipe]
    assert len(base) == 2 * 2 and len(enhanced) == 2 * 2 * 2, "baselines must not repeat per recipe argument"
    assert all("recipe_kwargs.kernel_size" not in r.axes for r in base)
    assert {r.settings.recipe_kwargs["kernel_size"] for r in enhanced} == {3, 5}
    assert {r.settings.train.iterations for r in runs} == {2, 5}
    assert {r.settings.seed for r in runs} == {0, 7}
    assert any("-it5-" in r.id and "-s7-" in r.id and "-kernel_size5-" in r.id for r in enhanced)
    # Every enhanced run finds its baseline.
    assert all(sum(b.pair == e.pair for b in base) == 1 for e in enhanced)


def test_bad_axes_and_keys_are_refused():
    with pytest.raises(ValueError, match="dotted axis must start with"):
        expand(_study(["studies.dncnn.grid={optim.lr: [1]}"]))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['iters'\] in train"):
        load_config("smoke", overrides=["train.iters=5"])
    with pytest.raises(ValueError, match="unknown study 'resnet'"):
        study_config(load_config("smoke"), "resnet")
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_runs(count):
    runs = expand(_study(["studies.dncnn.grid.depth=[3, 4, 5, 6, 7]", "seeds=[0, 1]"]))
    shards = [{r.id for r in select_runs(runs, shard=(i, count))} for i in range(count)]
    assert set().union(*shards) == {r.id for r in runs}
    assert sum(map(len, shards)) == len(runs), "shards overlap"
    # The config's order does not change which shard a run lands in.
    again = [{r.id for r in select_runs(runs[::-1], shard=(i, count))} for i in range(count)]
    assert again == shards


def test_parse_shard_and_unknown_ids():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/3"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="unknown run id"):
        select_runs(expand(_study()), ["nope"])


def _fake_execute(calls):
    def execute(settings, measure, run_dir, *, progress=None, meta=None, **paired):
        calls.append(meta["run_id"])
        return {"psnr_builtin": 20.0 + len(calls), "params": 10, "train_seconds": 0.0}

    return execute


def test_run_sweep_skips_finished_and_claimed_runs(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(run_mod, "execute", _fake_execute(calls))
    runs = expand(_study())
    with try_file_lock(tmp_path / "runs" / runs[1].id / "claim.lock") as held:
        assert held
        assert run_status(runs[1], tmp_path, set()) == "running"
        outcome = run_sweep(runs, tmp_path, {}, log=lambda *a: None)
    assert outcome["busy"] == [runs[1].id] and len(outcome["done"]) == 3
    outcome = run_sweep(runs, tmp_path, {}, log=lambda *a: None)
    assert outcome["done"] == [runs[1].id] and len(outcome["skipped"]) == 3
    assert sorted(calls) == sorted(r.id for r in runs), "each run must execute exactly once"
    df = ResultsTable(tmp_path).read()
    assert sorted(df["id"]) == sorted(r.id for r in runs)
    row = df.set_index("id").loc[runs[1].id]
    assert row["grid_axes"] == "depth,channels" and row["depth"] == 3 and row["pair"] == runs[1].pair
    assert all(run_status(r, tmp_path, ResultsTable(tmp_path).ids()) == "done" for r in runs)


_WORKER = textwrap.dedent("""
    import glob, sys, time
    from experiments import run as run_mod
    from experiments.config import load_config, study_config
    from experiments.sweep import expand, run_sweep

    def execute(settings, measure, run_dir, *, progress=None, meta=None, **paired):
        time.sleep(0.3)
        with open(sys.argv[2], "a") as f:
            f.write(meta["run_id"] + "\\n")
        return {"psnr_builtin": 1.0, "params": 1, "train_seconds": 0.0}

    run_mod.execute = execute
    open(sys.argv[2] + ".ready", "w").close()  # start together, so that the two really overlap
    deadline = time.time() + 60
    while len(glob.glob(sys.argv[3] + "/*.ready")) < 2 and time.time() < deadline:
        time.sleep(0.05)
    study = study_config(load_config("smoke", overrides=["studies.dncnn.grid.depth=[3, 4, 5]"]), "dncnn")[1]
    run_sweep(expand(study), sys.argv[1], {}, log=lambda *a: None)
""")


def test_two_processes_share_a_results_folder(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / f"log{i}"),
                               str(tmp_path)], cwd=root)
             for i in range(2)]
    assert all(p.wait(120) == 0 for p in procs)
    logs = [(tmp_path / f"log{i}").read_text().split() if (tmp_path / f"log{i}").exists() else [] for i in range(2)]
    assert all(logs), "both processes should have done part of the sweep"
    executed = logs[0] + logs[1]
    ids = ResultsTable(tmp_path / "out").read()["id"].tolist()
    assert len(ids) == 6 and len(set(ids)) == 6, "rows lost or duplicated"
    assert sorted(executed) == sorted(ids), "a run was executed twice or not at all"


def test_sweep_command_runs_lists_and_resumes(tmp_path, capsys):
    out = tmp_path / "res"
    runs = expand(_study(["train.iterations=2"]))
    # A killed run: a checkpoint at iteration 1 of 2 in its folder.
    partial = runs[0].settings.replace(**{"train.iterations": 1})
    run_mod.train_model(partial, out / "runs" / runs[0].id / "checkpoint.pt", progress=False)
    base = ["sweep", "dncnn", "--preset", "smoke", "--out", str(out), "--iters", "2", "--no-progress"]
    assert main([*base, "--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"{runs[0].id} +partial \(1/2\)", listing) and re.search(rf"{runs[1].id} +pending", listing)
    assert main([*base, "--run", runs[0].id]) == 0
    assert "1 run(s) finished now" in capsys.readouterr().out
    df = ResultsTable(out).read()
    assert df["id"].tolist() == [runs[0].id]
    row = df.iloc[0]
    assert row["iterations"] == 2 and row["test_seed"] == 20 and row["torch_version"]
    assert row["params"] > 0 and row["macs"] > 0 and row["latency_ms"] > 0 and 0 < row["ssim_builtin"] < 1
    assert main([*base, "--run", runs[0].id]) == 0
    assert "0 run(s) finished now, 1 already done" in capsys.readouterr().out
    assert list((out / "configs").glob("dncnn-*.yaml"))


def _train_only(calls):
    """``execute`` that really trains (checkpoints and all) but skips testing and measuring."""

    def execute(settings, measure, run_dir, *, progress=None, meta=None, **paired):
        _, result = run_mod.train_model(settings, Path(run_dir) / "checkpoint.pt", progress=False, meta=meta)
        calls.append((meta["run_id"], result.resumed_from))
        return {"psnr_builtin": 1.0, "params": 1, "train_seconds": result.train_seconds}

    return execute


def test_a_longer_budget_continues_its_finished_shorter_twin(tmp_path, monkeypatch):
    from experiments.checkpoint import load_checkpoint

    calls: list = []
    monkeypatch.setattr(run_mod, "execute", _train_only(calls))
    grid = "{train.iterations: [2, 5], depth: [3], channels: [4]}"
    runs = expand(_study([f"studies.dncnn.grid={grid}", "studies.dncnn.variants={dconv: {recipe: dncnn_dconv}}"]))
    short, long = runs
    assert short.trajectory == long.trajectory and short.config_hash != long.config_hash
    other = expand(_study([f"studies.dncnn.grid={grid}", "train.lr=0.01"]))
    assert not {r.trajectory for r in other} & {short.trajectory}, "other settings, other trajectory"

    quiet = dict(log=lambda *a: None)
    run_sweep([long], tmp_path / "fresh", {}, **quiet)  # no twin in the pool: from step 0
    run_sweep([short], tmp_path / "cont", {}, **quiet)
    run_sweep([long], tmp_path / "cont", {}, pool=runs, **quiet)  # as a shard would: the twin is in the pool
    assert calls == [(long.id, 0), (short.id, 0), (long.id, 2)]
    fresh = load_checkpoint(tmp_path / "fresh" / "runs" / long.id / "checkpoint.pt")
    cont = load_checkpoint(tmp_path / "cont" / "runs" / long.id / "checkpoint.pt")
    assert cont["iteration"] == fresh["iteration"] == 5
    for key, value in fresh["model"].items():
        torch.testing.assert_close(cont["model"][key], value, rtol=0, atol=0, msg=key)
    rows = ResultsTable(tmp_path / "cont").read().set_index("id")
    assert rows.loc[long.id, "warm_start"] == short.id and rows.loc[long.id, "trajectory"] == long.trajectory
    assert pd.isna(rows.loc[short.id, "warm_start"]) and rows.loc[long.id, "train_seconds"] > rows.loc[short.id, "train_seconds"]
    # --no-continue trains from step 0 even when a twin is there.
    run_sweep(runs, tmp_path / "cont2", {}, continue_budgets=False, **quiet)
    assert calls[-2:] == [(short.id, 0), (long.id, 0)]


def test_budget_preset_runs_short_budgets_first_on_one_trajectory_each():
    runs = expand(study_config(load_config("budget"), "dncnn")[1])
    seeds = load_config("budget")["seeds"]
    assert len(runs) == 3 * 2 * 3 * len(seeds)
    budgets = [r.settings.train.iterations for r in runs]
    assert budgets == sorted(budgets) and set(budgets) == {600, 2000, 6000}, "all short budgets first"
    inits = {r.settings.variant: r.settings.recipe_kwargs.get("init") for r in runs}
    assert inits == {"baseline": None, "dconv": "published", "dconv_identity": "identity"}
    # Each (depth, variant, seed) is one trajectory with three budgets on it.
    trajectories: dict = {}
    for r in runs:
        trajectories.setdefault(r.trajectory, []).append(r.settings.train.iterations)
    assert len(trajectories) == 2 * 3 * len(seeds) and all(v == [600, 2000, 6000] for v in trajectories.values())
    assert {r.settings.train.lr_step for r in runs} == {200_000}, "the paper's schedule: constant here"


def test_a_damaged_row_is_run_again(tmp_path, capsys):
    out = tmp_path / "res"
    base = ["sweep", "dncnn", "--preset", "smoke", "--out", str(out), "--no-progress",
            "--set", "studies.dncnn.grid.depth=[3]"]
    assert main(base) == 0
    table = ResultsTable(out)
    text = table.path.read_text()
    table.path.write_text(text[: len(text) - 40])  # the last row cut, as by an interrupted copy
    capsys.readouterr()
    assert main([*base, "--list"]) == 0
    listed = capsys.readouterr()
    assert "line 3" in listed.err and "left out" in listed.err
    assert listed.out.count(" done") == 1
    assert main(base) == 0
    ran = capsys.readouterr()
    assert "1 run(s) finished now, 1 already done" in ran.out and "moved to" in ran.err
    assert len(table.read()) == 2 and table.damaged() == []

"""Packed sweeps (--jobs N): the core split, the chains that keep budgets and branches in order, one row per id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.checkpoint import load_checkpoint
from experiments.cli import main
from experiments.config import load_config, study_config
from experiments.packing import chains, job_slots, merge_outcomes, pin, run_packed
from experiments.results import ResultsTable
from experiments.sweep import _partners, expand, run_sweep

from .locks import HAVE_PROC_LOCKS, checkpoint_step, lock_holder


def _study(overrides=(), name="dncnn", preset="smoke"):
    return study_config(load_config(preset, overrides=overrides), name)[1]


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_jobs_split_the_cores_without_oversubscribing(cores):
    for jobs in range(1, 7):
        slots = job_slots(jobs, cores=cores)
        assert [s.index for s in slots] == list(range(jobs))
        assert all(s.threads == max(1, cores // jobs) and s.device is None for s in slots)
        if jobs <= cores:
            assert jobs * slots[0].threads <= cores, "the jobs together use more threads than there are cores"
            assert cores - jobs * slots[0].threads < jobs, "a whole thread per job is left unused"
    # A thread count set in the config wins; devices are dealt out in turn.
    slots = job_slots(4, ["cuda:0", "cuda:1", "cpu"], threads=3, cores=2)
    assert [(s.device, s.threads) for s in slots] == [("cuda:0", 3), ("cuda:1", 3), ("cpu", 3), ("cuda:0", 3)]


def test_bad_jobs_and_devices_are_refused():
    for jobs in (0, -2):
        with pytest.raises(ValueError, match="--jobs takes a positive number"):
            job_slots(jobs)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        job_slots(2, ["cuda:0", "gpu0"])


def test_pin_keeps_the_id_and_sets_device_and_threads():
    run = expand(_study())[0]
    pinned = pin(run, "cpu", 3)
    assert pinned.id == run.id and pinned.settings.train.threads == 3 and pinned.settings.train.device == "cpu"
    assert pin(run) is run
    assert pinned.config_hash == expand(_study(["train.threads=3", "train.device=cpu"]))[0].config_hash


def test_chains_keep_each_trajectory_in_budget_order():
    runs = expand(_study(preset="budget"))
    work = chains(runs)
    assert sorted(r.id for c in work for r in c) == sorted(r.id for r in runs), "a run lost or in two chains"
    for chain in work:
        assert len({r.trajectory for r in chain}) == 1
        budgets = [r.settings.train.iterations for r in chain]
        assert budgets == sorted(budgets) == [600, 2000, 6000]
    assert len(work) == len({r.trajectory for r in runs})


def test_a_warm_started_run_follows_its_baselines_in_their_chain():
    runs = expand(_study(["studies.dncnn.grid={train.iterations: [300, 600], depth: [5, 10], channels: [32]}"],
                         preset="quick"))
    warm = [r for r in runs if r.settings.protocol == "warm_start"]
    assert warm, "the quick preset has warm-started runs"
    by_id = {r.id: c for c in chains(runs) for r in c}
    for run in warm:
        chain = by_id[run.id]
        partners = _partners(run, runs)
        assert partners and all(by_id[p.id] is chain for p in partners), "a baseline it branches from is elsewhere"
        position = [r.id for r in chain].index(run.id)
        assert all([r.id for r in chain].index(p.id) < position for p in partners)
    scratch = [r for r in runs if r.settings.recipe and r.settings.protocol == "scratch"]
    assert all(by_id[r.id][0].trajectory == r.trajectory for r in scratch)


def test_merge_outcomes_counts_each_run_once():
    merged = merge_outcomes([
        {"done": ["a"], "skipped": ["x"], "busy": ["b", "c"]},
        {"done": ["b"], "skipped": ["a", "x"], "busy": ["c"]},
    ])
    assert merged == {"done": ["a", "b"], "skipped": ["x"], "busy": ["c"]}


def test_sweep_command_refuses_options_of_the_other_executor(tmp_path, capsys):
    base = ["sweep", "dncnn", "--preset", "smoke", "--out", str(tmp_path)]
    for extra, message in [
        (["--jobs", "0"], "--jobs takes a positive number"),
        (["--executor", "ray", "--jobs", "2"], "--jobs and --devices are for the local executor"),
        (["--address", "auto"], "--address and --gpus-per-run are for --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run takes a fraction"),
        (["--jobs", "2", "--devices", "cuda:0,tpu"], "unknown device 'tpu'"),
        (["--executor", "ray", "--address", "http://head"], "is not a Ray address"),
    ]:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.skipif(not HAVE_PROC_LOCKS, reason="finds the job to kill through /proc/locks (Linux)")
def test_two_jobs_survive_a_killed_job_and_match_the_one_process_sweep(tmp_path):
    """Two jobs on 2 cores: one thread each, a killed job resumed, budgets continued, every id once, same weights."""
    import os
    import signal
    import threading
    import time

    grid = "{train.iterations: [100, 400], depth: [3], channels: [4]}"
    study = _study([f"studies.dncnn.grid={grid}", "train.checkpoint_every=10"])
    runs = expand(study)
    out, result = tmp_path / "packed", {}

    def drive():
        try:
            run_packed(runs, out, study["measure"], jobs=2, cores=2, study=study, log=lambda *a: None)
        except RuntimeError as exc:
            result["error"] = str(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    iterations = {r.id: r.settings.train.iterations for r in runs}
    deadline, victim = time.time() + 150, None
    while time.time() < deadline and driver.is_alive() and victim is None:
        for lock in out.glob("runs/*/claim.lock"):
            step, pid = checkpoint_step(lock.parent), lock_holder(lock)
            if 0 < step < iterations[lock.parent.name] and pid is not None:
                victim = (lock.parent.name, step, pid)
        time.sleep(0.02)
    assert victim and driver.is_alive(), "the sweep finished before a job could be killed"
    run_id, step, pid = victim
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent == os.getpid(), f"pid {pid} holding the claim of {run_id} is not a job of this sweep"
    os.kill(pid, signal.SIGKILL)
    driver.join(120)
    assert "run the same command again" in result.get("error", ""), "a dead job must stop the sweep with an error"
    assert run_id in result["error"]
    before = ResultsTable(out).ids() if (out / "results.csv").exists() else set()
    assert run_id not in before

    outcome = run_packed(runs, out, study["measure"], jobs=2, cores=2, study=study, log=lambda *a: None)
    assert sorted(outcome["done"]) == sorted({r.id for r in runs} - before)
    assert sorted(outcome["skipped"]) == sorted(before)
    rows = ResultsTable(out).read().set_index("id")
    assert sorted(rows.index) == sorted(r.id for r in runs), "a run is missing or has two rows"
    assert set(rows["train_threads"]) == {1}, "each of 2 jobs on 2 cores must train with 1 thread"
    assert rows.loc[run_id, "resumed_from"] >= step, "the killed job's run restarted instead of resuming"
    for run in runs:
        if run.settings.train.iterations == 400:  # its 100-step twin is in its chain, before it
            twin = next(r for r in runs if r.trajectory == run.trajectory and r is not run)
            assert rows.loc[run.id, "warm_start"] == twin.id and rows.loc[run.id, "resumed_from"] >= 100
    # Killed, resumed and packed, the weights are those of the one-process sweep (same thread count).
    run_sweep([pin(r, threads=1) for r in runs], tmp_path / "serial", study["measure"], log=lambda *a: None)
    for run in runs:
        packed = load_checkpoint(out / "runs" / run.id / "checkpoint.pt")["model"]
        serial = load_checkpoint(tmp_path / "serial" / "runs" / run.id / "checkpoint.pt")["model"]
        for key, value in serial.items():
            torch.testing.assert_close(packed[key], value, rtol=0, atol=0, msg=f"{run.id} {key}")
    again = run_packed(runs, out, study["measure"], jobs=2, cores=2, log=lambda *a: None)
    assert sorted(again["skipped"]) == sorted(r.id for r in runs) and not again["done"]

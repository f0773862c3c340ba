"""The Ray executor: every run once, budgets continued, a killed driver resumed from checkpoints, clear errors.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; the driver under test joins it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import load_checkpoint
from experiments.config import load_config, study_config
from experiments.packing import pin
from experiments.results import ResultsTable
from experiments.sweep import expand, run_sweep

from .locks import HAVE_PROC_LOCKS, checkpoint_step, held_claims, lock_holder

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed: pip install 'dynfilter[distributed]'")
ROOT = Path(__file__).resolve().parents[2]
STEPS = 300  # training steps of each run of the killed sweep


def _study(overrides=()):
    return study_config(load_config("smoke", overrides=overrides), "dncnn")[1]


@pytest.fixture(scope="module")
def cluster():
    """The address of a Ray instance shared by this module's tests (this process is connected to it)."""
    import ray

    from experiments.ray_sweep import connect

    assert connect(num_cpus=2), "a Ray instance was already running in the test process"
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_without_ray_the_error_names_the_extra(monkeypatch):
    from experiments.ray_sweep import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'dynfilter\[distributed\]'"):
        require_ray()


def test_bad_addresses_are_refused_before_ray_starts():
    from experiments.ray_sweep import check_address, connect

    assert check_address("auto") == "auto" and check_address("ray://head:10001") == "ray://head:10001"
    for bad in ("head", "http://head:6379", "head:port", ""):
        with pytest.raises(ValueError, match="is not a Ray address"):
            check_address(bad)
    if importlib.util.find_spec("ray") is None:
        return
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import ray

    if not ray.is_initialized():
        with pytest.raises(ValueError, match=f"nothing answers at 127.0.0.1:{port}"):
            connect(f"127.0.0.1:{port}")


@needs_ray
def test_ray_runs_every_run_once_and_matches_the_local_executor(cluster, tmp_path):
    from experiments.ray_sweep import run_sweep_ray

    grid = "{train.iterations: [2, 4], depth: [3], channels: [4]}"
    study = _study([f"studies.dncnn.grid={grid}", "train.threads=1", "studies.dncnn.variants={dconv: {recipe: dncnn_dconv}}"])
    runs = expand(study)
    outcome = run_sweep_ray(runs, tmp_path / "ray", study["measure"], address=cluster, study=study, log=lambda *a: None)
    assert sorted(outcome["done"]) == sorted(r.id for r in runs)
    rows = ResultsTable(tmp_path / "ray").read().set_index("id")
    assert sorted(rows.index) == sorted(r.id for r in runs), "rows lost or duplicated"
    for run in runs:
        if run.settings.train.iterations == 4:
            twin = next(r for r in runs if r.trajectory == run.trajectory and r is not run)
            assert rows.loc[run.id, "warm_start"] == twin.id and rows.loc[run.id, "resumed_from"] == 2
    run_sweep([pin(r, threads=1) for r in runs], tmp_path / "local", study["measure"], log=lambda *a: None)
    for run in runs:
        remote = load_checkpoint(tmp_path / "ray" / "runs" / run.id / "checkpoint.pt")["model"]
        local = load_checkpoint(tmp_path / "local" / "runs" / run.id / "checkpoint.pt")["model"]
        for key, value in local.items():
            torch.testing.assert_close(remote[key], value, rtol=0, atol=0, msg=f"{run.id} {key}")
    again = run_sweep_ray(runs, tmp_path / "ray", study["measure"], address=cluster, log=lambda *a: None)
    assert sorted(again["skipped"]) == sorted(r.id for r in runs) and not again["done"]


@needs_ray
def test_a_killed_driver_resumes_from_the_checkpoints(cluster, tmp_path):
    from experiments.ray_sweep import run_sweep_ray

    out = tmp_path / "out"
    # Two runs long enough (a checkpoint every 10 steps) that the kill lands inside one.
    flags = ["--set", f"train.iterations={STEPS}", "--set", "train.checkpoint_every=10", "--threads", "1",
             "--set", "studies.dncnn.grid.depth=[3]"]
    command = [sys.executable, "-m", "experiments.cli", "sweep", "dncnn", "--preset", "smoke", "--out", str(out),
               "--no-progress", "--executor", "ray", "--address", cluster, *flags]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 150
    interrupted: dict[str, int] = {}
    while time.time() < deadline and not interrupted and driver.poll() is None:
        finished = ResultsTable(out).ids() if (out / "results.csv").exists() else set()
        for folder in out.glob("runs/*"):
            step = checkpoint_step(folder)
            if folder.name not in finished and 0 < step < STEPS:
                interrupted[folder.name] = step
        time.sleep(0.05)
    assert driver.poll() is None, "the sweep finished before it could be killed; make its runs longer"
    assert interrupted, "no run checkpointed within 150 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    deadline = time.time() + 60
    while held_claims(out) and time.time() < deadline:  # Ray ends the dead driver's tasks
        time.sleep(0.2)
    assert not held_claims(out), "the killed driver's tasks still hold their runs"
    before = ResultsTable(out).ids() if (out / "results.csv").exists() else set()
    assert not set(interrupted) & before

    # The same sweep again, driven from this process (its workers are already up).
    study = _study([f"train.iterations={STEPS}", "train.checkpoint_every=10", "train.threads=1",
                    "studies.dncnn.grid.depth=[3]"])
    runs = expand(study)
    outcome = run_sweep_ray(runs, out, study["measure"], address=cluster, study=study, log=lambda *a: None)
    assert sorted(outcome["done"]) == sorted(set(r.id for r in runs) - before)
    rows = ResultsTable(out).read()
    assert sorted(rows["id"]) == sorted(r.id for r in runs), "a run is missing or has two rows"
    resumed = rows.set_index("id")["resumed_from"]
    for run_id, step in interrupted.items():
        assert resumed[run_id] >= step > 0, f"{run_id} restarted instead of resuming from step {step}"
    assert (resumed[[i for i in rows["id"] if i in before]] == 0).all()


@needs_ray
@pytest.mark.skipif(not HAVE_PROC_LOCKS, reason="finds the worker through /proc/locks (Linux)")
def test_a_killed_worker_is_retried_and_resumes(cluster, tmp_path):
    import threading

    from experiments.ray_sweep import run_sweep_ray

    study = _study([f"train.iterations={STEPS}", "train.checkpoint_every=10", "train.threads=1",
                    "studies.dncnn.grid.depth=[3]", "studies.dncnn.variants={baseline: {}}"])
    (run,) = expand(study)
    out = tmp_path / "out"
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(outcome=run_sweep_ray(
        [run], out, study["measure"], address=cluster, study=study, log=lambda *a: None)))
    driver.start()
    lock = out / "runs" / run.id / "claim.lock"
    deadline, step, worker = time.time() + 150, 0, None
    while time.time() < deadline and driver.is_alive() and not (step and worker):
        step = checkpoint_step(lock.parent)
        worker = lock_holder(lock) if lock.is_file() else None
        time.sleep(0.05)
    assert step and worker and driver.is_alive(), "the run finished before its worker could be killed"
    title = Path(f"/proc/{worker}/cmdline").read_bytes()
    assert b"ray::" in title or b"default_worker" in title, f"pid {worker} holding the claim is no Ray worker: {title!r}"
    os.kill(worker, signal.SIGKILL)
    driver.join(180)
    assert not driver.is_alive() and result["outcome"]["done"] == [run.id]
    rows = ResultsTable(out).read()
    assert rows["id"].tolist() == [run.id], "the retried run has no row or two"
    assert rows["resumed_from"].iloc[0] >= step > 0, "the retried task restarted instead of resuming"

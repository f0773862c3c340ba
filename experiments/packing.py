"""Packing a sweep: several runs at once on one machine, each job a process of its own (``--jobs N``).

A DnCNN-5/32 fills neither a large GPU nor many CPU cores, so running several runs side by side
raises a sweep's throughput. The unit of work is a *chain* (:func:`chains`): the runs that feed each
other (the budgets of one trajectory, a baseline and the runs warm-started from its snapshots) run in
order in one process, so packing keeps the budget continuation and the branch snapshots of
:func:`experiments.sweep.run_sweep`. Each chain is one call of ``run_sweep``, whose claims, results
table and resume from checkpoints give the guarantees: every run once in the table, a killed job's
runs resume when the sweep runs again.

CPU threads. The jobs share the cores: each job's torch uses ``cores // jobs`` threads (at least 1;
:func:`job_slots`) unless ``train.threads`` is set, and every row records it as ``train_threads``.
Devices: job ``i`` trains on ``devices[i % len(devices)]`` (``train.device`` when none are given).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .run import PAIR_FREE, resolve_device, settings_hash
from .settings import Measure, section
from .sweep import Run, keep_config, log_summary, run_sweep

__all__ = [
    "JobSlot",
    "available_cores",
    "job_slots",
    "pin",
    "chains",
    "merge_outcomes",
    "unfinished",
    "run_chain",
    "run_packed",
]


@dataclass(frozen=True)
class JobSlot:
    """Where one job of a packed sweep runs.

    Attributes:
        index: the job's number, ``0 … jobs-1``.
        device: the device its runs train on (``None``: each run's ``train.device``).
        threads: torch CPU threads of its runs (``None``: each run's ``train.threads``).
    """

    index: int
    device: str | None
    threads: int | None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as ``taskset`` or Slurm set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_slots(
    jobs: int, devices: Sequence[str] = (), threads: int | None = None, cores: int | None = None
) -> list[JobSlot]:
    """The slot of each of ``jobs`` jobs: its device and its share of the ``cores``.

    Args:
        jobs: how many runs at once (``>= 1``).
        devices: devices to deal out in turn (``cuda:0,cuda:1``); empty keeps each run's ``train.device``.
        threads: torch threads per job as the config sets them (``train.threads``); ``None`` splits the
            cores: ``max(1, cores // jobs)``, so the jobs together do not oversubscribe the machine.
        cores: CPU cores to split (default :func:`available_cores`).

    >>> [(s.device, s.threads) for s in job_slots(3, ["cuda:0", "cuda:1"], cores=16)]
    [('cuda:0', 5), ('cuda:1', 5), ('cuda:0', 5)]
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs takes a positive number of runs to run at once, got {jobs!r}")
    for device in devices:
        resolve_device(device)  # an unknown name fails here, before any process starts
    share = threads if threads is not None else max(1, (cores or available_cores()) // jobs)
    devices = list(devices)
    return [JobSlot(i, devices[i % len(devices)] if devices else None, share) for i in range(jobs)]


def pin(run: Run, device: str | None = None, threads: int | None = None) -> Run:
    """``run`` with its training on ``device`` with ``threads`` CPU threads (``None`` keeps the setting).

    Neither is part of a run's id (:data:`experiments.run._UNHASHED`), so the run keeps its id and row.
    """
    changes: dict[str, Any] = {}
    if device is not None:
        changes["train.device"] = device
    if threads is not None:
        changes["train.threads"] = threads
    return dataclasses.replace(run, settings=run.settings.replace(**changes)) if changes else run


def chains(runs: Iterable[Run]) -> list[list[Run]]:
    """``runs`` grouped into the chains that run in order in one process.

    A chain holds the runs of one trajectory (same settings but ``train.iterations``), shortest budget
    first, so each continues the one before (:func:`experiments.sweep.warm_start`). A ``warm_start``
    run joins the chain of its baseline (the baseline's settings at any budget), after the baselines, so
    the snapshot at its branch point is there when it starts. Chains come in the order of their first
    run in ``runs``.

    >>> from experiments.config import load_config, study_config
    >>> from experiments.sweep import expand
    >>> [len(c) for c in chains(expand(study_config(load_config("budget"), "dncnn")[1]))][:3]
    [3, 3, 3]
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        settings = run.settings
        if settings.protocol == "warm_start" or (not settings.recipe and settings.protocol == "scratch"):
            # A baseline and the runs branched from it share this lineage; a lone baseline is one trajectory.
            key = "lineage-" + settings_hash(settings, drop=(*PAIR_FREE, "train.iterations"))
        else:
            key = "trajectory-" + run.trajectory
        groups.setdefault(key, []).append(run)
    return [sorted(group, key=lambda r: (r.settings.protocol == "warm_start", r.settings.train.iterations))
            for group in groups.values()]


def merge_outcomes(outcomes: Iterable[Mapping[str, list[str]]]) -> dict[str, list[str]]:
    """One outcome from those of several ``run_sweep`` calls (ids in first-seen order).

    A run done by one call is done, whatever the others saw; one skipped as finished is not busy.
    ``busy`` is left with the runs that a process outside the sweep holds.

    >>> merge_outcomes([{"done": ["a"], "skipped": [], "busy": ["b"]}, {"done": ["b"], "skipped": ["a"], "busy": []}])
    {'done': ['a', 'b'], 'skipped': [], 'busy': []}
    """
    outcomes = list(outcomes)
    merged: dict[str, list[str]] = {}
    seen: set[str] = set()
    for key in ("done", "skipped", "busy"):
        ids = dict.fromkeys(i for o in outcomes for i in o.get(key, ()) if i not in seen)
        merged[key] = list(ids)
        seen |= set(ids)
    return merged


def unfinished(runs: list[Run], out: str | os.PathLike) -> tuple[list[Run], list[str]]:
    """``runs`` not yet in ``<out>/results.csv``, and the ids of those that are (so no process starts for them)."""
    from .results import ResultsTable

    table = ResultsTable(out)
    table.report_damaged()  # their runs are not finished: they run again
    finished = table.ids()
    return [r for r in runs if r.id not in finished], [r.id for r in runs if r.id in finished]


def run_chain(
    chain: list[Run],
    out: str | os.PathLike,
    measure: Measure,
    pool: list[Run],
    study: Mapping[str, Any] | None,
    continue_budgets: bool,
    slot: JobSlot,
    log: Any = print,
) -> dict[str, list[str]]:
    """Run one chain in this process on ``slot`` (a job of :func:`run_packed`, a task of the Ray executor)."""
    from .run import cpu_threads

    with cpu_threads(slot.threads):
        return run_sweep([pin(r, slot.device, slot.threads) for r in chain], out, measure, pool=pool, study=study,
                         continue_budgets=continue_budgets, progress=False, log=log, summary=False)


# The job's slot and the sweep's fixed arguments, set once per process by _start_job.
_JOB: dict[str, Any] = {}


def _start_job(slots: Any, sweep: dict[str, Any]) -> None:
    import torch

    slot = slots.get()  # each process of the pool takes its own slot once
    if slot.threads is not None:
        torch.set_num_threads(slot.threads)
    _JOB.update(sweep, slot=slot)


def _job_log(text: str) -> None:
    slot = _JOB["slot"]
    prefix = f"[job {slot.index}{' ' + slot.device if slot.device else ''}] "
    print(prefix + str(text).replace("\n", "\n" + prefix), flush=True)


def _job_chain(chain: list[Run]) -> dict[str, list[str]]:
    job = _JOB
    return run_chain(chain, job["out"], job["measure"], job["pool"], job["study"], job["continue_budgets"],
                     job["slot"], log=_job_log)


def run_packed(
    runs: list[Run],
    out: str | os.PathLike,
    measure: Measure | Mapping[str, Any],
    *,
    jobs: int,
    devices: Sequence[str] = (),
    cores: int | None = None,
    pool: Iterable[Run] | None = None,
    study: Mapping[str, Any] | None = None,
    continue_budgets: bool = True,
    log: Any = print,
) -> dict[str, list[str]]:
    """:func:`~experiments.sweep.run_sweep` with ``jobs`` runs at once, each job a process of its own.

    Args:
        runs: the runs to do.
        out: the results folder, shared by all jobs.
        measure: the ``measure`` section.
        jobs: processes, each running one chain (:func:`chains`) at a time.
        devices: devices dealt out to the jobs (:func:`job_slots`).
        cores: CPU cores to split between the jobs (default: those this process may use).
        pool, study, continue_budgets: as for :func:`~experiments.sweep.run_sweep`.
        log: where the driver's lines go (the jobs print theirs, prefixed ``[job i]``).

    Returns:
        dict: ids by outcome, as :func:`~experiments.sweep.run_sweep` returns them.

    Raises:
        RuntimeError: when a chain failed or a job process died; the runs finished so far are in the
            table and the killed ones resume from their checkpoints when the sweep runs again.
    """
    import multiprocessing

    out = Path(out).resolve()
    measure = measure if isinstance(measure, Measure) else section(Measure, measure)
    pool = list(runs if pool is None else pool)
    threads = {r.settings.train.threads for r in runs}
    slots = job_slots(jobs, devices, threads.pop() if len(threads) == 1 else None, cores)
    todo, skipped = unfinished(runs, out)
    work = chains(todo)
    if not work:
        log_summary(runs, out, log)
        return {"done": [], "skipped": skipped, "busy": []}
    keep_config(out, study, runs, measure)
    jobs = min(jobs, len(work))
    log(f"{len(todo)} unfinished run(s) in {len(work)} chain(s) on {jobs} job(s): "
        + ", ".join(f"job {s.index} {s.device or 'train.device'} x{s.threads} threads" for s in slots[:jobs]))
    # spawn: a fresh interpreter per job, safe with CUDA and with threads in the driver.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for slot in slots[:jobs]:
        queue.put(slot)
    sweep = {"out": out, "measure": measure, "pool": pool, "study": study, "continue_budgets": continue_budgets}
    outcomes: list[Mapping[str, list[str]]] = []
    failed: list[tuple[list[str], BaseException]] = []
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_job, initargs=(queue, sweep)) as executor:
        pending: dict[Future, list[Run]] = {executor.submit(_job_chain, chain): chain for chain in work}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                chain = pending.pop(future)
                try:
                    outcomes.append(future.result())
                except BrokenProcessPool as exc:  # a job was killed: the pool cannot go on
                    failed.extend(([r.id for r in c], exc) for c in [chain, *pending.values()])
                    pending.clear()
                    break
                except Exception as exc:  # noqa: BLE001 - collected and raised below, after the other chains
                    failed.append(([r.id for r in chain], exc))
    outcome = merge_outcomes([{"skipped": skipped}, *outcomes])
    if failed:
        ids = [i for chain, _ in failed for i in chain if i not in outcome["done"]]
        raise RuntimeError(
            f"{len(failed)} chain(s) of the sweep in {out} did not finish ({failed[0][1]!r}); runs not done: {ids}. "
            "Finished runs are in the table; run the same command again to resume the rest from their checkpoints"
        ) from failed[0][1]
    log_summary(runs, out, log)
    return outcome

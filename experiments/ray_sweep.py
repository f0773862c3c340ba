"""A sweep's runs as Ray tasks (``dynfilter sweep ... --executor ray``), on this machine or a cluster.

Each chain of runs (:func:`experiments.packing.chains`) is one Ray task that calls
:func:`~experiments.sweep.run_sweep` on it, so the guarantees are the local executor's: run ids,
claims (``flock``), one row per id in ``<out>/results.csv``, resume from ``<out>/runs/<id>/``. The
results folder must therefore be one that every node sees at the same path (a shared file system
with ``flock``, as for ``--shard``), and every node needs this package installed.

- No address: a Ray instance of this machine's cores is started for the sweep, without a dashboard,
  and stopped at the end. With an address, the driver joins that cluster (``auto`` for one started
  on this machine by ``ray start --head``).
- A task reserves ``train.threads`` CPUs (1 when unset) and trains with that many torch threads; with
  ``gpus_per_run > 0`` it reserves that fraction of a GPU (0.25: four runs per GPU) and trains on
  the GPU Ray gives it.
- A killed worker: Ray runs its task again (``max_retries``), which resumes from the checkpoints. A
  killed driver: Ray ends its tasks; the same command resumes.

Ray is an optional dependency: ``pip install 'dynfilter[distributed]'``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .packing import JobSlot, available_cores, chains, merge_outcomes, run_chain, unfinished
from .settings import Measure, section
from .sweep import Run, keep_config, log_summary

__all__ = ["MAX_RETRIES", "require_ray", "check_address", "connect", "run_sweep_ray"]

# Times Ray runs a task again after its worker died; each try resumes from the checkpoints.
MAX_RETRIES = 3

_ADDRESS = re.compile(r"auto|local|(ray://)?[A-Za-z0-9._-]+:\d{1,5}")


def require_ray() -> Any:
    """The ``ray`` module, or a ``ValueError`` that says which extra installs it."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray, which is not installed: pip install 'dynfilter[distributed]' "
            "(or leave out --executor to run the sweep here with the local executor)"
        ) from None
    return ray


def check_address(address: str) -> str:
    """``address`` if it has the form of a Ray address: ``auto``, ``host:port`` or ``ray://host:port``.

    >>> check_address("10.0.0.2:6379")
    '10.0.0.2:6379'
    """
    if not _ADDRESS.fullmatch(address.strip()):
        raise ValueError(
            f"--address {address!r} is not a Ray address: give the head node's host:port (e.g. 10.0.0.2:6379, "
            "as `ray start --head` prints it), ray://host:10001 for Ray Client, or auto for a cluster started on "
            "this machine"
        )
    return address.strip()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``address`` (``ray.init`` would retry for minutes)."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"--address {address!r}: nothing answers at {host}:{port} ({exc.strerror or exc}); is the "
                         "Ray head running there (`ray start --head` prints its address)?") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray; returns whether it started an instance it should stop afterwards.

    Args:
        address: a cluster to join (:func:`check_address`); ``None`` starts a local instance, unless this
            process is already connected (then that connection is used, as in tests).
        num_cpus: CPUs of the local instance (default: this machine's available cores).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus or available_cores(), include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
        return True
    address = check_address(address)
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"--address {address!r}: could not join a Ray cluster there ({exc})") from None
    return False


def _task(chain: list[Run], out: str, measure: Measure, pool: list[Run], study: Mapping[str, Any] | None,
          continue_budgets: bool, slot: JobSlot) -> dict[str, list[str]]:
    """One chain of runs on a Ray worker."""
    def log(text: str) -> None:
        print(text, flush=True)  # Ray forwards a worker's output to the driver, prefixed with the worker

    return run_chain(chain, out, measure, pool, study, continue_budgets, slot, log=log)


def run_sweep_ray(
    runs: list[Run],
    out: str | os.PathLike,
    measure: Measure | Mapping[str, Any],
    *,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    num_cpus: int | None = None,
    pool: Iterable[Run] | None = None,
    study: Mapping[str, Any] | None = None,
    continue_budgets: bool = True,
    log: Any = print,
) -> dict[str, list[str]]:
    """:func:`~experiments.sweep.run_sweep` with the runs' chains as Ray tasks.

    Args:
        runs: the runs to do.
        out: the results folder (made absolute: the workers have other working folders).
        measure: the ``measure`` section.
        address: the cluster to join; ``None`` starts a local instance (see :func:`connect`).
        gpus_per_run: fraction of a GPU each task reserves; 0 trains on ``train.device`` without
            reserving one.
        num_cpus: CPUs of a local instance (default: this machine's cores).
        pool, study, continue_budgets: as for :func:`~experiments.sweep.run_sweep`.
        log: where the driver's lines go.

    Returns:
        dict: ids by outcome, as :func:`~experiments.sweep.run_sweep` returns them.

    Raises:
        RuntimeError: when a task failed (after its retries); the other tasks finish first, and the
            runs not done resume from their checkpoints when the sweep runs again.
    """
    if gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run takes a fraction of a GPU >= 0 (e.g. 0.25), got {gpus_per_run}")
    ray = require_ray()
    if address is not None:
        check_address(address)  # a typo fails now, even when there is nothing left to run
    out = Path(out).resolve()
    measure = measure if isinstance(measure, Measure) else section(Measure, measure)
    pool = list(runs if pool is None else pool)
    todo, skipped = unfinished(runs, out)
    work = chains(todo)
    if not work:
        log_summary(runs, out, log)
        return {"done": [], "skipped": skipped, "busy": []}
    started = connect(address, num_cpus)
    try:
        keep_config(out, study, runs, measure)
        threads = max(r.settings.train.threads or 1 for r in todo)
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it reserved, which the task then sees as cuda:0.
        slot = JobSlot(0, "cuda" if gpus_per_run > 0 else None, threads)
        remote = ray.remote(_task).options(num_cpus=threads, num_gpus=gpus_per_run, max_retries=MAX_RETRIES)
        log(f"{len(todo)} unfinished run(s) in {len(work)} chain(s) as Ray tasks of {threads} CPU(s)"
            f"{f' and {gpus_per_run:g} GPU' if gpus_per_run else ''} each; cluster: {ray.cluster_resources()}")
        shared = ray.put(pool)
        pending = {remote.remote(chain, str(out), measure, shared, study, continue_budgets, slot): chain
                   for chain in work}
        outcomes: list[Mapping[str, list[str]]] = []
        failed: list[tuple[list[str], BaseException]] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            chain = pending.pop(ready[0])
            try:
                outcomes.append(ray.get(ready[0]))
                log(f"[{len(outcomes) + len(failed)}/{len(work)} chains] done: {', '.join(r.id for r in chain)}")
            except Exception as exc:  # noqa: BLE001 - a task's error, raised below after the other tasks
                failed.append(([r.id for r in chain], exc))
                log(f"[{len(outcomes) + len(failed)}/{len(work)} chains] failed: {', '.join(r.id for r in chain)}")
    finally:
        if started:
            ray.shutdown()
    outcome = merge_outcomes([{"skipped": skipped}, *outcomes])
    if failed:
        ids = [i for chain, _ in failed for i in chain]
        raise RuntimeError(
            f"{len(failed)} Ray task(s) of the sweep in {out} failed; runs not done: {ids}. Finished runs are in "
            f"the table; run the same command again to resume the rest from their checkpoints. First error: "
            f"{failed[0][1]}"
        ) from failed[0][1]
    log_summary(runs, out, log)
    return outcome

"""Sweeps: expand a study's grid × variants × seeds into runs with stable ids, and run the unfinished ones.

Grid axes. A plain axis name is a backbone argument (``depth``, ``channels``, ``num_blocks``); a
dotted name sets any run setting: ``train.iterations``, ``train.lr``, ``noise.sigma``,
``recipe_kwargs.<block argument>`` (passed through the surgery recipe to the inserted blocks;
dropped for variants without a recipe), ``model.<argument>``; ``seed`` sweeps seeds (else the
study's ``seeds`` list does). So a budget or initialisation study is a config file, e.g.
``grid: {depth: [5], train.iterations: [600, 3000], recipe_kwargs.init: [published, identity]}``.

Run ids. ``<backbone>-<axis tokens>-<variant>-s<seed>-<hash>``, e.g. ``dncnn-d5-c32-dconv-s0-3f9a1c2e``:
the hash covers every setting that changes the result (not paths, devices, thread counts or
checkpoint frequency), so editing a config gives new ids instead of reusing stale rows, while the
runs it does not touch keep theirs.

Nothing lost, nothing twice. A finished run is a row in ``<out>/results.csv``
(:class:`~experiments.results.ResultsTable`); its working folder ``<out>/runs/<id>/`` holds the
checkpoint a killed run resumes from. A process claims a run with a non-blocking ``flock`` on
``<out>/runs/<id>/claim.lock`` and skips runs claimed by others, so several processes may share a
folder, with or without ``--shard i/n``.

Budgets continue each other. Nothing in training depends on the total number of iterations (the
learning-rate schedule counts steps), so a run is its shorter-budget twin continued: before a run
starts, the sweep copies in the final checkpoint of the longest finished twin (same settings except
``train.iterations``; see :attr:`Run.trajectory`) when that is further along than its own, and
training resumes from it. The weights are those of an uninterrupted run (bit-identical on the same
machine and thread count), ``train_seconds`` still counts every step, and the row's ``warm_start``
names the twin. Listing ``train.iterations`` first in the grid runs the short budgets first.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import itertools
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ._io import atomic_write, remove_stale_temporaries, try_file_lock
from .checkpoint import snapshot_path
from .config import set_path
from .results import DamagedRowWarning
from .run import PAIR_FREE, canonical, check_protocol, settings_hash
from .settings import RUN_SECTIONS, Measure, RunSettings, plain, section

__all__ = [
    "Run",
    "ABBREVIATIONS",
    "make_run",
    "expand",
    "parse_shard",
    "select_runs",
    "run_status",
    "warm_start",
    "keep_config",
    "run_sweep",
    "log_summary",
]

# Axis name (its last dotted part) -> the short token used in run ids.
ABBREVIATIONS: dict[str, str] = {
    "depth": "d",
    "channels": "c",
    "num_blocks": "b",
    "layers_per_block": "l",
    "growth": "g",
    "iterations": "it",
    "sigma": "n",
    "batch_size": "bs",
    "patch_size": "p",
}

_AXIS_ROOTS: tuple[str, ...] = ("model", "recipe_kwargs") + RUN_SECTIONS


@dataclass(frozen=True)
class Run:
    """One run of a sweep.

    Attributes:
        id: stable, file-name-safe identifier.
        study: the study that listed it.
        axes: grid value of each axis that applies to this run, in grid order.
        settings: the run settings (see :mod:`experiments.run`).
        pair: hash shared with the run of the other variants at the same grid point and seed
            (the baseline an enhanced run is compared with).
        cell: hash shared with the same configuration at other seeds.
        config_hash: hash of ``settings`` (the last part of ``id``).
        trajectory: hash shared with the same run at other ``train.iterations``: such runs follow one
            training trajectory, so a longer one may continue a shorter one's final checkpoint.

    >>> from experiments.config import load_config, study_config
    >>> run = expand(study_config(load_config("smoke"), "dncnn")[1])[1]
    >>> run.axes, run.settings.recipe
    ({'depth': 3, 'channels': 8}, 'dncnn_dconv')
    """

    id: str
    study: str
    axes: dict[str, Any]
    settings: dict[str, Any]
    pair: str
    cell: str
    config_hash: str = field(default="")
    trajectory: str = field(default="")


def _token(axis: str, value: Any) -> str:
    key = axis.split(".")[-1]
    text = json.dumps(canonical(value)) if isinstance(value, (dict, list)) else str(canonical(value))
    text = re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"
    if len(text) > 16:
        text = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{ABBREVIATIONS.get(key, key)}{text}"


def _axis_path(axis: str) -> str:
    if axis == "seed":
        return "seed"
    if "." not in axis:
        return f"model.{axis}"
    if axis.split(".")[0] not in _AXIS_ROOTS:
        raise ValueError(
            f"grid axis {axis!r}: a dotted axis must start with one of {', '.join(_AXIS_ROOTS)} "
            f"(e.g. train.iterations), or be a plain backbone argument such as depth"
        )
    return axis


def make_run(settings: RunSettings, study: str = "", axes: Mapping[str, Any] | None = None) -> Run:
    """The :class:`Run` of ``settings``: its id (from the grid ``axes`` it sits at) and its linking hashes.

    >>> make_run(RunSettings("dncnn", model={"depth": 5}), axes={"depth": 5}).id.rsplit("-", 1)[0]
    'dncnn-d5-baseline-s0'
    """
    axes = dict(axes or {})
    plain = settings.to_dict()
    digest = settings_hash(plain)
    tokens = [_token(a, v) for a, v in axes.items() if a != "seed"]
    run_id = "-".join([settings.backbone, *tokens, settings.variant, f"s{settings.seed}", digest])
    run_id = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return Run(
        run_id, study, axes, settings,
        pair=settings_hash(plain, drop=PAIR_FREE),
        cell=settings_hash(plain, drop=("seed",)),
        config_hash=digest,
        trajectory=settings_hash(plain, drop=("train.iterations",)),
    )


def expand(study: Mapping[str, Any]) -> list[Run]:
    """All runs of a study (from :func:`experiments.config.study_config`): grid × variants × seeds.

    Axes under ``recipe_kwargs.`` do not apply to variants without a recipe; those runs appear once.
    Every run's settings are checked (:class:`~experiments.settings.RunSettings`), grid values included.

    >>> from experiments.config import load_config, study_config
    >>> runs = expand(study_config(load_config("smoke"), "dncnn")[1])
    >>> len(runs), runs[0].id.split("-")[:4]
    (4, ['dncnn', 'd3', 'c8', 'baseline'])
    """
    grid = dict(study.get("grid") or {})
    paths = {axis: _axis_path(axis) for axis in grid}
    seeds = [None] if "seed" in grid else list(study.get("seeds") or [0])
    runs: dict[str, Run] = {}
    for values in itertools.product(*grid.values()) if grid else [()]:
        point = dict(zip(grid, values))
        for variant, spec in study["variants"].items():
            recipe = spec.get("recipe")
            for seed in seeds:
                settings: dict[str, Any] = {
                    "backbone": study["backbone"],
                    "model": copy.deepcopy(dict(study.get("model") or {})),
                    "variant": variant,
                    "recipe": recipe,
                    "recipe_kwargs": copy.deepcopy(dict(spec.get("recipe_kwargs") or {})),
                    "protocol": spec.get("protocol") or "scratch",
                    "branch_at": spec.get("branch_at"),
                    "seed": seed,
                    **{section: copy.deepcopy(dict(study[section])) for section in RUN_SECTIONS},
                }
                axes = {}
                for axis, value in point.items():
                    if paths[axis].startswith("recipe_kwargs.") and recipe is None:
                        continue
                    if axis == "seed":
                        settings["seed"] = value
                    else:
                        set_path(settings, paths[axis], value)
                    axes[axis] = value
                where = f"study {study['name']!r} variant {variant!r}"
                try:
                    typed = RunSettings.from_dict(settings)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                check_protocol(typed, where)
                run = make_run(typed, study["name"], axes)
                runs.setdefault(run.id, run)
    return list(runs.values())


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 ≤ i < n`` (Slurm's ``$SLURM_ARRAY_TASK_ID/$N``)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def select_runs(runs: list[Run], run_ids: Iterable[str] = (), shard: tuple[int, int] | None = None) -> list[Run]:
    """The runs named in ``run_ids`` (all if none), then shard ``i`` of ``n``: every n-th id in sorted order.

    The shards of ``n`` partition the runs: every run is in exactly one shard, whatever the order of
    the config. Order within the result follows the config.
    """
    by_id = {r.id: r for r in runs}
    wanted = list(run_ids)
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise ValueError(f"unknown run id(s) {unknown}; `dynfilter sweep ... --list` shows the ids")
    chosen = [by_id[i] for i in dict.fromkeys(wanted)] if wanted else list(runs)
    if shard is not None:
        index, count = shard
        ids = sorted(r.id for r in chosen)
        mine = set(ids[index::count])
        chosen = [r for r in chosen if r.id in mine]
    return chosen


def _run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.id


def run_status(run: Run, out: str | Path, finished: set[str]) -> str:
    """``done``, ``running`` (claimed by a live process), ``partial (k/N)`` (a checkpoint exists) or ``pending``."""
    if run.id in finished:
        return "done"
    folder = _run_dir(Path(out), run)
    if (folder / "claim.lock").exists():
        with try_file_lock(folder / "claim.lock") as free:
            if not free:
                return "running"
    ckpt = folder / "checkpoint.pt"
    if ckpt.is_file():
        from .checkpoint import load_checkpoint

        try:
            state = load_checkpoint(ckpt)
            return f"partial ({state['iteration']}/{run.settings.train.iterations})"
        except ValueError:
            return "partial (unreadable checkpoint)"
    return "pending"


def _checkpoint_iteration(path: Path) -> int:
    """Steps completed in the checkpoint at ``path``; 0 when there is none or it cannot be read."""
    from .checkpoint import load_checkpoint

    if not path.is_file():
        return 0
    try:
        return int(load_checkpoint(path)["iteration"])
    except ValueError:
        return 0


def warm_start(run: Run, pool: Iterable[Run], out: str | Path, finished: set[str]) -> str | None:
    """Copy into ``run``'s folder the final checkpoint of its longest finished shorter-budget twin.

    A twin is a run of ``pool`` with the same :attr:`Run.trajectory` and fewer ``train.iterations``
    whose row is in the table (``finished``) and whose checkpoint completed those iterations. It is
    used only when it is further along than ``run``'s own checkpoint. Call it while holding ``run``'s
    claim.

    The twin's id is kept in ``continued_from.txt`` beside the copy, so a run killed after the copy
    still names its twin when it resumes.

    Returns:
        str | None: the id of the twin continued from (now or before), or ``None``.
    """
    out = Path(out)
    target = run.settings.train.iterations
    marker = _run_dir(out, run) / "continued_from.txt"
    own = _checkpoint_iteration(_run_dir(out, run) / "checkpoint.pt")
    twins = sorted(
        (r.settings.train.iterations, r.id, r)
        for r in pool
        if r.trajectory == run.trajectory and r.id != run.id and r.id in finished
        and own < r.settings.train.iterations < target
    )
    for iterations, _, twin in reversed(twins):
        source = _run_dir(out, twin) / "checkpoint.pt"
        if _checkpoint_iteration(source) != iterations:
            continue
        atomic_write(marker, lambda tmp: tmp.write_text(twin.id))
        atomic_write(_run_dir(out, run) / "checkpoint.pt", lambda tmp: shutil.copyfile(source, tmp))
        return twin.id
    return marker.read_text().strip() if own and marker.is_file() else None


def _partners(run: Run, pool: list[Run]) -> list[Run]:
    """The baseline runs whose trajectory passes through ``run``'s branch point (warm-started runs only).

    The paired baseline and its twins at other budgets: same settings as the baseline of ``run`` except
    ``train.iterations``.
    """
    if run.settings.protocol != "warm_start":
        return []
    lineage = settings_hash(run.settings, drop=(*PAIR_FREE, "train.iterations"))
    return [r for r in pool if not r.settings.recipe and r.settings.protocol == "scratch"
            and settings_hash(r.settings, drop=(*PAIR_FREE, "train.iterations")) == lineage
            and r.settings.train.iterations >= run.settings.branch_at]


def keep_config(out: Path, study: Mapping[str, Any] | None, runs: list[Run], measure: Measure) -> Path:
    """Write the config a sweep ran with to ``<out>/configs/<study>-<hash>.yaml`` (once per distinct text)."""
    from .config import dump_config

    name = study["name"] if study is not None else runs[0].study or "runs"
    content = {"study": name, **{k: plain(v) for k, v in study.items() if k != "name"}} if study is not None else {
        "study": name, "measure": plain(measure), "runs": {r.id: r.settings.to_dict() for r in runs}}
    text = dump_config(content)
    path = out / "configs" / f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.yaml"
    if path.is_file():
        kept = path.read_bytes()
        if kept == text.encode():
            return path
        # Its name is the hash of what it must hold, so any other content is damage from outside.
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another process of this sweep moved it first
            pass
        warnings.warn(f"config snapshot {path} did not hold the config its name is the hash of "
                      f"({len(kept)} bytes, {len(text.encode())} expected); moved to {aside} and written again",
                      DamagedRowWarning, stacklevel=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def run_sweep(
    runs: list[Run],
    out: str | Path,
    measure: Measure | Mapping[str, Any],
    *,
    pool: Iterable[Run] | None = None,
    study: Mapping[str, Any] | None = None,
    continue_budgets: bool = True,
    progress: bool | None = None,
    log: Any = print,
    summary: bool = True,
) -> dict[str, list[str]]:
    """Run every unfinished, unclaimed run of ``runs`` and append its row to ``<out>/results.csv``.

    Args:
        runs: the runs to do, in order.
        out: the results folder.
        measure: the ``measure`` section (MACs and latency input), typed or as a mapping.
        pool: where to look for shorter-budget twins to continue (see :func:`warm_start`); defaults to
            ``runs``. Pass the whole study when ``runs`` is a shard.
        study: the resolved study config (:func:`experiments.config.study_config`); a copy is kept in
            ``<out>/configs/<study>-<hash>.yaml``. Without it, the settings of ``runs`` are kept there.
        continue_budgets: continue shorter-budget twins; ``False`` trains every run from step 0.
        progress: tqdm bars (``None``: when stderr is a terminal).
        log: where progress lines go.
        summary: end with the study's gains so far (:func:`~experiments.gains.summary_text`); the
            executors that run several ``run_sweep`` at once print it once themselves.

    Returns:
        dict: ids by outcome, ``{"done": [...], "skipped": [...], "busy": [...]}`` (skipped: finished
        before; busy: claimed by another process).
    """
    from .results import ResultsTable
    from .run import execute

    out = Path(out)
    measure = measure if isinstance(measure, Measure) else section(Measure, measure)
    if runs:
        keep_config(out, study, runs, measure)
    table = ResultsTable(out)
    table.report_damaged()  # their runs are not finished: they run again, and the rows are set aside
    pool = list(runs if pool is None else pool)
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "busy": []}
    # Baselines keep a snapshot at each branch point of a warm-started partner, which then starts from it.
    snapshots: dict[str, set[int]] = {}
    sources: dict[str, list[Path]] = {}
    for run in pool:
        for base in _partners(run, pool):
            snapshots.setdefault(base.id, set()).add(run.settings.branch_at)
            sources.setdefault(run.id, []).append(snapshot_path(_run_dir(out, base) / "checkpoint.pt",
                                                                run.settings.branch_at))
    for n, run in enumerate(runs, 1):
        if run.id in table.ids():
            outcome["skipped"].append(run.id)
            continue
        folder = _run_dir(out, run)
        with try_file_lock(folder / "claim.lock") as mine:
            if not mine:
                log(f"[{n}/{len(runs)}] {run.id}: claimed by another process, skipped")
                outcome["busy"].append(run.id)
                continue
            if run.id in table.ids():  # finished by another process between the check and the claim
                outcome["skipped"].append(run.id)
                continue
            log(f"[{n}/{len(runs)}] {run.id}")
            for stale in remove_stale_temporaries(folder):  # a killed write's, ours: we hold the claim
                log(f"    removed {stale.name}, left by an interrupted write")
            source = warm_start(run, pool, out, table.ids()) if continue_budgets else None
            if source is not None:
                log(f"    continuing {source} (same trajectory, shorter budget)")
            row = execute(run.settings, measure, folder, progress=progress, meta={"run_id": run.id},
                          snapshots=sorted(snapshots.get(run.id, ())), branch_sources=sources.get(run.id, ()))
            row = {
                "id": run.id,
                "study": run.study,
                "grid_axes": ",".join(a for a in run.axes if a != "seed"),
                **{a: v for a, v in run.axes.items() if a != "seed"},
                "pair": run.pair,
                "cell": run.cell,
                "config_hash": run.config_hash,
                "trajectory": run.trajectory,
                "warm_start": source or "",
                **row,
            }
            table.append(row)
            psnr = ", ".join(f"{k[5:]} {v:.2f} dB" for k, v in row.items() if k.startswith("psnr_"))
            log(f"    {psnr}; {row['params']:,} params; {row['train_seconds']:.0f} s training")
            outcome["done"].append(run.id)
    if summary:
        log_summary(runs, out, log)
    return outcome


def log_summary(runs: Iterable[Run], out: str | Path, log: Any = print) -> None:
    """Log the gains so far of the studies of ``runs`` from ``<out>/results.csv`` (nothing if it has no rows)."""
    from .gains import summary_text
    from .results import ResultsTable

    studies = {r.study for r in runs}
    finished = ResultsTable(out).read()
    if not finished.empty and "study" in finished:
        log(summary_text(finished[finished["study"].isin(studies)]))

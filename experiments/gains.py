"""Gains from a results table: paired per seed, summarised over seeds with a 95 % interval and a verdict.

The gain of an enhanced run is ``PSNR(enhanced) − PSNR(baseline)`` against the baseline run with the
same ``pair`` key: same backbone, grid point, training settings and seed, so the two arms share their
initial weights, training patches and noise (see :mod:`experiments.sweep`). Over the seeds of one
configuration the gains are summarised by :func:`experiments.stats.paired_interval`: the mean, a
Student t interval, the number of seeds and a verdict (``gain``, ``loss``, ``not resolved``; one seed
gets none). A baseline is a row with no surgery ``recipe``.

This module computes; :mod:`experiments.plot` draws and writes tables; the sweep prints
:func:`summary_text` at the end of a run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .stats import LEVEL, paired_interval

__all__ = [
    "result_sets",
    "grid_axes",
    "resolve_axis",
    "is_baseline",
    "is_reference",
    "seed_gains",
    "gain_table",
    "cell_table",
    "summary_text",
]


def is_baseline(df: pd.DataFrame) -> pd.Series:
    """Rows without a surgery recipe (all rows of a table that records none)."""
    if "recipe" not in df:
        return pd.Series(True, index=df.index)
    return df["recipe"].isna() | (df["recipe"].astype(str).str.strip() == "")


def is_reference(df: pd.DataFrame, against: str | None = None) -> pd.Series:
    """The rows gains are measured against: the baselines, or the variant called ``against``.

    ``against`` compares two enhanced variants seed by seed (e.g. two initialisations of the same block).
    """
    if against is None:
        return is_baseline(df)
    if against not in set(df["variant"].astype(str)):
        raise ValueError(f"--against {against!r} is not a variant of this results table; its variants are: "
                         f"{', '.join(dict.fromkeys(df['variant'].astype(str)))}")
    return df["variant"].astype(str) == against


def result_sets(df: pd.DataFrame) -> list[str]:
    """The test sets with a ``psnr_<set>`` column, in table order."""
    return [c[len("psnr_"):] for c in df.columns if c.startswith("psnr_") and not c.endswith("_base")]


def grid_axes(df: pd.DataFrame) -> list[str]:
    """The grid axes of ``df``'s rows, in the order the first row lists them, then any others."""
    out: list[str] = []
    for text in df["grid_axes"].dropna().astype(str):
        out += [a for a in text.split(",") if a and a not in out]
    return [a for a in out if a in df.columns]


def resolve_axis(df: pd.DataFrame, name: str) -> str:
    """The grid axis of ``df`` called ``name``, or whose last dotted part is ``name``.

    >>> resolve_axis(pd.DataFrame({"grid_axes": ["train.iterations,depth"], "train.iterations": [1], "depth": [5]}),
    ...              "iterations")
    'train.iterations'
    """
    axes = grid_axes(df)
    if name in axes:
        return name
    found = [a for a in axes if a.split(".")[-1] == name]
    if len(found) != 1:
        why = "is ambiguous" if found else "is not a grid axis"
        raise ValueError(f"x axis {name!r} {why} of this results table; its grid axes are: {', '.join(axes) or 'none'}")
    return found[0]


def seed_gains(df: pd.DataFrame, against: str | None = None) -> pd.DataFrame:
    """One row per enhanced run that has a finished baseline (or ``against`` run, see :func:`is_reference`):
    its ``gain_<set>`` for each test set.

    Columns: ``backbone``, ``variant``, ``cell``, ``pair``, ``seed``, ``protocol`` (when recorded), the
    grid axes and ``gain_<set>``.
    """
    sets = result_sets(df)
    reference = is_reference(df, against)
    base = df[reference]
    enhanced = df[~reference]
    if base["pair"].duplicated().any():
        raise ValueError("the table holds several reference rows with the same pair key; it is not a sweep table")
    merged = enhanced.merge(base[["pair"] + [f"psnr_{s}" for s in sets]], on="pair", suffixes=("", "_base"))
    for s in sets:
        merged[f"gain_{s}"] = merged[f"psnr_{s}"] - merged[f"psnr_{s}_base"]
    keep = ["backbone", "variant", "cell", "pair"] + [c for c in ("seed", "protocol") if c in merged] + grid_axes(df)
    return merged[keep + [f"gain_{s}" for s in sets]]


def gain_table(df: pd.DataFrame, level: float = LEVEL, against: str | None = None) -> pd.DataFrame:
    """One row per enhanced configuration (backbone, variant, cell): its paired gain over seeds.

    Columns: ``backbone``, ``variant``, ``cell``, ``protocol`` (when recorded), the grid axes, ``seeds``,
    and for each test set ``gain_<set>`` (mean), ``gain_<set>_std`` (sample std, ``nan`` for one seed),
    ``gain_<set>_ci`` (half-width of the ``level`` t interval), ``gain_<set>_low`` / ``_high`` and
    ``verdict_<set>``. Enhanced runs without a finished baseline are left out. ``against`` measures
    against that variant instead of the baselines.

    >>> rows = [dict(id=i, backbone="m", variant=v, recipe=r, pair=p, cell=c, seed=s, grid_axes="depth",
    ...              depth=5, psnr_x=q) for i, v, r, p, c, s, q in [
    ...     (1, "base", "", "p0", "b", 0, 30.0), (2, "dyn", "r", "p0", "e", 0, 30.5),
    ...     (3, "base", "", "p1", "b", 1, 29.0), (4, "dyn", "r", "p1", "e", 1, 29.7)]]
    >>> g = gain_table(pd.DataFrame(rows)).iloc[0]
    >>> [round(float(g[k]), 4) for k in ("gain_x", "gain_x_std", "gain_x_ci")], g["verdict_x"], int(g["seeds"])
    ([0.6, 0.1414, 1.2706], 'not resolved', 2)
    """
    sets = result_sets(df)
    merged = seed_gains(df, against)
    axes = grid_axes(df)
    rows = []
    for (backbone, variant, cell), group in merged.groupby(["backbone", "variant", "cell"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "variant": variant, "cell": cell}
        if "protocol" in group:
            row["protocol"] = group["protocol"].iloc[0]
        row.update({a: group[a].iloc[0] for a in axes})
        row["seeds"] = len(group)
        for s in sets:
            interval = paired_interval(group[f"gain_{s}"], level)
            row[f"gain_{s}"] = interval.mean
            row[f"gain_{s}_std"] = interval.sd
            row[f"gain_{s}_ci"] = interval.half_width
            row[f"gain_{s}_low"] = interval.low
            row[f"gain_{s}_high"] = interval.high
            row[f"verdict_{s}"] = interval.verdict
        rows.append(row)
    return pd.DataFrame(rows)


def cell_table(df: pd.DataFrame, against: str | None = None) -> pd.DataFrame:
    """One row per configuration (cell): PSNR/SSIM, params, MACs and training time averaged over seeds.

    ``baseline`` marks the reference cells (baselines, or variant ``against``); ``baseline_cell`` names,
    for another cell, the cell of its reference (empty if none finished).
    """
    sets = result_sets(df)
    numeric = [f"psnr_{s}" for s in sets] + [f"ssim_{s}" for s in sets if f"ssim_{s}" in df.columns]
    numeric += [c for c in ("params", "macs", "latency_ms", "train_seconds", "iterations") if c in df.columns]
    axes = grid_axes(df)
    base = is_reference(df, against)
    base_cell = dict(zip(df.loc[base, "pair"], df.loc[base, "cell"]))
    rows = []
    for (backbone, variant, cell), group in df.groupby(["backbone", "variant", "cell"], sort=False):
        baseline = bool(base[group.index[0]])
        row: dict[str, Any] = {"backbone": backbone, "variant": variant, "cell": cell, "baseline": baseline,
                               "baseline_cell": "" if baseline else base_cell.get(group["pair"].iloc[0], "")}
        row.update({a: group[a].iloc[0] for a in axes})
        row["seeds"] = len(group)
        row.update({c: group[c].mean() for c in numeric})
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(df: pd.DataFrame, level: float = LEVEL, against: str | None = None) -> str:
    """Plain-text lines, one per enhanced configuration and test set: gain, interval, seeds, verdict.

    >>> rows = [dict(id=i, backbone="m", variant=v, recipe=r, pair=p, cell=c, seed=0, grid_axes="depth",
    ...              depth=5, psnr_x=q) for i, v, r, p, c, q in [(1, "base", "", "p0", "b", 30.0),
    ...                                                          (2, "dyn", "r", "p0", "e", 30.5)]]
    >>> print(summary_text(pd.DataFrame(rows)))
    paired gain = PSNR(enhanced) - PSNR(baseline), same seed; mean over seeds ± 95 % Student t half-width
      m depth=5 dyn  x: +0.50 dB (1 seed: no verdict)
    """
    if not {"backbone", "variant", "cell", "pair"} <= set(df.columns) or df.empty:
        return "no result rows of a sweep yet: no gains"
    gains = gain_table(df, level, against)
    if gains.empty:
        return "no enhanced run has a finished baseline yet: no gains"
    sets = result_sets(df)
    lines = [f"paired gain = PSNR(enhanced) - PSNR({against or 'baseline'}), same seed; mean over seeds ± "
             f"{100 * level:.0f} % Student t half-width"]
    axes = grid_axes(df)
    for _, g in gains.iterrows():
        point = " ".join(f"{a.split('.')[-1]}={_plain(g[a])}" for a in axes if a in g and not pd.isna(g[a]))
        for s in sets:
            if pd.isna(g[f"gain_{s}"]):
                continue
            n = int(g["seeds"])
            value = f"{g[f'gain_{s}']:+.2f}" + (f" ± {g[f'gain_{s}_ci']:.2f}" if n > 1 else "")
            seeds = f"{n} seeds, " if n > 1 else ""
            lines.append(f"  {g['backbone']} {point} {g['variant']}  {s}: {value} dB ({seeds}{g[f'verdict_{s}']})")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

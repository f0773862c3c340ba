"""Plots and tables from a results table (and nothing else): gain vs a grid axis, PSNR vs cost, markdown.

The gain of an enhanced run is ``PSNR(enhanced) − PSNR(baseline)`` against the baseline run with the
same ``pair`` key (same backbone, grid point, training settings and seed; see
:mod:`experiments.sweep`). Gains are then averaged over seeds: the mean, the sample standard
deviation (error bars) and the number of seeds. A baseline is a row with no surgery ``recipe``.

The gain plot's x axis is any grid axis (``x="iterations"`` for a budget study; a name matches an axis
exactly or by its last dotted part, so ``iterations`` is ``train.iterations``), by default the first.

Figures use matplotlib's Agg backend and are written as PNG and SVG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from .results import read_results

__all__ = [
    "result_sets",
    "resolve_axis",
    "seed_gains",
    "gain_table",
    "cell_table",
    "markdown_table",
    "plot_gain",
    "plot_cost",
    "plot_results",
]

_AXIS_LABELS = {
    "depth": "depth (conv layers)",
    "num_blocks": "number of blocks",
    "channels": "channels",
    "train.iterations": "training iterations",
}


def _is_baseline(df: pd.DataFrame) -> pd.Series:
    return df["recipe"].isna() | (df["recipe"].astype(str).str.strip() == "")


def result_sets(df: pd.DataFrame) -> list[str]:
    """The test sets with a ``psnr_<set>`` column, in table order."""
    return [c[len("psnr_"):] for c in df.columns if c.startswith("psnr_")]


def _axes(df: pd.DataFrame) -> list[str]:
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
    axes = _axes(df)
    if name in axes:
        return name
    found = [a for a in axes if a.split(".")[-1] == name]
    if len(found) != 1:
        why = "is ambiguous" if found else "is not a grid axis"
        raise ValueError(f"x axis {name!r} {why} of this results table; its grid axes are: {', '.join(axes) or 'none'}")
    return found[0]


def seed_gains(df: pd.DataFrame) -> pd.DataFrame:
    """One row per enhanced run that has a finished baseline: its ``gain_<set>`` for each test set.

    Columns: ``backbone``, ``variant``, ``cell``, ``pair``, ``seed``, the grid axes and ``gain_<set>``.
    """
    sets = result_sets(df)
    base = df[_is_baseline(df)]
    enhanced = df[~_is_baseline(df)]
    if base["pair"].duplicated().any():
        raise ValueError("the table holds several baseline rows with the same pair key; it is not a sweep table")
    merged = enhanced.merge(base[["pair"] + [f"psnr_{s}" for s in sets]], on="pair", suffixes=("", "_base"))
    for s in sets:
        merged[f"gain_{s}"] = merged[f"psnr_{s}"] - merged[f"psnr_{s}_base"]
    keep = ["backbone", "variant", "cell", "pair"] + (["seed"] if "seed" in merged else []) + _axes(df)
    return merged[keep + [f"gain_{s}" for s in sets]]


def gain_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per enhanced configuration (backbone, variant, cell): gains over seeds.

    Columns: ``backbone``, ``variant``, ``cell``, the grid axes, ``seeds``, and for each test set
    ``gain_<set>`` (mean), ``gain_<set>_std`` (sample std, 0 for one seed). Enhanced runs without a
    finished baseline are left out.

    >>> rows = [dict(id=i, backbone="m", variant=v, recipe=r, pair=p, cell=c, seed=s, grid_axes="depth",
    ...              depth=5, psnr_x=q) for i, v, r, p, c, s, q in [
    ...     (1, "base", "", "p0", "b", 0, 30.0), (2, "dyn", "r", "p0", "e", 0, 30.5),
    ...     (3, "base", "", "p1", "b", 1, 29.0), (4, "dyn", "r", "p1", "e", 1, 29.7)]]
    >>> g = gain_table(pd.DataFrame(rows))
    >>> round(float(g["gain_x"].iloc[0]), 3), round(float(g["gain_x_std"].iloc[0]), 4), int(g["seeds"].iloc[0])
    (0.6, 0.1414, 2)
    """
    sets = result_sets(df)
    merged = seed_gains(df)
    axes = _axes(df)
    rows = []
    for (backbone, variant, cell), group in merged.groupby(["backbone", "variant", "cell"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "variant": variant, "cell": cell}
        row.update({a: group[a].iloc[0] for a in axes})
        row["seeds"] = len(group)
        for s in sets:
            row[f"gain_{s}"] = group[f"gain_{s}"].mean()
            row[f"gain_{s}_std"] = group[f"gain_{s}"].std(ddof=1) if len(group) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (cell): PSNR/SSIM, params, MACs and training time averaged over seeds.

    ``baseline_cell`` names, for an enhanced cell, the cell of its baseline (empty if none finished).
    """
    sets = result_sets(df)
    numeric = [f"psnr_{s}" for s in sets] + [f"ssim_{s}" for s in sets if f"ssim_{s}" in df.columns]
    numeric += [c for c in ("params", "macs", "latency_ms", "train_seconds", "iterations") if c in df.columns]
    axes = _axes(df)
    base_cell = dict(zip(df.loc[_is_baseline(df), "pair"], df.loc[_is_baseline(df), "cell"]))
    rows = []
    for (backbone, variant, cell), group in df.groupby(["backbone", "variant", "cell"], sort=False):
        baseline = bool(_is_baseline(group).iloc[0])
        row: dict[str, Any] = {"backbone": backbone, "variant": variant, "cell": cell, "baseline": baseline,
                               "baseline_cell": "" if baseline else base_cell.get(group["pair"].iloc[0], "")}
        row.update({a: group[a].iloc[0] for a in axes})
        row["seeds"] = len(group)
        row.update({c: group[c].mean() for c in numeric})
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and not spec:
        return str(int(value))
    return format(value, spec) if spec else str(value)


def _line_axes(df: pd.DataFrame, backbone: str, x: str | None = None) -> tuple[str | None, list[str]]:
    """``(x axis, other axes)`` of one backbone's rows: ``x`` (resolved) first if given, else the first axis."""
    sub = df[df["backbone"] == backbone]
    axes = _axes(sub)
    if x is not None:
        x = resolve_axis(sub, x)
        return x, [a for a in axes if a != x]
    return (axes[0] if axes else None), axes[1:]


def markdown_table(df: pd.DataFrame, x: str | None = None) -> str:
    """Per backbone, one line per configuration: grid values, variant, seeds, PSNR (and gain) per
    test set, parameters, MACs, training time (and per iteration) and test latency.

    Lines are grouped by the axes other than ``x`` (see :func:`plot_gain`), ``x`` varying fastest.
    """
    sets = result_sets(df)
    cells = cell_table(df)
    gains = gain_table(df)
    per_iteration = {"train_seconds", "iterations"} <= set(cells.columns)
    latency = "latency_ms" in cells.columns
    lines: list[str] = []
    for backbone in dict.fromkeys(cells["backbone"]):
        sub = cells[cells["backbone"] == backbone]
        x_axis, others = _line_axes(df, backbone, x)
        axes = [a for a in [x_axis, *others] if a]
        sub = sub.sort_values(by=[*axes[::-1], "baseline"], ascending=[True] * len(axes) + [False], kind="stable") if axes else sub
        head = [*axes, "variant", "seeds"]
        head += [f"PSNR {s} (dB)" for s in sets] + [f"gain {s} (dB)" for s in sets]
        head += ["params", "GMACs", "train (s)"] + ["train (ms/it)"] * per_iteration + ["latency (ms)"] * latency
        lines += [f"**{backbone}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in sub.iterrows():
            gain = gains[(gains["backbone"] == backbone) & (gains["cell"] == r["cell"])] if len(gains) else gains
            cells_ = [_fmt(r[a]) for a in axes] + [str(r["variant"]), _fmt(r["seeds"])]
            cells_ += [_fmt(r[f"psnr_{s}"], ".2f") for s in sets]
            for s in sets:
                if r["baseline"] or gain.empty:
                    cells_.append("")
                else:
                    g, sd = gain[f"gain_{s}"].iloc[0], gain[f"gain_{s}_std"].iloc[0]
                    cells_.append(f"{g:+.2f}" + (f" ± {sd:.2f}" if int(gain["seeds"].iloc[0]) > 1 else ""))
            cells_ += [_fmt(r.get("params", float("nan")), ",.0f"), _fmt(r.get("macs", float("nan")) / 1e9, ".3f"),
                       _fmt(r.get("train_seconds", float("nan")), ".0f")]
            if per_iteration:
                cells_.append(_fmt(1000 * r["train_seconds"] / r["iterations"], ".1f") if r["iterations"] else "")
            if latency:
                cells_.append(_fmt(r["latency_ms"], ".2f"))
            lines.append("| " + " | ".join(cells_) + " |")
        lines.append("")
    return "\n".join(lines)


def _label(row: pd.Series, others: list[str], variant: bool) -> str:
    parts = [f"{_AXIS_LABELS.get(a, a.split('.')[-1]).split(' ')[0]}={_fmt(row[a])}"
             for a in others if a in row and not pd.isna(row[a])]
    if variant:
        parts.append(str(row["variant"]))
    return ", ".join(parts) or str(row["variant"])


def _figure(nrows: int, ncols: int, w: float = 4.4, h: float = 3.4) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return plt, fig, axs


def _save(plt: Any, fig: Any, out: Path, stem: str) -> list[Path]:
    fig.tight_layout()
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def _log_scale(values: pd.Series) -> bool:
    """A log x axis for positive values spanning a factor of 10 or more (training budgets, not depths)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(v)) and bool((v > 0).all()) and v.max() >= 10 * v.min()


def plot_gain(df: pd.DataFrame, out: str | os.PathLike, x: str | None = None) -> list[Path]:
    """Gain vs grid axis ``x`` (default: the first, i.e. depth / number of blocks), one line per value of
    the other axes (and per variant when there are several), one panel per backbone (columns) and test
    set (rows). Error bars are the seed standard deviation; small dots are the single seeds. A log
    scale is used when the x values span a factor of 10 or more; axes with a single value are left out
    of the legend."""
    gains = gain_table(df)
    if gains.empty:
        raise ValueError("no enhanced run has a finished baseline with the same settings and seed; nothing to plot")
    per_seed = seed_gains(df)
    sets = result_sets(df)
    backbones = list(dict.fromkeys(gains["backbone"]))
    plt, fig, axs = _figure(len(sets), len(backbones))
    for j, backbone in enumerate(backbones):
        sub = gains[gains["backbone"] == backbone]
        dots = per_seed[per_seed["backbone"] == backbone]
        x_axis, others = _line_axes(df, backbone, x)
        several = sub["variant"].nunique() > 1
        keys = [a for a in others if a in sub] + (["variant"] if several else [])
        shown = [a for a in others if a in sub and sub[a].nunique(dropna=True) > 1]
        for i, s in enumerate(sets):
            ax = axs[i][j]
            groups = sub.groupby(keys, sort=True, dropna=False) if keys else [((), sub)]
            for _, line in groups:
                line = line.sort_values(x_axis) if x_axis else line
                xs = line[x_axis] if x_axis else range(len(line))
                yerr = line[f"gain_{s}_std"] if (line["seeds"] > 1).any() else None
                drawn = ax.errorbar(xs, line[f"gain_{s}"], yerr=yerr, marker="o", capsize=3,
                                    label=_label(line.iloc[0], shown, several))
                if x_axis and (line["seeds"] > 1).any():
                    points = dots[dots["cell"].isin(line["cell"])]
                    ax.scatter(points[x_axis], points[f"gain_{s}"], s=9, alpha=0.5, color=drawn.lines[0].get_color(),
                               zorder=3)
            ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
            ax.set_xlabel(_AXIS_LABELS.get(x_axis, x_axis) if x_axis else "configuration")
            ax.set_ylabel(f"PSNR gain on {s} (dB)")
            variants = ", ".join(dict.fromkeys(sub["variant"]))
            ax.set_title(f"{backbone}: {variants} − baseline", fontsize=10)
            if x_axis:
                if _log_scale(sub[x_axis]):
                    ax.set_xscale("log")
                    ax.minorticks_off()
                ticks = sorted(set(sub[x_axis]))
                ax.set_xticks(ticks)
                ax.set_xticklabels([_fmt(t) for t in ticks])
            ax.legend(fontsize=8)
    return _save(plt, fig, Path(out), "gain")


def plot_cost(df: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """PSNR vs MACs and PSNR vs parameters (log x), one marker per backbone and variant, seeds averaged;
    a thin line joins each enhanced configuration to its baseline."""
    from matplotlib.ticker import NullFormatter

    cells = cell_table(df)
    by_cell = cells.set_index("cell")
    sets = result_sets(df)
    plt, fig, axs = _figure(len(sets), 2)
    markers = "os^vDP*Xh"
    groups = list(cells.groupby(["backbone", "variant"], sort=False))
    macs_label = f"MACs (input {df['cost_input'].iloc[0]})" if "cost_input" in df else "MACs"
    for i, s in enumerate(sets):
        for j, (cost, label) in enumerate((("macs", macs_label), ("params", "parameters"))):
            ax = axs[i][j]
            for _, e in cells[cells["baseline_cell"] != ""].iterrows():
                b = by_cell.loc[e["baseline_cell"]]
                ax.plot([b[cost], e[cost]], [b[f"psnr_{s}"], e[f"psnr_{s}"]], color="0.75", lw=0.8, zorder=0)
            for k, ((backbone, variant), g) in enumerate(groups):
                ax.scatter(g[cost], g[f"psnr_{s}"], marker=markers[k % len(markers)], label=f"{backbone} {variant}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel(f"PSNR on {s} (dB)")
            ax.legend(fontsize=8)
    return _save(plt, fig, Path(out), "cost")


def plot_results(
    results: str | os.PathLike, out: str | os.PathLike | None = None, x: str | None = None
) -> dict[str, Any]:
    """Read a results table and write ``gain.{png,svg}``, ``cost.{png,svg}`` and ``table.md`` to ``out``.

    Args:
        results: the CSV, or the folder holding ``results.csv``.
        out: the output folder; defaults to ``<results folder>/plots``.
        x: the grid axis of the gain plot's x axis and the table's innermost order (see :func:`plot_gain`).

    Returns:
        dict: ``{"gain": [png, svg], "cost": [png, svg], "table": md path, "markdown": text}``; ``gain``
        is empty when the table holds no baseline/enhanced pairs.
    """
    df = read_results(results)
    if df.empty:
        raise ValueError(f"the results table {results} has no rows yet")
    folder = Path(results) if Path(results).is_dir() else Path(results).parent
    out = Path(out) if out is not None else folder / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"gain": [], "cost": plot_cost(df, out)}
    if x is not None:
        for backbone in dict.fromkeys(df["backbone"]):
            resolve_axis(df[df["backbone"] == backbone], x)  # fail before drawing anything
    if not gain_table(df).empty:
        paths["gain"] = plot_gain(df, out, x)
    text = markdown_table(df, x)
    table = out / "table.md"
    table.write_text(text)
    paths["table"] = table
    paths["markdown"] = text
    return paths

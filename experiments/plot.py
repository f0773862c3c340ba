"""Plots and tables from a results table (and nothing else): gain vs a grid axis, PSNR vs cost, markdown.

The gains are those of :mod:`experiments.gains`: paired per seed, then the mean over seeds with its
95 % Student t interval and a verdict. The gain plot draws the intervals as error bars; a point whose
interval contains 0 (*not resolved*) is drawn hollow, and a single seed (no interval) as a cross, so
that neither can be mistaken for a measured gain. ``gains.csv`` holds the same numbers.

The gain plot's x axis is any grid axis (``x="iterations"`` for a budget study; a name matches an axis
exactly or by its last dotted part, so ``iterations`` is ``train.iterations``), by default the first.

Figures use matplotlib's Agg backend and are written as PNG and SVG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ._io import atomic_write
from .gains import cell_table, gain_table, grid_axes, resolve_axis, result_sets, seed_gains, summary_text
from .results import read_results
from .stats import LEVEL
from .table4 import ablation_markdown

__all__ = [
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


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and not spec:
        return str(int(value))
    return format(value, spec) if spec else str(value)


def _line_axes(df: pd.DataFrame, backbone: str, x: str | None = None) -> tuple[str | None, list[str]]:
    """``(x axis, other axes)`` of one backbone's rows: ``x`` (resolved) first if given, else the first axis."""
    sub = df[df["backbone"] == backbone]
    axes = grid_axes(sub)
    if x is not None:
        x = resolve_axis(sub, x)
        return x, [a for a in axes if a != x]
    return (axes[0] if axes else None), axes[1:]


def _gain_cells(gain: pd.DataFrame, s: str) -> list[str]:
    """``[gain ± half-width, verdict]`` of one configuration and test set (empty for baselines)."""
    if gain.empty:
        return ["", ""]
    g = gain.iloc[0]
    n = int(g["seeds"])
    text = f"{g[f'gain_{s}']:+.2f}" + (f" ± {g[f'gain_{s}_ci']:.2f}" if n > 1 else "")
    return [text, str(g[f"verdict_{s}"])]


def markdown_table(df: pd.DataFrame, x: str | None = None, against: str | None = None) -> str:
    """Per backbone, one line per configuration: grid values, variant, seeds, PSNR per test set, the
    paired gain with its 95 % interval and verdict per test set, parameters, MACs, training time (and
    per iteration) and test latency.

    Lines are grouped by the axes other than ``x`` (see :func:`plot_gain`), ``x`` varying fastest.
    """
    sets = result_sets(df)
    cells = cell_table(df, against)
    gains = gain_table(df, against=against)
    per_iteration = {"train_seconds", "iterations"} <= set(cells.columns)
    latency = "latency_ms" in cells.columns
    lines: list[str] = []
    for backbone in dict.fromkeys(cells["backbone"]):
        sub = cells[cells["backbone"] == backbone]
        x_axis, others = _line_axes(df, backbone, x)
        axes = [a for a in [x_axis, *others] if a]
        sub = sub.sort_values(by=[*axes[::-1], "baseline"], ascending=[True] * len(axes) + [False], kind="stable") if axes else sub
        head = [*axes, "variant", "seeds"] + [f"PSNR {s} (dB)" for s in sets]
        for s in sets:
            head += [f"gain {s} (dB, {100 * LEVEL:.0f} % CI)", f"verdict {s}"]
        head += ["params", "GMACs", "train (s)"] + ["train (ms/it)"] * per_iteration + ["latency (ms)"] * latency
        lines += [f"**{backbone}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in sub.iterrows():
            gain = gains[(gains["backbone"] == backbone) & (gains["cell"] == r["cell"])] if len(gains) else gains
            if r["baseline"]:
                gain = gain.iloc[0:0]
            cells_ = [_fmt(r[a]) for a in axes] + [str(r["variant"]), _fmt(r["seeds"])]
            cells_ += [_fmt(r[f"psnr_{s}"], ".2f") for s in sets]
            for s in sets:
                cells_ += _gain_cells(gain, s)
            cells_ += [_fmt(r.get("params", float("nan")), ",.0f"), _fmt(r.get("macs", float("nan")) / 1e9, ".3f"),
                       _fmt(r.get("train_seconds", float("nan")), ".0f")]
            if per_iteration:
                cells_.append(_fmt(1000 * r["train_seconds"] / r["iterations"], ".1f") if r["iterations"] else "")
            if latency:
                cells_.append(_fmt(r["latency_ms"], ".2f"))
            lines.append("| " + " | ".join(cells_) + " |")
        lines.append("")
    lines.append(
        f"Gain: PSNR − PSNR({against or 'baseline'}) of the same seed, mean over seeds ± the half-width of the "
        f"{100 * LEVEL:.0f} % Student t interval (t quantile × sample std / √seeds). Verdict: *gain* or *loss* when "
        f"the interval excludes 0, *not resolved* when it contains 0; one seed gets no interval and no verdict."
    )
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


def _save(plt: Any, fig: Any, out: Path, stem: str, layout: bool = True) -> list[Path]:
    if layout:
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


_KEY = ("error bars: {level:.0f} % Student t interval over seeds  ·  filled: the interval excludes 0  ·  "
        "hollow: not resolved (the interval contains 0)  ·  ×: one seed, no interval  ·  dots: single seeds")


def _draw_points(ax: Any, xs: list, line: pd.DataFrame, s: str, color: Any) -> None:
    """Each point with its interval, styled by its verdict (see :data:`_KEY`)."""
    for x_value, (_, g) in zip(xs, line.iterrows()):
        verdict, mean = g[f"verdict_{s}"], g[f"gain_{s}"]
        if pd.isna(mean):
            continue
        if int(g["seeds"]) < 2:
            ax.plot([x_value], [mean], marker="x", ms=7, mew=1.6, color=color, ls="none", zorder=4)
            continue
        resolved = verdict in ("gain", "loss")
        ax.errorbar([x_value], [mean], yerr=[g[f"gain_{s}_ci"]], marker="o", ms=6, capsize=3, color=color,
                    markerfacecolor=color if resolved else "white", markeredgewidth=1.4, ls="none", zorder=4,
                    elinewidth=1.2 if resolved else 0.9)


def plot_gain(df: pd.DataFrame, out: str | os.PathLike, x: str | None = None, against: str | None = None) -> list[Path]:
    """Gain vs grid axis ``x`` (default: the first, i.e. depth / number of blocks), one line per value of
    the other axes (and per variant when there are several), one panel per backbone (columns) and test
    set (rows). Error bars are the 95 % Student t interval of the paired gain over seeds; a point whose
    interval contains 0 is hollow (not resolved), a single seed is a cross (no interval); small dots are
    the single seeds. A log scale is used when the x values span a factor of 10 or more; axes with a
    single value are left out of the legend."""
    gains = gain_table(df, against=against)
    if gains.empty:
        raise ValueError("no enhanced run has a finished baseline with the same settings and seed; nothing to plot")
    per_seed = seed_gains(df, against)
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
                xs = list(line[x_axis]) if x_axis else list(range(len(line)))
                single = bool((line["seeds"] < 2).all())  # no interval anywhere: a dotted line, not a result
                (drawn,) = ax.plot(xs, line[f"gain_{s}"], lw=1.0 if single else 1.2, ls=":" if single else "-",
                                   label=_label(line.iloc[0], shown, several))
                color = drawn.get_color()
                _draw_points(ax, xs, line, s, color)
                if x_axis and (line["seeds"] > 1).any():
                    points = dots[dots["cell"].isin(line["cell"])]
                    ax.scatter(points[x_axis], points[f"gain_{s}"], s=9, alpha=0.45, color=color, zorder=3)
            ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
            ax.set_xlabel(_AXIS_LABELS.get(x_axis, x_axis) if x_axis else "configuration")
            ax.set_ylabel(f"PSNR gain on {s} (dB)")
            variants = ", ".join(dict.fromkeys(sub["variant"]))
            seeds = sorted(set(int(n) for n in sub["seeds"]))
            count = "1 seed, no intervals" if seeds == [1] else f"{'/'.join(map(str, seeds))} seeds"
            ax.set_title(f"{backbone}: {variants} − {against or 'baseline'} ({count})", fontsize=9)
            if x_axis:
                if _log_scale(sub[x_axis]):
                    ax.set_xscale("log")
                    ax.minorticks_off()
                ticks = sorted(set(sub[x_axis]))
                ax.set_xticks(ticks)
                ax.set_xticklabels([_fmt(t) for t in ticks])
            ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.06 / max(1, len(sets)), 1, 1))
    fig.text(0.5, 0.005, _KEY.format(level=100 * LEVEL), ha="center", va="bottom", fontsize=7, wrap=True)
    return _save(plt, fig, Path(out), "gain", layout=False)


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
    results: str | os.PathLike, out: str | os.PathLike | None = None, x: str | None = None,
    against: str | None = None,
) -> dict[str, Any]:
    """Read a results table and write ``gain.{png,svg}``, ``cost.{png,svg}``, ``table.md`` and ``gains.csv``
    (one row per enhanced configuration: mean gain, interval and verdict per test set) to ``out``, and
    ``ablation.md`` (the paper's Table 4 beside ours, :mod:`experiments.table4`) when it holds ADFNet runs.

    Args:
        results: the CSV, or the folder holding ``results.csv``.
        out: the output folder; defaults to ``<results folder>/plots``.
        x: the grid axis of the gain plot's x axis and the table's innermost order (see :func:`plot_gain`).
        against: measure gains against this variant instead of the baselines (:func:`experiments.gains.is_reference`).

    Returns:
        dict: ``{"gain": [png, svg], "cost": [png, svg], "table": md path, "gains": csv path or None,
        "markdown": text, "summary": text, "ablation": md path or None}``; ``gain`` is empty and ``gains`` ``None`` when the table holds
        no baseline/enhanced pairs.
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
    gains = gain_table(df, against=against)
    paths["gains"] = None
    if not gains.empty:
        paths["gain"] = plot_gain(df, out, x, against)
        paths["gains"] = atomic_write(out / "gains.csv", lambda tmp: gains.to_csv(tmp, index=False))
    paths["summary"] = summary_text(df, against=against)
    text = markdown_table(df, x, against)
    table = out / "table.md"
    table.write_text(text)
    paths["table"] = table
    paths["markdown"] = text
    paths["ablation"] = None
    ablation = ablation_markdown(df, against=against)
    if ablation:
        paths["ablation"] = out / "ablation.md"
        paths["ablation"].write_text(ablation)
    return paths

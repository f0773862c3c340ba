"""Figures of a :class:`dynfilter.inspect.Capture`: the ADFNet paper's Fig. 8 layout and the predicted kernels.

- :func:`plot_features`: one row per block, its channel-mean input, the outputs of its inner modules and its
  output side by side on one colour scale per row (the 1st–99th percentile of the row), each titled with its
  high-frequency share;
- :func:`plot_spectra`: the radial power spectrum of each block's input and output;
- :func:`plot_kernel_maps`: per kernel-predicting module, the kernel energy, high-pass share and DC gain at
  every pixel, beside the image;
- :func:`plot_kernel_tiles`: the ``k×k`` kernels at a few pixels, the channels of largest energy.

Figures use matplotlib's Agg backend and are written as PNG and SVG; each function returns the paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from dynfilter.inspect import Activation, Capture

__all__ = ["feature_rows", "plot_features", "plot_spectra", "plot_kernel_maps", "plot_kernel_tiles", "plot_capture"]


def _figure(nrows: int, ncols: int, w: float, h: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return plt, fig, axs


def _save(plt: Any, fig: Any, out: Path, stem: str, dpi: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def _share(value: float) -> str:
    return "hf n/a" if value != value else f"hf {value:.2f}"


def feature_rows(c: Capture) -> list[tuple[Activation, list[Activation]]]:
    """``(block, its captured descendants in forward order)`` for each captured module with no captured ancestor."""
    rows: list[tuple[Activation, list[Activation]]] = []
    for name, a in c.activations.items():
        if rows and rows[-1][0].name and name.startswith(rows[-1][0].name + "."):
            rows[-1][1].append(a)
        else:
            rows.append((a, []))
    return [(block, sorted(inner, key=lambda a: a.finished)) for block, inner in rows]


def _short(name: str, root: str) -> str:
    return name[len(root) + 1:] if root and name.startswith(root + ".") else (name or "model")


def plot_features(c: Capture, out: str | os.PathLike, stem: str = "features", max_rows: int = 8,
                  max_cols: int = 8, dpi: int = 110) -> list[Path]:
    """Fig. 8: per block, input → inner modules' outputs → output (channel means of batch item 0)."""
    rows = [r for r in feature_rows(c) if r[0].output is not None and r[0].output.mean_map.dim() == 3][:max_rows]
    if not rows:
        raise ValueError("the capture holds no 4-D feature maps to draw")
    ncols = min(max_cols, max(len(inner) for _, inner in rows) + 2)
    plt, fig, axs = _figure(len(rows), ncols, 2.1, 2.3)
    for i, (block, inner) in enumerate(rows):
        panels = []
        if block.input is not None:
            panels.append((f"{block.name or 'model'} in", block.input))
        panels += [(_short(a.name, block.name), a.output) for a in inner if a.output is not None][: ncols - 2]
        panels.append((f"{block.name or 'model'} out ({block.kind})", block.output))
        maps = [s.mean_map[0] for _, s in panels]
        values = torch.cat([m.flatten() for m in maps])
        lo, hi = torch.quantile(values[:1_000_000], torch.tensor([0.01, 0.99])).tolist()
        for j, ax in enumerate(axs[i]):
            ax.set_axis_off()
            if j >= len(panels):
                continue
            title, stats = panels[j]
            image = ax.imshow(maps[j].numpy(), cmap="viridis", vmin=lo, vmax=hi)
            ax.set_title(f"{title}\n{_share(stats.hf_share)}", fontsize=7)
        bar = fig.colorbar(image, ax=axs[i][len(panels) - 1], fraction=0.046, pad=0.03)  # one scale for the row
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"channel-mean feature maps; hf = share of spectral energy above {c.cutoff:g} cycles/px", fontsize=9)
    return _save(plt, fig, Path(out), stem, dpi)


def plot_spectra(c: Capture, out: str | os.PathLike, stem: str = "spectra", max_rows: int = 8, dpi: int = 110) -> list[Path]:
    """Radial power spectra of each block's input and output (log scale)."""
    rows = [b for b, _ in feature_rows(c) if b.input is not None and b.output is not None][:max_rows]
    if not rows:
        raise ValueError("the capture holds no module with a 4-D input and output")
    plt, fig, axs = _figure(1, len(rows), 2.8, 2.4)
    for ax, block in zip(axs[0], rows):
        n = len(block.output.spectrum)
        freqs = (torch.arange(n) + 0.5) * (0.5**0.5) / n
        for stats, label in ((block.input, "in"), (block.output, "out")):
            ax.semilogy(freqs.numpy(), stats.spectrum.clamp_min(1e-12).numpy(), label=f"{label} ({_share(stats.hf_share)})")
        ax.axvline(c.cutoff, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{block.name} ({block.kind})", fontsize=8)
        ax.set_xlabel("radial frequency (cycles/px)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    return _save(plt, fig, Path(out), stem, dpi)


def _image_panel(ax: Any, image: torch.Tensor | None) -> None:
    ax.set_axis_off()
    if image is None:
        return
    img = image.detach().float().cpu().clamp(0, 1)
    ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(), cmap="gray")
    ax.set_title("input", fontsize=7)


def plot_kernel_maps(c: Capture, out: str | os.PathLike, image: torch.Tensor | None = None,
                     pixels: Mapping[str, tuple[int, int]] | None = None, stem: str = "kernel_maps",
                     dpi: int = 110) -> list[Path]:
    """Per kernel-predicting module: image, kernel energy, high-pass share and DC gain at each pixel."""
    if not c.kernels:
        raise ValueError("the capture holds no predicted kernels (no DConv or MDCB was chosen)")
    plt, fig, axs = _figure(len(c.kernels), 4, 2.6, 2.5)
    for row, k in zip(axs, c.kernels.values()):
        _image_panel(row[0], image)
        panels = (("kernel energy  Σw²", k.energy[0], "magma"),
                  (f"high-pass share (> {c.cutoff:g})", k.highpass[0], "coolwarm"),
                  ("DC gain  Σw", k.dc_gain[0], "PuOr"))
        for ax, (title, values, cmap) in zip(row[1:], panels):
            ax.set_axis_off()
            handle = ax.imshow(values.numpy(), cmap=cmap)
            ax.set_title(f"{k.name}: {title}", fontsize=7)
            fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        h, w = k.energy.shape[-2:]
        scale = (h / image.shape[-2], w / image.shape[-1]) if image is not None else (1.0, 1.0)
        for label, (y, x) in (pixels or {}).items():
            for ax in row[:2]:
                yy, xx = (y, x) if ax is row[0] else (y * scale[0], x * scale[1])
                ax.plot([xx], [yy], marker="+", color="cyan", ms=8, mew=1.5)
                ax.annotate(label, (xx, yy), color="cyan", fontsize=6, xytext=(3, 3), textcoords="offset points")
    return _save(plt, fig, Path(out), stem, dpi)


def plot_kernel_tiles(c: Capture, out: str | os.PathLike, pixels: Mapping[str, tuple[int, int]] | None = None,
                      channels: int = 6, stem: str = "kernel_tiles", dpi: int = 110) -> list[Path]:
    """The ``k×k`` kernels at each kept pixel: one row per (module, pixel), the ``channels`` of largest energy."""
    labels = {tuple(p): name for name, p in (pixels or {}).items()}
    rows = [(k, p, kern) for k in c.kernels.values() for p, kern in k.at.items()]
    if not rows:
        raise ValueError("the capture kept no kernels at pixels (pass pixels= to capture)")
    plt, fig, axs = _figure(len(rows), channels, 1.2, 1.35)
    for row, (k, pixel, kern) in zip(axs, rows):
        energy = kern.square().sum(dim=(1, 2))
        order = energy.argsort(descending=True)[:channels]
        bound = float(kern[order].abs().max()) or 1.0
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(order):
                ax.set_axis_off()
                continue
            ch = int(order[j])
            ax.imshow(kern[ch].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
            ax.set_title(f"c{ch}", fontsize=6)
        row[0].set_ylabel(f"{k.name}\n{labels.get(pixel, '')} {pixel}", fontsize=6)
    fig.suptitle("predicted k×k kernels (red +, blue −; one scale per row), channels of largest energy", fontsize=8)
    return _save(plt, fig, Path(out), stem, dpi)


def plot_capture(c: Capture, out: str | os.PathLike, image: torch.Tensor | None = None,
                 pixels: Mapping[str, tuple[int, int]] | None = None, prefix: str = "", dpi: int = 110) -> list[Path]:
    """Every figure of ``c`` that it has data for; returns all paths written."""
    paths = plot_features(c, out, f"{prefix}features", dpi=dpi)
    if any(b.input is not None for b, _ in feature_rows(c)):
        paths += plot_spectra(c, out, f"{prefix}spectra", dpi=dpi)
    if c.kernels:
        paths += plot_kernel_maps(c, out, image, pixels, f"{prefix}kernel_maps", dpi=dpi)
        if any(k.at for k in c.kernels.values()):
            paths += plot_kernel_tiles(c, out, pixels, stem=f"{prefix}kernel_tiles", dpi=dpi)
    return paths

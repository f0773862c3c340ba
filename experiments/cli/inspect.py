"""``dynfilter inspect [MODEL] --checkpoint C --image IMG --out DIR``: what the dynamic blocks do (ADFNet Fig. 8).

Example::

    dynfilter inspect --checkpoint runs/x/checkpoint.pt --image builtin:astronaut --sigma 50 --out inspect/
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ._args import add_device_argument, add_kwargs_argument, parse_kwargs

__all__ = ["HELP", "DESCRIPTION", "arguments", "run", "load_images", "summary_markdown"]

HELP = "feature maps, high-frequency shares and predicted kernels of a checkpoint's blocks (the paper's Fig. 8)"
DESCRIPTION = (
    "Add AWGN to a clean image, run the checkpoint's model on it once with forward hooks on the chosen modules "
    "(default: every DCB, CB, MDCB, MCB, DConv, SEKG and MFI and the convs inside the blocks) and write to OUT "
    "figures of the channel-mean feature maps before and after each block and its inner convs, their radial "
    "spectra, maps of the predicted kernels (energy, high-pass share, DC gain per pixel) and the kernels at the "
    "image's strongest edge, flattest patch and centre, plus summary.md: per module the output shape and the "
    "share of spectral energy above --cutoff before -> after (mean removed per channel map, Hann window, "
    "per-channel power averaged; see dynfilter.spectral). Several images add a table of means and spreads."
)
EPILOG = (
    "example: dynfilter inspect --checkpoint ckpt.pt --image builtin --modules 'body.5*' 'body.8' --out inspect/"
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="registered model name; optional when the checkpoint records model_name")
    add_kwargs_argument(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt from dynfilter train / sweep, or a state_dict")
    parser.add_argument("--image", nargs="+", required=True, metavar="IMG",
                        help="clean image(s): a file, builtin:NAME (e.g. builtin:astronaut, no data needed), or a "
                        "set name or folder for all its images (builtin = the 4 builtin test images)")
    parser.add_argument("--data-root", help="folder holding the standard sets (default: $DYNFILTER_DATA)")
    parser.add_argument("--modules", nargs="+", metavar="GLOB",
                        help="module name globs, e.g. 'dfe1.*' 'body.5' (default: the dynamic blocks and their convs)")
    parser.add_argument("--sigma", type=float, default=50.0, help="AWGN sigma on the 0-255 scale; 0 for none (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--cutoff", type=float, default=0.25,
                        help="radial frequency (cycles/pixel) above which energy counts as high-frequency (default 0.25)")
    parser.add_argument("--crop", type=int, metavar="N", help="use the central NxN crop of each image (faster)")
    parser.add_argument("--figures", choices=("first", "all", "none"), default="first",
                        help="draw figures for the first image (default), every image, or none")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG figures (default 110)")
    add_device_argument(parser, default="cpu")
    parser.add_argument("--out", required=True, help="folder for the figures and summary.md")


def _builtin_image(name: str) -> tuple[str, Any]:
    from experiments.data import BUILTIN_SPLITS, BuiltinImages

    for split, names in BUILTIN_SPLITS.items():
        if name in names:
            images = BuiltinImages(split)
            return name, images.read(images.names.index(name))
    known = sorted(n for names in BUILTIN_SPLITS.values() for n in names)
    raise ValueError(f"unknown builtin image {name!r}; expected builtin:NAME with NAME one of {known}")


def load_images(specs: list[str], data_root: str | None = None) -> list[tuple[str, Any]]:
    """``(name, ndarray[H, W, C] uint8)`` for each ``--image`` spec: a file, ``builtin:NAME``, a set or a folder."""
    from experiments.data import open_dataset, read_image

    images = []
    for spec in specs:
        if spec.startswith("builtin:"):
            images.append(_builtin_image(spec.partition(":")[2]))
        elif Path(spec).is_file():
            images.append((Path(spec).stem, read_image(spec)))
        else:
            try:
                dataset = open_dataset(spec, data_root)
            except ValueError as exc:
                raise ValueError(f"--image {spec!r} is neither an image file, builtin:NAME nor a set ({exc})") from None
            images += [(Path(n).stem, dataset.read(i)) for i, n in enumerate(dataset.names)]
    return images


def _crop(img: Any, crop: int | None, multiple: int) -> Any:
    h, w = img.shape[:2]
    if crop is not None:
        h, w = min(h, crop), min(w, crop)
    h, w = h - h % multiple, w - w % multiple
    if h < 2 or w < 2:
        raise ValueError(f"the image ({img.shape[0]}×{img.shape[1]}) is too small to inspect after cropping to {h}×{w}")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


def _f(value: float) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _gain(value: float) -> str:
    return "n/a" if value != value else f"×{value:.3g}"


def _spread(values: list[float]) -> tuple[float, float, float, float]:
    values = [v for v in values if v == v]
    if not values:
        return (math.nan,) * 4
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd, min(values), max(values)


def _cell(values: list[float], sign: str = "", digits: int = 4) -> str:
    mean, sd, lo, hi = _spread(values)
    if digits != 4:
        return f"{mean:.{digits}g} ± {sd:.2g} [{lo:.{digits}g}, {hi:.{digits}g}]"
    return f"{mean:{sign}.4f} ± {sd:.4f} [{lo:{sign}.4f}, {hi:{sign}.4f}]"


def summary_markdown(header: list[str], per_image: list[dict[str, Any]]) -> str:
    """The summary: one feature table and one kernel table per image, then means ± sd over images if several."""
    lines = ["# dynfilter inspect", "", *header, ""]
    for entry in per_image:
        lines += [f"## {entry['image']}", "", entry["note"], "",
                  "| module | kind | output shape | high-frequency share before → after | power gain above / below cutoff |",
                  "|---|---|---|---|---|"]
        for r in entry["rows"]:
            shape = "×".join(map(str, r["output_shape"])) if r["output_shape"] else "n/a"
            lines.append(f"| `{r['module']}` | {r['kind']} | {shape} | {_f(r['hf_in'])} → {_f(r['hf_out'])} | "
                         f"{_gain(r['gain_high'])} / {_gain(r['gain_low'])} |")
        if entry["kernels"]:
            lines += ["", "| kernels of | k | channels | mean energy Σw² | mean high-pass share | mean DC gain Σw |",
                      "|---|---|---|---|---|---|"]
            for k in entry["kernels"]:
                lines.append(f"| `{k['module']}` | {k['kernel_size']} | {k['channels']} | {_f(k['energy'])} | "
                             f"{_f(k['highpass'])} | {_f(k['dc_gain'])} |")
        lines.append("")
    if len(per_image) > 1:
        lines += [f"## Over {len(per_image)} images (mean ± sd, [min, max])", "",
                  "| module | kind | share before | share after | after − before | gain above cutoff | gain below cutoff |",
                  "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(per_image[0]["rows"]):
            rows = [e["rows"][i] for e in per_image if i < len(e["rows"]) and e["rows"][i]["module"] == r["module"]]
            cells = [_cell([x["hf_in"] for x in rows]), _cell([x["hf_out"] for x in rows]),
                     _cell([x["hf_out"] - x["hf_in"] for x in rows], "+"),
                     _cell([x["gain_high"] for x in rows], "", 3), _cell([x["gain_low"] for x in rows], "", 3)]
            lines.append(f"| `{r['module']}` | {r['kind']} | {' | '.join(cells)} |")
        if per_image[0]["kernels"]:
            lines += ["", "| kernels of | mean high-pass share (mean ± sd over images) |", "|---|---|"]
            for i, k in enumerate(per_image[0]["kernels"]):
                lines.append(f"| `{k['module']}` | {_cell([e['kernels'][i]['highpass'] for e in per_image])} |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import json

    import torch

    from dynfilter.inspect import capture, expected_channels, landmark_pixels, select_modules
    from dynfilter.spectral import white_noise_share
    from experiments._io import atomic_write
    from experiments.checkpoint import model_from_checkpoint
    from experiments.data import convert_channels, to_tensor
    from experiments.inspect_plot import plot_capture
    from experiments.metrics import ImageMetrics
    from experiments.noise import GaussianNoise
    from experiments.run import resolve_device

    if args.sigma < 0:
        raise ValueError(f"--sigma must be 0 or more, got {args.sigma:g}")
    if args.dpi < 10:
        raise ValueError(f"--dpi must be at least 10, got {args.dpi}")
    if args.crop is not None and args.crop < 2:
        raise ValueError(f"--crop must be at least 2 pixels, got {args.crop}")
    white_noise_share(args.cutoff)  # checks the cutoff before the slow part
    device = resolve_device(args.device)
    kwargs = parse_kwargs(args.kwargs) if args.kwargs else None
    model, info = model_from_checkpoint(args.checkpoint, device, model_name=args.model, model_kwargs=kwargs)
    select_modules(model, args.modules)  # a wrong name fails before any image is read
    channels = expected_channels(model) or 3
    multiple = int(getattr(model, "size_multiple", 1))
    images = load_images(args.image, args.data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    described = f"{info['model_name']}{info['model_kwargs'] or ''}" + (f" + {info['recipe']}" if info["recipe"] else "")
    header = [
        f"- checkpoint: `{args.checkpoint}` ({described}, {info.get('iteration', '?')} iterations)",
        f"- noise: AWGN sigma {args.sigma:g} (seed {args.seed}); modules: "
        + (", ".join(f"`{m}`" for m in args.modules) if args.modules else "default (dynamic blocks and their convs)"),
        f"- high-frequency share: energy above {args.cutoff:g} cycles/pixel over all energy; each channel map's mean "
        f"removed, Hann window, power averaged over channels (white noise: {white_noise_share(args.cutoff):.4f})",
        "- kernel high-pass share: the same share of the predicted k×k kernels' frequency response energy "
        "(taps at dilation 1), per pixel, then averaged over pixels",
    ]
    per_image = []
    metrics = ImageMetrics()
    noise = GaussianNoise(args.sigma) if args.sigma > 0 else None
    for index, (name, img) in enumerate(images):
        if img.shape[2] != channels:
            print(f"note: {name} has {img.shape[2]} channel(s), the model takes {channels}; converting", file=sys.stderr)
            img = convert_channels(img, channels)
        img = _crop(img, args.crop, multiple)
        clean = to_tensor(img)
        noisy = noise(clean, seed=args.seed) if noise is not None else clean
        pixels = landmark_pixels(clean)
        c = capture(model, noisy.to(device), args.modules, pixels=list(pixels.values()), cutoff=args.cutoff)
        denoised = c.output[0].clamp(0, 1)
        note = (f"{img.shape[0]}×{img.shape[1]} pixels; PSNR noisy {metrics.psnr(noisy.clamp(0, 1), clean):.2f} dB → "
                f"output {metrics.psnr(denoised, clean):.2f} dB; kernels shown at "
                + ", ".join(f"{k} {v}" for k, v in pixels.items()))
        kernels = [{"module": k.name, "kernel_size": k.kernel_size, "channels": k.channels,
                    "energy": float(k.energy.mean()), "highpass": float(k.highpass.mean()),
                    "dc_gain": float(k.dc_gain.mean())} for k in c.kernels.values()]
        entry = {"image": name, "note": note, "rows": c.table(), "kernels": kernels}
        if args.figures == "all" or (args.figures == "first" and index == 0):
            entry["figures"] = [str(p) for p in plot_capture(c, out, noisy, pixels, prefix=f"{name}-", dpi=args.dpi)]
        per_image.append(entry)
        print(f"{name}: {len(entry['rows'])} modules, {len(kernels)} kernel sets; {note}")
    text = summary_markdown(header, per_image)
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(text))
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(
        {"header": header, "images": per_image}, indent=1, default=lambda v: list(v) if isinstance(v, tuple) else str(v))))
    print(f"summary: {out / 'summary.md'}")
    return {"images": per_image, "summary": str(out / "summary.md")}

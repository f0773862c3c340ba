"""``dynfilter eval``: PSNR/SSIM of a checkpoint on test sets under a recorded protocol, one row per image.

Example::

    dynfilter eval --model adfnet --checkpoint adfnet_n50.pt --sets CBSD68,Kodak24 --sigma 50 \\
        --data-root ../shared/data --out rows.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._args import add_kwargs_argument, parse_kwargs

__all__ = ["add_parser", "run", "load_model"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="measure PSNR/SSIM of a checkpoint on test sets (per-set summary, per-image CSV rows)",
        description="Add AWGN to each clean test image, denoise it with the checkpoint's model and measure "
        "PSNR/SSIM. The defaults are the published colour protocol: noise seed 20 before every image, noisy input "
        "not clipped, reflect padding to the model's size multiple, output clamped to [0, 1], PSNR/SSIM (Gaussian "
        "11x11, sigma 1.5) on 8-bit RGB with no border. Every row records these fields.",
        epilog="example: dynfilter eval --model dncnn --checkpoint ckpt.pt --sets CBSD68,Kodak24 --sigma 50 "
        "--data-root ../shared/data --out rows.csv",
    )
    parser.add_argument("--model", help="registered model name; optional when the checkpoint records model_name")
    add_kwargs_argument(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="a state_dict, or a dict with 'model' (and optionally 'model_name', 'model_kwargs')")
    parser.add_argument("--sets", default="builtin",
                        help="comma-separated set names (builtin, CBSD68, Kodak24, McMaster, Set12, BSD68, ...) or "
                        "image folders (default: builtin)")
    parser.add_argument("--data-root", help="folder holding the standard sets (default: $DYNFILTER_DATA)")
    parser.add_argument("--sigma", type=float, default=50.0, help="AWGN sigma on the 0-255 scale (default 50)")
    parser.add_argument("--seed", type=int, default=20, help="noise seed (default 20, as published)")
    parser.add_argument("--seed-mode", choices=("fixed", "per_image"), default="fixed",
                        help="fixed: the same seed before every image (published); per_image: seed + index")
    parser.add_argument("--clip", action="store_true", help="clamp the noisy input to [0, 1]")
    parser.add_argument("--quantize", action="store_true", help="round the noisy input to 8 bits (implies --clip)")
    parser.add_argument("--pad-multiple", type=int, help="pad to this multiple (default: the model's size_multiple)")
    parser.add_argument("--metric-space", choices=("rgb", "y"), default="rgb",
                        help="rgb: all channels (default); y: MATLAB rgb2ycbcr luma")
    parser.add_argument("--border", type=int, default=0, help="pixels cropped from each side before measuring")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--out", help="write the per-image rows to this CSV file")
    parser.set_defaults(run=run)
    return parser


def load_model(
    checkpoint: str | Path, model_name: str | None = None, model_kwargs: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Build a model and load ``checkpoint``'s weights strictly, on the CPU, in eval mode.

    The checkpoint is a plain state dict or a dict with ``"model"``; a training checkpoint's
    ``model_name``, ``model_kwargs`` and surgery ``recipe`` are used unless ``model_name`` is given.
    A ``"module."`` prefix (DataParallel) is removed.

    Returns:
        ``(model, info)`` with ``info = {"model_name", "model_kwargs", "recipe"}``.
    """
    import torch

    from experiments.checkpoint import build_model

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    meta: dict[str, Any] = {}
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        meta, state = state, state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a state_dict nor a dict with a 'model' state_dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    recipe = meta.get("recipe")
    if model_name is None:
        model_name = meta.get("model_name")
        if model_name is None:
            raise ValueError(f"{path} does not record its model: pass --model NAME (and --kwargs if needed)")
        if model_kwargs is None:
            model_kwargs = dict(meta.get("model_kwargs") or {})
    elif model_name != meta.get("model_name", model_name):
        recipe = None  # the user named another architecture; the checkpoint's surgery does not apply
    elif model_kwargs is None:
        model_kwargs = dict(meta.get("model_kwargs") or {})
    model_kwargs = dict(model_kwargs or {})
    model = build_model(model_name, model_kwargs, recipe, meta.get("recipe_kwargs") if recipe else None)
    _check_fits(model.state_dict(), state, f"the weights in {path} do not fit {model_name}({model_kwargs})")
    model.load_state_dict(state, strict=True)
    return model.eval(), {"model_name": model_name, "model_kwargs": model_kwargs, "recipe": recipe}


def _check_fits(expected: dict[str, Any], given: dict[str, Any], what: str) -> None:
    """Raise one readable ``ValueError`` naming a few missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = [f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("keys with other shapes, checkpoint vs model", shapes)) if items]
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from experiments._io import atomic_write
    from experiments.data import open_dataset
    from experiments.metrics import ImageMetrics
    from experiments.protocol import TestProtocol, evaluate, summarize
    from experiments.run import resolve_device

    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--sets {args.sets!r} names no set")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    protocol = TestProtocol(
        sigma=args.sigma, seed=args.seed, seed_mode=args.seed_mode, clip=args.clip, quantize=args.quantize,
        pad_multiple=args.pad_multiple, metrics=ImageMetrics(space=args.metric_space, border=args.border),
    )
    kwargs = parse_kwargs(args.kwargs) if args.kwargs else None
    model, info = load_model(args.checkpoint, args.model, kwargs)
    model = model.to(resolve_device(args.device))
    channels = int(getattr(model, "in_channels", 3))
    # Open every set before the slow part, so that a wrong name fails at once.
    datasets = [open_dataset(name, args.data_root, channels=channels) for name in names]

    print(f"{info['model_name']}{info['model_kwargs'] or ''} from {args.checkpoint}; sigma {args.sigma:g}, "
          f"seed {args.seed} ({args.seed_mode}), metrics on {args.metric_space}, border {args.border}")
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        set_rows = evaluate(model, dataset, protocol, limit=args.limit)
        s = summarize(set_rows)[0]
        print(f"{s['set']:<20} {s['images']:>4} images  PSNR {s['psnr']:.4f} dB  SSIM {s['ssim']:.4f}")
        rows += set_rows
    for row in rows:
        row.update(checkpoint=str(args.checkpoint), model=info["model_name"], model_kwargs=repr(info["model_kwargs"]))
    if args.out:
        atomic_write(args.out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
        print(f"per-image rows: {args.out}")
    return {"rows": rows, "summary": summarize(rows)}

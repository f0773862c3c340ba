"""``onnx`` suite: onnxruntime (CPU) against PyTorch eager inference on the file :func:`export_onnx` writes.

Both run on the same weights and input, timed interleaved, with the same intra-op thread count
(``torch.get_num_threads()``; onnxruntime ``intra_op_num_threads`` set to it, ``inter_op_num_threads`` 1).
Export time is not timed. Models: ADFNet (colour, base widths; random weights with non-zero deformable
offsets, :func:`~.models.benchmark_adfnet`) and DnCNN-17/64 with its middle conv replaced by
``recipes.dncnn_dconv`` (colour, random weights). Without the ``onnx`` extra the suite reports an empty
table saying so, and ``dynfilter bench`` (all suites) still runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dynfilter.complexity import time_callables

from .harness import BenchConfig, Section, rounds_note

__all__ = ["onnx_suite", "ONNX_COLUMNS"]

#: Columns of the ``onnx`` table, in order.
ONNX_COLUMNS = ("model", "input", "torch ms", "ort ms", "ort/torch", "max abs diff", "torch threads", "ort threads")


def _dncnn_dconv(quick: bool) -> nn.Module:
    import backbones
    from dynfilter.surgery import recipes

    depth, channels = (3, 8) if quick else (17, 64)
    model = backbones.build("dncnn", depth=depth, channels=channels)
    return recipes.dncnn_dconv(model).apply()


def _session(path: Path, threads: int) -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(name: str, model: nn.Module, sizes: list[int], config: BenchConfig, folder: Path) -> list[dict[str, object]]:
    from dynfilter.export import export_onnx

    model = model.eval()
    path = folder / f"model{len(list(folder.iterdir()))}.onnx"
    export_onnx(model, torch.rand(1, 3, 64, 64) if not config.quick else torch.rand(1, 3, 16, 16), path)
    threads = torch.get_num_threads()
    session = _session(path, threads)
    input_name = session.get_inputs()[0].name
    rows = []
    for size in sizes:
        x = torch.rand(1, 3, size, size)
        feed = {input_name: x.numpy()}

        def eager() -> None:
            with torch.inference_mode():
                model(x)

        calls: dict[str, Callable[[], object]] = {"torch": eager, "ort": lambda: session.run(None, feed)}
        times = time_callables(calls, config.repeat, config.warmup, "cpu", config.settle)
        with torch.inference_mode():
            expected = model(x)
        got = torch.from_numpy(session.run(None, feed)[0])
        rows.append(
            {
                "model": name,
                "input": f"1×3×{size}×{size}",
                "torch ms": times["torch"].ms,
                "ort ms": times["ort"].ms,
                "ort/torch": times["ort"].median / times["torch"].median,
                "max abs diff": float((got - expected).abs().max()),
                "torch threads": times["torch"].threads,
                "ort threads": threads,
            }
        )
    return rows


def onnx_suite(config: BenchConfig) -> list[Section]:
    """ADFNet at 256×256 and DnCNN-17/64 + DConv at 256×256 and 512×512 (tiny in quick mode), ORT vs eager."""
    if config.device != "cpu":
        raise ValueError(f"the onnx suite runs on CPU (onnxruntime's CPU provider), got device {config.device!r}")
    import importlib.util

    title = "onnxruntime vs PyTorch inference"
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # so that `dynfilter bench` (all suites) still runs without the onnx extra
        return [Section(title, [], columns=ONNX_COLUMNS, note=f"Skipped: {', '.join(missing)} not installed (pip install -e '.[onnx]').")]
    from .models import benchmark_adfnet

    adfnet, _, _ = benchmark_adfnet(config)
    adfnet_name = "ADFNet (widths 8, 8, 8, 16)" if config.quick else "ADFNet"
    dncnn_name = "DnCNN-3/8 + DConv" if config.quick else "DnCNN-17/64 + DConv"
    with tempfile.TemporaryDirectory() as tmp:
        rows = _compare(adfnet_name, adfnet, [32] if config.quick else [256], config, Path(tmp))
        rows += _compare(dncnn_name, _dncnn_dconv(config.quick), [32] if config.quick else [256, 512], config, Path(tmp))
    note = (
        f"{rounds_note(config.repeat, config.settle).capitalize()}; onnxruntime CPU provider on the file export_onnx "
        "wrote (export not timed) against torch.inference_mode() eager, same intra-op threads; "
        "ort/torch < 1 means onnxruntime is faster."
    )
    return [Section(title, rows, columns=ONNX_COLUMNS, note=note)]

"""Model complexity: parameters, MACs and FLOPs per top-level module (:func:`profile`), and latency.

Counting rules (see ``docs/complexity.md``):

- **Parameters** are all ``nn.Parameter`` elements, each counted once, trainable or not — including
  the deformable convs' own weights, which thop-based counts miss.
- **MACs** come from fvcore's JIT-trace counter (one fused multiply-add = 1 MAC; fvcore calls it a
  "flop"), with handles added for the ops it does not know. **FLOPs = 2 × MACs.** Biases,
  activations, additions and other element-wise ops count zero; :attr:`Profile.zero_ops` lists every
  traced op that was counted as zero.
- Convolution: ``B·C_out·H_out·W_out·(C_in/groups)·k_h·k_w``. A transposed convolution is counted
  from its *input* size, ``B·C_in·(C_out/groups)·k_h·k_w·H_in·W_in`` (each input pixel is multiplied
  by every weight once), which is fvcore's rule.
- Dynamic filtering (``dynfilter::dynamic_filter``): ``B·C·H·W·k²`` per call. The fused kernel generation
  and filtering (``dynfilter::fused_dynamic_filter``) counts its 1×1 conv under ``conv`` and its filters
  under ``dynamic_filter``, exactly as the unfused ops are counted.
- Modulated deformable convolution (``torchvision::deform_conv2d``,
  ``dynfilter::modulated_deform_conv2d``): the convolution ``B·C_out·H_out·W_out·(C_in/groups)·k_h·k_w``
  plus sampling ``B·C_in·k_h·k_w·H_out·W_out·(4 + m)``: each sampled value is a bilinear blend of
  4 neighbours (4 MACs) and, with a modulation mask, one more multiply (``m = 1``, else 0). The
  offset and interpolation-weight arithmetic is not counted.
- Batch norm follows fvcore (in eval mode, 1 per element, 2 with an affine transform).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .functional import unfused

__all__ = ["profile", "Profile", "ModuleCost", "measure_latency", "Latency", "time_callables", "Timing", "OP_HANDLES"]


def _shape(value: Any) -> list[int] | None:
    ty = value.type()
    if isinstance(ty, torch._C.TensorType) and value.isCompleteTensor():
        return list(ty.sizes())
    return None


def _dynamic_filter_macs(inputs: list, outputs: list) -> Counter:
    """``dynfilter::dynamic_filter(x, kernels, kernel_size, dilation)``: ``B·C·H·W·k²``."""
    from .ops.dynamic_filter import dynamic_filter_macs

    return Counter({"dynamic_filter": dynamic_filter_macs(_shape(inputs[0]), inputs[2].toIValue())})


def _fused_dynamic_filter_macs(inputs: list, outputs: list) -> Counter:
    """``dynfilter::fused_dynamic_filter(x, guide, weight, bias, k, dilations)``: its 1×1 conv and its filters.

    Counted under ``conv`` and ``dynamic_filter``, as the unfused 1×1 conv and filters are, so a profile does
    not depend on the implementation.
    """
    from .ops.fused_dynamic_filter import fused_macs

    dilations = inputs[5].toIValue()
    # A traced list of dilations is a prim::ListConstruct node with one input per dilation.
    count = len(dilations) if dilations is not None else len(list(inputs[5].node().inputs()))
    generate, filtering = fused_macs(_shape(inputs[0]), _shape(inputs[1])[1], inputs[4].toIValue(), count)
    return Counter({"conv": generate, "dynamic_filter": filtering})


def _deform_conv_macs(weight_index: int, offset_index: int) -> Callable[[list, list], Counter]:
    def handle(inputs: list, outputs: list) -> Counter:
        from .ops.deform_conv import deform_conv_macs

        b = _shape(inputs[0])[0]
        weight = _shape(inputs[weight_index])
        offset = _shape(inputs[offset_index])
        h_out, w_out = _shape(outputs[0])[2:]
        # A mask is used when some other tensor input has one channel per (offset group, tap).
        mask_shape = [b, offset[1] // 2, h_out, w_out]
        masked = any(
            _shape(v) == mask_shape for i, v in enumerate(inputs) if i not in (0, weight_index, offset_index)
        )
        return Counter(deform_conv_macs(_shape(inputs[0]), weight, (h_out, w_out), masked))

    return handle


# Op name -> fvcore handle. torchvision's op takes (input, weight, offset, mask, bias, ...);
# dynfilter's takes (input, offset, weight, ...).
OP_HANDLES: dict[str, Callable[[list, list], Counter]] = {
    "dynfilter::dynamic_filter": _dynamic_filter_macs,
    "dynfilter::fused_dynamic_filter": _fused_dynamic_filter_macs,
    "torchvision::deform_conv2d": _deform_conv_macs(weight_index=1, offset_index=2),
    "dynfilter::modulated_deform_conv2d": _deform_conv_macs(weight_index=2, offset_index=1),
}


@dataclass(frozen=True)
class ModuleCost:
    """Parameters and MACs of one top-level child (or ``"(top level)"`` for the parent's own ops)."""

    name: str
    type: str
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class Profile:
    """The result of :func:`profile`. ``flops`` is ``2 × macs``."""

    input_size: tuple[int, ...]
    params: int
    macs: int
    modules: tuple[ModuleCost, ...]
    by_operator: dict[str, int]
    zero_ops: dict[str, int]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flops"] = self.flops
        for m in d["modules"]:
            m["flops"] = 2 * m["macs"]
        return d

    def table(self) -> str:
        """A plain-text table, one row per top-level module, then the total and the zero-counted ops."""
        rows = [(m.name, m.type, f"{m.params:,}", _si(m.macs), _si(m.flops)) for m in self.modules]
        rows.append(("total", "", f"{self.params:,}", _si(self.macs), _si(self.flops)))
        header = ("module", "type", "params", "MACs", "FLOPs")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]

        def fmt(r: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        lines = [f"input {tuple(self.input_size)}; FLOPs = 2 x MACs", fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in rows[:-1]] + [fmt(["-" * w for w in widths]), fmt(rows[-1])]
        lines.append("by operator: " + ", ".join(f"{k} {_si(v)}" for k, v in sorted(self.by_operator.items())))
        zero = ", ".join(f"{k} x{v}" for k, v in sorted(self.zero_ops.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"counted as zero: {zero or '(none)'}")
        return "\n".join(lines)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def profile(model: nn.Module, input_size: Sequence[int] = (1, 3, 128, 128)) -> Profile:
    """Count parameters, MACs and FLOPs of ``model`` on one input of ``input_size``.

    The model is traced once in eval mode on a random input (the count does not depend on the
    values) on the model's device and dtype; its training flag is restored afterwards.

    Args:
        model: any module taking one ``Tensor[input_size]``.
        input_size: ``(B, C, H, W)`` (or any shape the model takes).

    Returns:
        Profile: totals, one :class:`ModuleCost` per top-level child, MACs per operator and the
        ops counted as zero (name → number of calls).

    >>> p = profile(nn.Conv2d(3, 8, 3, padding=1), (1, 3, 16, 16))
    >>> p.params, p.macs, p.flops
    (224, 55296, 110592)
    """
    input_size = tuple(int(s) for s in input_size)
    if not input_size or any(s < 1 for s in input_size):
        raise ValueError(f"input_size must be positive ints such as (1, 3, 128, 128), got {input_size}")
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.rand(input_size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # fvcore traces with torch.jit, whose deprecation notices say nothing about the count.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            from fvcore.nn import FlopCountAnalysis  # heavy; only needed here

            analysis = FlopCountAnalysis(model, (x,)).set_op_handle(**OP_HANDLES)
            # fvcore silently skips a list of ops (cat, relu, clamp, ...); clear it so that every op
            # counted as zero is reported, not only the ones fvcore has not heard of.
            analysis._ignored_ops = set()
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # Unfused, the kernel generators' 1×1 convs are module calls, so their MACs are attributed to
            # them (``kernel_conv``) as in the published code; the totals are the same either way. fvcore
            # traces on the first query and keeps the result.
            with unfused(model):
                by_module = analysis.by_module()
                by_operator = dict(analysis.by_operator())
                zero_ops = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    zero_ops.update({op: 0 for op, n in by_operator.items() if n == 0 and op not in zero_ops})
    by_operator = {op: n for op, n in by_operator.items() if n}
    if "aten::im2col" in zero_ops:
        warnings.warn(
            "profile: unfold (aten::im2col) ops were counted as zero; if they are dynamic filters run "
            "with impl='unfold', their B·C·H·W·k² MACs are missing — use impl='auto' to count them",
            stacklevel=2,
        )

    total = int(by_module[""])
    modules = []
    for name, child in model.named_children():
        modules.append(ModuleCost(name, type(child).__name__, _numel(child.parameters()), int(by_module.get(name, 0))))
    own_params = _numel(model.parameters(recurse=False))
    rest = total - sum(m.macs for m in modules)
    if rest or own_params or not modules:
        modules.append(ModuleCost("(top level)", type(model).__name__, own_params, rest))
    return Profile(input_size, _numel(model.parameters()), total, tuple(modules), by_operator, zero_ops)


def _numel(params: Any) -> int:
    return sum(p.numel() for p in params)


@dataclass(frozen=True)
class Latency:
    """Wall-clock timing of repeated calls: the median and every run, with the conditions."""

    median_ms: float
    min_ms: float
    runs: int
    warmup: int
    threads: int
    device: str
    times_ms: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: ``median`` over ``runs``, measured with ``threads`` intra-op threads."""

    median: float
    runs: tuple[float, ...]
    threads: int

    @property
    def ms(self) -> float:
        return self.median * 1e3


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_callables(
    fns: Mapping[str, Callable[[], object]],
    repeat: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    settle: int = 0,
) -> dict[str, Timing]:
    """Median wall time of each callable, measured interleaved (one timed call of each per round).

    The one timing helper of the project: :func:`measure_latency` and every ``dynfilter bench`` suite use
    it. Interleaving makes a noisy neighbour slow every contender of a round alike, so ratios from one
    run stay meaningful.

    Args:
        fns: name -> callable taking no arguments.
        repeat: timed rounds (at least 1).
        warmup: untimed rounds before them.
        device: synchronised around each call when it is a CUDA device.
        settle: untimed calls of a callable immediately before each of its timed calls, so that the
            timed call sees the state (freed memory, caches) its own previous call left, not its rival's.

    Returns:
        name -> :class:`Timing`.

    >>> t = time_callables({"noop": lambda: None}, repeat=3)["noop"]
    >>> len(t.runs), t.threads == torch.get_num_threads()
    (3, True)
    """
    if repeat < 1 or warmup < 0 or settle < 0:
        raise ValueError(f"repeat must be >= 1, warmup and settle >= 0, got repeat={repeat}, warmup={warmup}, settle={settle}")
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeat):
        for name, fn in fns.items():
            for _ in range(settle if round_ >= warmup else 0):
                fn()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= warmup:
                runs[name].append(time.perf_counter() - start)
    threads = torch.get_num_threads()
    return {name: Timing(statistics.median(r), tuple(r), threads) for name, r in runs.items()}


def measure_latency(
    fn: Callable[..., Any],
    *args: Any,
    runs: int = 20,
    warmup: int = 3,
    device: torch.device | str | None = None,
    threads: int | None = None,
) -> Latency:
    """Time ``fn(*args)``: ``warmup`` untimed calls, then the median of ``runs`` timed calls (:func:`time_callables`).

    On CUDA each call is bracketed by ``torch.cuda.synchronize`` so that the kernels' time is
    included. Gradient mode is the caller's choice (wrap ``fn`` in ``torch.inference_mode`` to time
    inference).

    Args:
        fn: the callable to time.
        *args: its arguments.
        runs (int): timed calls (≥ 1).
        warmup (int): untimed calls first (≥ 0).
        device: where the work runs; inferred from the first tensor argument, else CPU.
        threads (int, optional): CPU threads to use during timing (restored afterwards); the
            thread count in effect is recorded either way.

    Returns:
        Latency

    >>> lat = measure_latency(torch.mm, torch.ones(8, 8), torch.ones(8, 8), runs=3, warmup=1)
    >>> lat.runs, lat.device
    (3, 'cpu')
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an int >= 1, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if device is None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        timing = time_callables({"fn": lambda: fn(*args)}, repeat=runs, warmup=warmup, device=device)["fn"]
    finally:
        torch.set_num_threads(old_threads)
    times = tuple(t * 1e3 for t in timing.runs)
    return Latency(timing.ms, min(times), runs, warmup, timing.threads, str(device), times)

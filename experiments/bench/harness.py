"""Benchmark harness shared by every ``dynfilter bench`` suite: timing, peak memory, bandwidth, tables.

Method (also in ``docs/performance.md``):

* **Time.** :func:`dynfilter.complexity.time_callables` (the project's one timing helper) runs the
  competing callables *interleaved* -- one call of each per
  round, after ``warmup`` rounds -- and reports the median over rounds with the thread count, so a
  noisy neighbour slows every contender of a round alike and ratios from one run stay meaningful.
  CUDA work is synchronised before each clock read. Each timed call is preceded by ``settle``
  untimed calls of the *same* callable (default 1 in ``dynfilter bench``), so it starts from the memory
  state its own previous call left, as in a loop calling it, not from the one its rival left (below).
* **Peak memory.** :func:`peak_memory` measures the most tensor memory held *above what was held when
  the call started*. On CUDA that is ``torch.cuda.max_memory_allocated``. On CPU, torch keeps no peak
  statistic, so the call runs under ``torch.profiler`` with ``profile_memory=True``: every CPU tensor
  allocation and free is recorded with its size, and the running sum of those, in time order, peaks
  at the answer. Only tensor storage from torch's allocator counts (not Python objects, not scratch
  buffers inside native code), and the profiler's bookkeeping is not in it.
* **Allocator.** On Linux, glibc returns every freed block of 32 MiB or more to the kernel, so the
  next large tensor is faulted in again page by page; in a virtual machine whose host reclaims freed
  guest memory this costs about a second per GB, and it hits whichever contender runs after the one
  that freed most (the reference frees gigabytes per call). The settling call absorbs that cost for
  each contender alike; the timed call still pays the faults of its own fresh buffers, as any loop
  under the default allocator does. :func:`keep_freed_memory` goes further: it makes glibc keep freed
  memory in the process, as a caching allocator (jemalloc, PyTorch's CUDA allocator) does, so that
  timings compare the computations alone; ``dynfilter bench --keep-memory`` uses it.
* **Bandwidth.** :func:`copy_bandwidth` is ``2 × bytes / time`` of ``dst.copy_(src)`` on buffers far
  larger than the last-level cache; :func:`streaming_bound` divides the bytes an op must move at least
  (read every input once, write every output once) by it.

Suites are listed in :data:`SUITES` as ``"module:function"``; each function takes a
:class:`BenchConfig` and returns a list of :class:`Section` (a titled table of rows). Add a suite by
adding an entry.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import importlib
import io
import math
import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from dynfilter.complexity import Timing, time_callables

from .._io import atomic_write

__all__ = [
    "BenchConfig",
    "Section",
    "SUITES",
    "EXPLICIT_SUITES",
    "time_callable",
    "peak_memory",
    "copy_bandwidth",
    "keep_freed_memory",
    "allocator_environment",
    "streaming_bound",
    "environment",
    "run_suites",
    "format_markdown",
    "write_csv",
    "targets_section",
    "rounds_note",
]

# Suite name -> "module:function" returning list[Section]; imported only when run.
SUITES: dict[str, str] = {
    "dynamic": "experiments.bench.dynamic:dynamic_suite",
    "adfnet": "experiments.bench.dynamic:adfnet_suite",
    "deform": "experiments.bench.deform:deform_suite",
    "model": "experiments.bench.deform:model_suite",
    "onnx": "experiments.bench.onnx:onnx_suite",
    "fused": "experiments.bench.fused:fused_suite",
    "train": "experiments.bench.train:train_suite",
}
#: Suites that ``--suite all`` leaves out: at their default shapes they take hours on a CPU (name them to run them).
EXPLICIT_SUITES: tuple[str, ...] = ("train",)

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What every suite receives.

    Args:
        repeat: timed rounds per measurement (the median is reported).
        warmup: untimed rounds first.
        device: ``"cpu"`` or ``"cuda"``.
        quick: tiny shapes and one round, to check that a suite runs (tests, CI).
        settle: untimed calls of a callable right before each of its timed calls (see the module doc).
        train_batch, train_patch: the ``train`` suite's batch and patch size (default: the ``paper`` preset's).
        train_models: the ``train`` suite's models (default: all of :data:`experiments.bench.train.BENCH_MODELS`).
        train_options: labels of the ``train`` suite's options (default: all of
            :func:`experiments.bench.train.train_options`; the first one given is the baseline of the speedups).
    """

    repeat: int = 5
    warmup: int = 1
    device: str = "cpu"
    quick: bool = False
    settle: int = 1
    train_batch: int | None = None
    train_patch: int | None = None
    train_models: tuple[str, ...] = ()
    train_options: tuple[str, ...] = ()


@dataclasses.dataclass
class Section:
    """A titled table: ``rows`` share keys; ``columns`` picks and orders those shown in markdown."""

    title: str
    rows: list[Row]
    columns: Sequence[str] | None = None
    note: str = ""


#: A target: (description, column, required value, "min" if larger is better else "max").
Target = tuple[str, str, float, str]


def targets_section(rows: list[Row], targets: Sequence[Target]) -> Section:
    """Check ``targets`` against the worst case over ``rows`` (NaN cells are skipped)."""
    out = []
    for name, column, required, worst in targets:
        values = [r[column] for r in rows if not math.isnan(r[column])]
        reached = (min if worst == "min" else max)(values) if values else float("nan")
        met = reached >= required if worst == "min" else reached <= required
        out.append({"target": name, "required": required, "worst case reached": reached, "met": "yes" if met else "NO"})
    return Section("Targets", out, note="Worst case over the rows above, from this one run.")


def rounds_note(repeat: int, settle: int) -> str:
    """How times were taken, for a section's note: ``"median of 5 interleaved rounds, …"``."""
    note = f"median of {repeat} interleaved rounds"
    if settle:
        note += f", each timed call right after {settle} untimed call{'s' if settle > 1 else ''} of itself"
    return note


def time_callable(
    fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device: torch.device | str | None = None, settle: int = 0
) -> Timing:
    """:func:`time_callables` for one callable."""
    return time_callables({"fn": fn}, repeat, warmup, device, settle)["fn"]


def _cpu_allocation_deltas(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """``(time_ns, bytes)`` of every CPU allocation (+) and free (−) the profiler saw."""
    from torch._C._profiler import _EventType

    deltas = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            deltas.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
    return sorted(deltas)


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Most tensor bytes held during ``fn()`` above those held when it started (see the module doc).

    Args:
        fn: the work; its return value is dropped inside the measurement.
        device: where the tensors live, ``"cpu"`` or a CUDA device.

    Returns:
        int: bytes.

    >>> peak_memory(lambda: torch.empty(1 << 20, dtype=torch.uint8).fill_(1))
    1048576
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports cpu and cuda devices, got {device}")
    from torch.profiler import ProfilerActivity, profile

    # Kineto prints start/stop and missing-GPU lines to stderr for every profiled call; level 6 silences
    # them (read when the profiler starts, so setting it here is early enough). A user's own value wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = held = 0
    for _, delta in _cpu_allocation_deltas(prof):
        held += delta
        peak = max(peak, held)
    return peak


def copy_bandwidth(nbytes: int = 1 << 28, repeat: int = 5, device: torch.device | str = "cpu") -> float:
    """Bytes per second moved by ``dst.copy_(src)`` (one read and one write of ``nbytes`` each).

    Args:
        nbytes: buffer size; keep it far above the last-level cache (default 256 MiB).
        repeat: timed copies (median).
        device: where to copy.
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    t = time_callable(lambda: dst.copy_(src), repeat=repeat, warmup=1, device=device)
    return 2 * src.numel() * 4 / t.median


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of unmapping it (see the module doc).

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from fresh mappings) and a 2 GiB
    ``M_TRIM_THRESHOLD`` (the heap is not shrunk). Process-wide and irreversible; for benchmarks only.

    Returns:
        bool: whether it took effect (``False`` where the C library is not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> constants
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def allocator_environment(environ: Mapping[str, str] | None = None) -> str:
    """The environment variables that change how CPU memory is allocated, as ``"NAME=value, …"`` (or ``""``).

    glibc's ``MALLOC_*_`` variables and ``GLIBC_TUNABLES``, and ``LD_PRELOAD`` (jemalloc, tcmalloc), move
    timings as much as the ops do, so a report names them.

    >>> allocator_environment({"MALLOC_MMAP_MAX_": "0", "HOME": "/root"})
    'MALLOC_MMAP_MAX_=0'
    """
    environ = os.environ if environ is None else environ
    names = sorted(n for n in environ if (n.startswith("MALLOC_") and n.endswith("_")) or n in ("GLIBC_TUNABLES", "LD_PRELOAD"))
    return ", ".join(f"{n}={environ[n]}" for n in names)


def streaming_bound(nbytes: int, bandwidth: float) -> float:
    """Seconds to move ``nbytes`` at ``bandwidth`` bytes/s: no implementation moving them can be faster."""
    return nbytes / bandwidth


def environment() -> dict[str, Any]:
    """Versions, threads and CPU/GPU names, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return env


def run_suites(names: Sequence[str], config: BenchConfig) -> list[Section]:
    """Run the named suites (keys of :data:`SUITES`) in order and return all their sections."""
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown benchmark suite(s) {unknown}; known: {sorted(SUITES)}")
    sections: list[Section] = []
    for name in names:
        module, func = SUITES[name].split(":")
        sections.extend(getattr(importlib.import_module(module), func)(config))
    return sections


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_markdown(section: Section) -> str:
    """A section as a GitHub markdown table (floats to 3 significant digits), with its title and note.

    >>> print(format_markdown(Section("T", [{"a": 1, "b": 0.12345}])))
    ### T
    <BLANKLINE>
    | a | b |
    |---|---|
    | 1 | 0.123 |
    <BLANKLINE>
    """
    columns = list(section.columns or (section.rows[0].keys() if section.rows else []))
    lines = [f"### {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in section.rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(sections: Sequence[Section], path: str | Path) -> Path:
    """All rows of all sections in one CSV (a ``section`` column first; the union of keys), atomically."""
    rows = [{"section": s.title, **row} for s in sections for row in s.rows]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda p: p.write_text(buffer.getvalue()))

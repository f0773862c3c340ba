"""``dynfilter bench [--suite NAME …] [--quick] [--out DIR]``: time and measure the lean ops against references."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "benchmark the lean dynamic filter (and other suites) against the published formulation"
DESCRIPTION = (
    "Run benchmark suites: times (median of interleaved rounds), peak memory and the memory-"
    "streaming bound, reference versus lean. Prints markdown tables with ratios and the targets met, and "
    "writes them to OUT/bench.md and OUT/bench.csv. See docs/performance.md for the method."
)
EPILOG = "example: dynfilter bench --suite dynamic --repeat 5"


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    from experiments.bench.harness import SUITES  # names only; the suites themselves are imported when run
    parser.add_argument(
        "--suite",
        nargs="+",
        default=["all"],
        choices=["all", *SUITES],
        help="suites to run, in order (default: all, which leaves out train: name it to run it)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per measurement; the median is kept (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (default 1)")
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="untimed calls of a contender right before each of its timed calls, so it starts from the memory state "
        "it left itself, as in a loop, not from its rival's (default 1; 0: strictly alternating calls)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--keep-memory",
        action="store_true",
        help="keep freed memory in the process (as a caching allocator does) so that page faults on memory the "
        "other contender just freed do not enter the timings; see docs/performance.md",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and one round: check that the suites run")
    parser.add_argument("--batch", type=int, default=None,
                        help="train suite: patches per step (default: the paper preset's 16; 2 with --quick)")
    parser.add_argument("--patch", type=int, default=None,
                        help="train suite: patch side (default: the paper preset's 128; 16 with --quick); the paper "
                        "run's time is then projected in proportion to the MACs")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="train suite: which models, e.g. 'DnCNN-5/32' 'ADFNet' (default: all)")
    parser.add_argument("--options", nargs="+", default=None, metavar="OPTION",
                        help="train suite: which trainer options, by label, e.g. fp32 bf16 'fp32 + compile' "
                        "(default: all; the first is the baseline of the speedups)")
    parser.add_argument("--out", default="bench-results", help="folder for bench.md and bench.csv (default bench-results)")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, from the parsed arguments."""
    parts = ["dynfilter", "bench", "--suite", *args.suite, "--repeat", str(args.repeat), "--warmup", str(args.warmup)]
    parts += ["--settle", str(args.settle)]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.keep_memory:
        parts.append("--keep-memory")
    if args.quick:
        parts.append("--quick")
    for flag in ("batch", "patch"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.models:
        parts += ["--models", *args.models]
    if args.options:
        parts += ["--options", *args.options]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from experiments.bench.harness import (
        EXPLICIT_SUITES,
        SUITES,
        BenchConfig,
        allocator_environment,
        environment,
        format_markdown,
        keep_freed_memory,
        run_suites,
        write_csv,
    )

    if args.repeat < 1 or args.warmup < 0 or args.settle < 0:
        raise ValueError(
            f"--repeat must be >= 1, --warmup and --settle >= 0, got {args.repeat}, {args.warmup} and {args.settle}"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} requested but CUDA is not available")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for flag in ("batch", "patch"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    names = [n for n in SUITES if n not in EXPLICIT_SUITES] if "all" in args.suite else list(dict.fromkeys(args.suite))
    config = BenchConfig(
        repeat=1 if args.quick else args.repeat, warmup=args.warmup, device=args.device, quick=args.quick, settle=args.settle,
        train_batch=args.batch, train_patch=args.patch, train_models=tuple(args.models or ()),
        train_options=tuple(args.options or ()),
    )
    env = environment()
    env["allocator"] = "keeps freed memory" if args.keep_memory and keep_freed_memory() else "default"
    variables = allocator_environment()
    if variables:
        env["allocator"] += f" ({variables})"
    header = [
        f"Command: `{_command(args)}`",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
    ]
    print("\n".join(header), flush=True)
    sections = []
    for name in names:
        for section in run_suites([name], config):
            print(format_markdown(section), flush=True)
            sections.append(section)
    out = Path(args.out)
    markdown = "\n".join(header) + "\n" + "\n".join(format_markdown(s) for s in sections)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown)
    write_csv(sections, out / "bench.csv")
    print(f"wrote {out / 'bench.md'} and {out / 'bench.csv'}")
    return {"sections": sections, "environment": env, "out": out}

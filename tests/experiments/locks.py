"""Test helpers: which run claims are held, and by which process (to kill a worker in the middle of a run)."""

from __future__ import annotations

from pathlib import Path

from experiments._io import try_file_lock
from experiments.checkpoint import load_checkpoint

HAVE_PROC_LOCKS = Path("/proc/locks").is_file()


def held_claims(out: Path) -> list[Path]:
    """The ``runs/*/claim.lock`` files of ``out`` that a live process holds."""
    held = []
    for lock in out.glob("runs/*/claim.lock"):
        with try_file_lock(lock) as free:
            if not free:
                held.append(lock)
    return held


def lock_holder(lock: Path) -> int | None:
    """The pid holding the ``flock`` on ``lock`` (from /proc/locks, Linux), or ``None``."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def checkpoint_step(run_dir: Path) -> int:
    """Steps in ``run_dir/checkpoint.pt``; 0 when there is none yet or it is being replaced right now."""
    try:
        return int(load_checkpoint(run_dir / "checkpoint.pt")["iteration"])
    except (ValueError, OSError, RuntimeError, EOFError, KeyError):
        return 0

"""Crash-safe files: atomic replacement and advisory locks (checkpoints, results tables, run claims).

A file is written to a temporary sibling and moved over the target with ``os.replace``, which is atomic
on POSIX file systems, so a reader sees either the old file or the new one, never half of either (the
timm ``CheckpointSaver`` pattern). Locks are ``fcntl.flock`` on a separate lock file: they serialise
processes on one machine and on file systems that implement ``flock`` across machines (local disks,
NFSv4, Lustre with ``flock`` mounts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_write", "remove_stale_temporaries", "file_lock", "try_file_lock"]


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process umask."""
    try:  # Linux reports the umask without changing it (os.umask can only read it by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk, then ``os.replace`` it.

    If ``write`` raises (or the process dies) the previous ``path`` is left untouched and the
    temporary file is removed (on an exception) or left as a hidden ``.<name>.*.tmp`` (on a kill).
    The file gets the permissions a plain ``open(path, "w")`` would give it (``mkstemp``'s are 0600),
    so results and checkpoints in a shared folder stay readable by the group.

    Args:
        path: the final file.
        write: writes the complete content to the path it is given.

    Returns:
        Path: ``path``.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.txt", lambda p: p.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(_new_file_mode())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporaries :func:`atomic_write` left in ``folder`` for ``name`` (a glob) when killed.

    Call it only while holding the lock that serialises the writers of those files (a run's claim, a
    table's lock): a live writer's temporary must not be taken. Returns the files removed.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / ".a.txt.x1.tmp").write_text("")
    >>> [p.name for p in remove_stale_temporaries(d, "a.txt")]
    ['.a.txt.x1.tmp']
    """
    folder = Path(folder)
    stale = sorted(folder.glob(f".{name}.*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block; blocks until free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def try_file_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try once to take an exclusive ``flock`` on ``path``; yields whether it was taken.

    Used to claim a sweep run: a second process that finds the run claimed moves on to another one.
    The lock dies with its process, so a killed run can be claimed again at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

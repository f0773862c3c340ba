"""The results table: one CSV row per finished run, appended atomically under a lock.

Several processes (a Slurm array, several machines on a shared folder, two terminals) may append to
the same table. Each append takes an exclusive ``flock`` on ``<table>.lock``, re-reads the table,
skips the row if its ``id`` is already there, and writes the whole table to a temporary file that
replaces the old one (``os.replace``). So no row is lost (appends are serialised), none appears
twice (the id check happens under the lock), and a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ._io import atomic_write, file_lock

__all__ = ["ResultsTable", "read_results"]


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table written by :class:`ResultsTable`.

    Raises:
        FileNotFoundError: no such file (the message says how to make one).
        ValueError: the file is not a results table (no ``id`` column).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ResultsTable.FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"results table not found: {path} (run `dynfilter sweep ... --out DIR` first)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read results table {path}: {exc}") from exc
    if "id" not in df.columns:
        raise ValueError(f"{path} is not a results table: it has no 'id' column (columns: {list(df.columns)[:8]})")
    return df


class ResultsTable:
    """A CSV file of result rows keyed by ``id``, safe to share between processes.

    Args:
        path: the CSV file, or a folder (the table is ``<folder>/results.csv``).

    >>> import tempfile
    >>> table = ResultsTable(tempfile.mkdtemp())
    >>> table.append({"id": "a", "psnr": 30.0}), table.append({"id": "a", "psnr": 31.0})
    (True, False)
    >>> table.read()[["id", "psnr"]].values.tolist()
    [['a', 30.0]]
    """

    FILENAME = "results.csv"

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.path = path / self.FILENAME if path.suffix != ".csv" else path
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def read(self) -> pd.DataFrame:
        """All rows (an empty frame with an ``id`` column when the table does not exist yet)."""
        if not self.path.is_file():
            return pd.DataFrame({"id": pd.Series(dtype=str)})
        return read_results(self.path)

    def ids(self) -> set[str]:
        """The ids of the finished runs."""
        return set(self.read()["id"].astype(str))

    def append(self, row: Mapping[str, Any]) -> bool:
        """Add ``row`` unless a row with its ``id`` exists; returns whether it was added.

        New columns are added to the table (older rows get empty cells); rows keep their order.
        """
        if "id" not in row or not str(row["id"]):
            raise ValueError(f"a result row needs a non-empty 'id', got keys {sorted(row)}")
        with file_lock(self.lock_path):
            df = self.read()
            if str(row["id"]) in set(df["id"].astype(str)):
                return False
            new = pd.DataFrame([dict(row)])
            df = new if df.empty else pd.concat([df, new], ignore_index=True)
            atomic_write(self.path, lambda tmp: df.to_csv(tmp, index=False))
            return True

    def __repr__(self) -> str:
        return f"ResultsTable({str(self.path)!r})"

"""The results table: one CSV row per finished run, appended atomically under a lock, every row checked.

Several processes (a Slurm array, several machines on a shared folder, two terminals) may append to
the same table. Each append takes an exclusive ``flock`` on ``<table>.lock``, re-reads the table,
skips the row if its ``id`` is already there, and writes the whole table to a temporary file that
replaces the old one (``os.replace``). So no row is lost (appends are serialised), none appears
twice (the id check happens under the lock), and a reader never sees a half-written file.

Damage from outside (a copy cut short, a sync tool, a full disk of another writer) is caught: every row
ends with a ``row_check`` field, the CRC-32 of the rest of its line, so a row cut anywhere or altered
fails its check. Tables written before the check get a weaker test (every field present, the timestamp
complete). A damaged row is reported with the file and line and never counts as a finished run: its run
is queued again, and the next append moves the damaged text to ``<table>.damaged-<UTC time>`` before it
rewrites the table, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ._io import atomic_write, file_lock, remove_stale_temporaries

__all__ = ["ResultsTable", "read_results", "read_checked_csv", "write_checked_csv", "DamagedRow", "DamagedRowWarning",
           "CHECK_COLUMN"]

#: The last column of every row written: the CRC-32 of the rest of the line, as 8 hex digits.
CHECK_COLUMN = "row_check"


class DamagedRowWarning(UserWarning):
    """A row of a results table failed its check; it is left out."""


@dataclass(frozen=True)
class DamagedRow:
    """A line of a results table that is not a complete row: where it is, what it holds, why it fails."""

    path: Path
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} line {self.line}: {self.reason}; the row is left out (its run counts as not finished)"


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def _check_line(line: str, header: list[str], checked: bool) -> str | None:
    """Why ``line`` is not a complete row of a table with ``header`` (``None`` when it is)."""
    if checked:
        body, sep, crc = line.rpartition(",")
        if not sep or _crc(body) != crc:
            return "its row_check does not match its content: the row was cut short or altered"
    try:
        fields = next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration) as exc:
        return f"it does not parse as CSV ({exc})"
    if len(fields) != len(header):
        return f"it has {len(fields)} of the table's {len(header)} fields: the row was cut short"
    row = dict(zip(header, fields))
    if "id" in header and not row.get("id"):
        return "it has no id"
    stamp = row.get("timestamp")
    if not checked and stamp:
        try:
            parsed = datetime.datetime.fromisoformat(stamp)
        except ValueError:
            return f"its timestamp {stamp!r} is incomplete"
        if parsed.tzinfo is None:
            return f"its timestamp {stamp!r} is incomplete"
    return None


def _scan(path: Path, what: str = "results table") -> tuple[pd.DataFrame, list[DamagedRow]]:
    """The complete rows of the table at ``path`` (without the check column) and its damaged lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {what} {path}: it is not UTF-8 text ({exc})") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise ValueError(f"cannot read {what} {path}: it is empty (no header line)")
    header = next(csv.reader([lines[0]]))
    checked = header[-1] == CHECK_COLUMN
    good, damaged = [lines[0]], []
    for number, line in enumerate(lines[1:], start=2):
        reason = _check_line(line, header, checked)
        if reason is None:
            good.append(line)
        else:
            damaged.append(DamagedRow(path, number, line, reason))
    try:
        df = pd.read_csv(io.StringIO("\n".join(good) + "\n"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc
    return df.drop(columns=[CHECK_COLUMN], errors="ignore"), damaged


def _render(df: pd.DataFrame) -> str:
    """``df`` as CSV text, each row ending with its check."""
    lines = df.drop(columns=[CHECK_COLUMN], errors="ignore").to_csv(index=False).splitlines()
    return "\n".join([f"{lines[0]},{CHECK_COLUMN}", *(f"{line},{_crc(line)}" for line in lines[1:])]) + "\n"


def write_checked_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write ``df`` atomically as CSV whose rows end with their ``row_check`` (a run's ``images.csv``)."""
    text = _render(df)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_checked_csv(path: str | os.PathLike, *, warn: bool = True) -> pd.DataFrame:
    """Read a CSV written by :func:`write_checked_csv`: its complete rows, damaged ones reported and left out.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "images.csv"
    >>> write_checked_csv(p, pd.DataFrame({"image": ["a.png", "b.png"], "psnr": [30.0, 31.0]}))
    >>> _ = p.write_text(p.read_text()[:-3])  # the last row cut short
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always"); rows = read_checked_csv(p)
    >>> rows["image"].tolist(), "line 3: its row_check does not match" in str(caught[0].message)
    (['a.png'], True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    df, damaged = _scan(path, "table")
    if warn:
        for row in damaged:
            warnings.warn(str(row).replace("its run counts as not finished", "not counted"), DamagedRowWarning,
                          stacklevel=2)
    return df


def read_results(path: str | os.PathLike, *, warn: bool = True) -> pd.DataFrame:
    """Read a results table written by :class:`ResultsTable`: its complete rows only.

    Damaged rows (see the module doc) are left out and, with ``warn``, reported by a
    :class:`DamagedRowWarning` naming the file and line.

    Raises:
        FileNotFoundError: no such file (the message says how to make one).
        ValueError: the file is not a results table (no ``id`` column, not CSV text).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ResultsTable.FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"results table not found: {path} (run `dynfilter sweep ... --out DIR` first)")
    df, damaged = _scan(path)
    if "id" not in df.columns:
        raise ValueError(f"{path} is not a results table: it has no 'id' column (columns: {list(df.columns)[:8]})")
    if warn:
        for row in damaged:
            warnings.warn(str(row), DamagedRowWarning, stacklevel=2)
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

    def read(self, warn: bool = True) -> pd.DataFrame:
        """All complete rows (an empty frame with an ``id`` column when the table does not exist yet)."""
        if not self.path.is_file():
            return pd.DataFrame({"id": pd.Series(dtype=str)})
        return read_results(self.path, warn=warn)

    def damaged(self) -> list[DamagedRow]:
        """The lines of the table that are not complete rows (see the module doc)."""
        return _scan(self.path)[1] if self.path.is_file() else []

    def report_damaged(self) -> list[DamagedRow]:
        """:meth:`damaged`, each also reported by a :class:`DamagedRowWarning` naming the file and line."""
        damaged = self.damaged()
        for row in damaged:
            warnings.warn(str(row), DamagedRowWarning, stacklevel=2)
        return damaged

    def ids(self) -> set[str]:
        """The ids of the finished runs (complete rows only)."""
        return set(self.read(warn=False)["id"].astype(str))

    def append(self, row: Mapping[str, Any]) -> bool:
        """Add ``row`` unless a complete row with its ``id`` exists; returns whether it was added.

        New columns are added to the table (older rows get empty cells); rows keep their order. Damaged
        rows are moved aside first (see the module doc), so a run whose row was damaged gets its new one.
        """
        if "id" not in row or not str(row["id"]):
            raise ValueError(f"a result row needs a non-empty 'id', got keys {sorted(row)}")
        with file_lock(self.lock_path):
            remove_stale_temporaries(self.path.parent, self.path.name)  # a killed writer's; we hold the lock
            df, damaged = _scan(self.path) if self.path.is_file() else (pd.DataFrame({"id": pd.Series(dtype=str)}), [])
            if str(row["id"]) in set(df["id"].astype(str)):
                return False
            if damaged:
                self._set_aside(damaged)
            new = pd.DataFrame([{k: v for k, v in dict(row).items() if k != CHECK_COLUMN}])
            df = new if df.empty else pd.concat([df, new], ignore_index=True)
            write_checked_csv(self.path, df)
            return True

    def _set_aside(self, damaged: list[DamagedRow]) -> Path:
        """Keep the damaged lines in ``<table>.damaged-<UTC time>`` (with their reasons) before a rewrite drops them."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        header = self.path.read_text(encoding="utf-8").split("\n", 1)[0]
        text = "".join(f"# line {d.line}: {d.reason}\n" for d in damaged) + header + "\n"
        text += "".join(d.text + "\n" for d in damaged)
        atomic_write(aside, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        warnings.warn(f"{len(damaged)} damaged row(s) of {self.path} moved to {aside}", DamagedRowWarning, stacklevel=3)
        return aside

    def __repr__(self) -> str:
        return f"ResultsTable({str(self.path)!r})"

"""Results table: one row per id, atomic rewrites, no lost or duplicated rows under concurrent appends."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from experiments.results import ResultsTable, read_results


def test_append_skips_existing_ids_and_unions_columns(tmp_path):
    table = ResultsTable(tmp_path)
    assert table.path == tmp_path / "results.csv"
    assert table.ids() == set()
    assert table.append({"id": "a", "psnr_x": 30.0})
    assert table.append({"id": "b", "psnr_y": 29.0})
    assert not table.append({"id": "a", "psnr_x": 99.0})
    df = table.read()
    assert df["id"].tolist() == ["a", "b"]
    assert df.loc[0, "psnr_x"] == 30.0 and df["psnr_x"].isna().tolist() == [False, True]
    assert df.loc[1, "psnr_y"] == 29.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.lock"], "temp files left"
    with pytest.raises(ValueError, match="non-empty 'id'"):
        table.append({"psnr": 1.0})


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="results table not found"):
        read_results(tmp_path / "results.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'id' column"):
        read_results(tmp_path / "x.csv")


def _append_many(folder: str, worker: int, barrier) -> None:
    table = ResultsTable(folder)
    barrier.wait()
    for i in range(12):
        # Ids overlap between workers on purpose: each id must end up exactly once.
        table.append({"id": f"run{(i + 3 * worker) % 20:02d}", "worker": worker, "value": i})


def test_concurrent_appends_lose_and_duplicate_nothing(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    expected = {f"run{(i + 3 * w) % 20:02d}" for w in range(4) for i in range(12)}
    ids = read_results(tmp_path / "results.csv")["id"].tolist()
    assert len(ids) == len(set(ids)), "duplicated rows"
    assert set(ids) == expected, "lost rows"

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


def _row(i: int) -> dict:
    return {"id": f"run{i}", "recipe_kwargs": '{"init": "identity", "n": 3}', "psnr_x": 30.0 + i / 7,
            "timestamp": "2026-12-02T10:00:00+00:00"}


def test_a_row_cut_at_any_byte_is_not_a_finished_run(tmp_path):
    import warnings

    from experiments.results import DamagedRowWarning

    table = ResultsTable(tmp_path / "t")
    for i in range(3):
        table.append(_row(i))
    text = table.path.read_bytes()
    last = text.rstrip(b"\n").rfind(b"\n") + 1  # where the last row starts
    full_row = text[last:].rstrip(b"\n")
    for cut in range(last, len(text)):
        table.path.write_bytes(text[:cut])
        complete = cut >= last + len(full_row)  # only the newline was cut off
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = set(read_results(table.path)["id"])
        assert ids == ({"run0", "run1", "run2"} if complete else {"run0", "run1"}), cut
        assert table.ids() == ids
        if not complete and cut > last:
            assert any(issubclass(w.category, DamagedRowWarning) and "line 4" in str(w.message) for w in caught), cut
    # The next append sets the damaged text aside and rewrites the table; the re-run's row replaces it.
    table.path.write_bytes(text[: last + len(full_row) // 2])
    with pytest.warns(DamagedRowWarning, match="moved to"):
        assert table.append(_row(2))
    aside = list((tmp_path / "t").glob("results.csv.damaged-*"))
    assert len(aside) == 1 and full_row[: len(full_row) // 2].decode() in aside[0].read_text()
    assert read_results(table.path)["id"].tolist() == ["run0", "run1", "run2"]
    assert table.damaged() == []


def test_an_altered_row_fails_its_check(tmp_path):
    table = ResultsTable(tmp_path)
    table.append(_row(0))
    table.append(_row(1))
    table.path.write_text(table.path.read_text().replace("30.142857", "31.142857"))
    assert set(read_results(table.path, warn=False)["id"]) == {"run0"}
    assert "row_check does not match" in table.damaged()[0].reason


def test_tables_written_without_checks_are_still_read_and_checked(tmp_path):
    import pandas as pd

    path = tmp_path / "results.csv"
    pd.DataFrame([_row(0), _row(1)]).to_csv(path, index=False)
    assert set(read_results(path)["id"]) == {"run0", "run1"}
    text = path.read_text()
    path.write_text(text[: text.rstrip().rfind("+00:00")])  # the last timestamp cut short
    assert set(read_results(path, warn=False)["id"]) == {"run0"}
    path.write_text(text[: text.rstrip().rfind(",")])  # the last field gone
    assert "fields" in ResultsTable(path).damaged()[0].reason
    with pytest.warns(UserWarning, match="moved to"):
        assert ResultsTable(path).append(_row(2))
    assert read_results(path)["id"].tolist() == ["run0", "run2"]  # rewritten with checks
    assert path.read_text().splitlines()[0].endswith(",row_check")

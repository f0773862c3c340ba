"""The benchmark harness (timing, peak memory, bandwidth, tables) and the ``dynfilter bench`` command."""

from __future__ import annotations

import csv
import time

import pytest
import torch

from experiments.bench.harness import (
    BenchConfig,
    Section,
    copy_bandwidth,
    format_markdown,
    peak_memory,
    run_suites,
    streaming_bound,
    write_csv,
)
from dynfilter.complexity import time_callables
from experiments.cli import main

MIB = 1 << 20


def test_time_callables_interleaves_rounds_and_keeps_the_timed_ones():
    calls = []
    timings = time_callables({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=2)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds, then 3 timed ones, each calling a then b
    assert all(len(t.runs) == 3 and t.median in t.runs for t in timings.values())
    assert timings["a"].threads == torch.get_num_threads()


def test_time_callables_settle_calls_each_contender_right_before_its_timed_call():
    calls = []
    time_callables({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=2, warmup=1, settle=2)
    assert calls == ["a", "b"] + ["a", "a", "a", "b", "b", "b"] * 2  # warm-up round without settling


def test_time_callables_times_the_call_after_the_settling_one():
    # A contender that is slow whenever its rival ran last (as after a rival freed gigabytes): settling
    # absorbs that, so only the call that follows its own previous call is timed.
    last = []

    def contender(name):
        def call():
            if last and last[-1] != name:
                time.sleep(0.05)
            last.append(name)

        return call

    fns = {"a": contender("a"), "b": contender("b")}
    assert time_callables(fns, repeat=3, warmup=0).get("b").median >= 0.05
    settled = time_callables(fns, repeat=3, warmup=0, settle=1)
    assert all(t.median < 0.025 for t in settled.values())


def test_time_callables_rejects_no_rounds():
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        time_callables({"a": lambda: None}, repeat=0)
    with pytest.raises(ValueError, match="settle >= 0"):
        time_callables({"a": lambda: None}, settle=-1)


def test_peak_memory_counts_what_is_held_at_once():
    def work():
        a = torch.empty(4 * MIB, dtype=torch.uint8).fill_(1)
        b = torch.empty(4 * MIB, dtype=torch.uint8).fill_(2)  # 8 MiB held here
        del a
        c = torch.empty(2 * MIB, dtype=torch.uint8).fill_(3)  # 6 MiB
        return b, c

    assert peak_memory(work) == 8 * MIB


def test_peak_memory_is_relative_to_the_start():
    held = torch.empty(16 * MIB, dtype=torch.uint8)  # allocated before: not part of the peak
    assert peak_memory(lambda: held.add_(1)) < 64  # at most the wrapped scalar
    assert 16 * MIB <= peak_memory(lambda: held + 1) < 16 * MIB + 64


def test_bandwidth_and_bound():
    bandwidth = copy_bandwidth(1 << 22, repeat=2)
    assert 1e8 < bandwidth < 1e13  # between 0.1 GB/s and 10 TB/s
    assert streaming_bound(3_000_000, 1.5e9) == pytest.approx(2e-3)


def test_markdown_and_csv(tmp_path):
    sections = [Section("One", [{"x": 1, "y": 2.5}]), Section("Two", [{"x": 3, "z": float("nan")}], note="n")]
    text = format_markdown(sections[1])
    assert text.splitlines() == ["### Two", "", "n", "", "| x | z |", "|---|---|", "| 3 | – |"]
    with open(write_csv(sections, tmp_path / "t.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["section"] for r in rows] == ["One", "Two"]
    assert rows[0] == {"section": "One", "x": "1", "y": "2.5", "z": ""}


def test_unknown_suite():
    with pytest.raises(ValueError, match=r"unknown benchmark suite\(s\) \['nope'\]; known: \[.*'adfnet'.*'dynamic'"):
        run_suites(["nope"], BenchConfig())


def test_bench_command_quick(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")  # read by glibc at start-up only: here it is just reported
    assert main(["bench", "--suite", "dynamic", "adfnet", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "bench.md").read_text()
    assert "Command: `dynfilter bench --suite dynamic adfnet --repeat 5 --warmup 1 --settle 1 --quick`" in report
    assert "allocator default (MALLOC_TOP_PAD_=0)" in report
    for title in ("Dynamic filter: time per call", "DConv training step", "Targets", "ADFNet inference"):
        assert title in report and title in printed
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    speed = [r for r in rows if r["section"] == "Dynamic filter: time per call"]
    assert len(speed) == 2  # the quick shape at dilations 1 and 5
    assert all(float(r["fwd speedup"]) == pytest.approx(float(r["ref fwd ms"]) / float(r["lean fwd ms"]), rel=1e-6) for r in speed)
    memory = [r for r in rows if r["section"].startswith("DConv training step")]
    assert all(float(r["lean data input MiB"]) < float(r["ref data input MiB"]) for r in memory)
    # The static layer holds no kernels: its step needs less than either dynamic one.
    assert all(float(r["static dw3×3 data input MiB"]) < float(r["lean data input MiB"]) for r in memory)


def test_bench_command_rejects_bad_options(tmp_path, capsys):
    assert main(["bench", "--repeat", "0", "--out", str(tmp_path)]) == 2
    assert "--repeat must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--settle", "-1", "--out", str(tmp_path)]) == 2
    assert "--settle >= 0" in capsys.readouterr().err

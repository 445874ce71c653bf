"""Exact merge: counts equal the sum, percentiles equal one histogram of both, series aligned by second."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_report_helpers import S, make_report, make_run

from bench.recorder import Recorder
from bench.report.merge import merge_reports, merge_run_data
from bench.report.model import Histogram
from bench.report.reader import read_report
from bench.report.writer import write_report
from bench.results import Kind

T0 = 1_700_000_000 * S


def test_merge_run_data_is_exact() -> None:
    a, b = make_run(1, start_unix_ns=T0), make_run(2, base_ms=9.0, start_unix_ns=T0 + 300_000_000)
    m = merge_run_data([a, b])
    for key in a.histograms.keys() | b.histograms.keys():
        both = Histogram()
        for r in (a, b):
            if key in r.histograms:
                both.add(r.histograms[key])
        assert m.histograms[key] == both
        for p in (50, 99, 99.9):
            assert m.histograms[key].percentile_us(p) == both.percentile_us(p)
    assert m.total().requests == a.total().requests + b.total().requests
    assert m.counters == {"token_refresh": 2}
    assert sum(e.count for e in m.errors) == sum(e.count for e in a.errors) + sum(e.count for e in b.errors)
    assert m.series.requests.sum() == a.series.requests.sum() + b.series.requests.sum()
    assert m.error_samples[0].count == a.error_samples[0].count + b.error_samples[0].count


def test_series_aligned_by_wall_clock_second() -> None:
    def one(start: int, sec: int) -> Recorder:
        rec = Recorder(0, 0)
        rec.start_unix_ns = start
        rec.record(sec * S, sec * S, sec * S + 1_000_000, Kind.OK, 200, 1, 1, 1, 0)
        return rec

    a = one(T0, 2).finish(3 * S, partial=False)
    b = one(T0 + 1 * S, 1).finish(3 * S, partial=True)  # started 1 s later: its second 1 is a's second 2
    m = merge_run_data([a, b])
    assert m.series.second.tolist() == [2]
    assert m.series.requests.tolist() == [2]
    assert m.series.histogram(0).total == 2
    assert m.partial
    assert m.phase("measured").end_s == pytest.approx(4.0)
    # the answers came back at a's 2.001 s and b's 1.001 s (a's 2.001 s): one span on the merged clock
    assert m.done_span["measured"] == pytest.approx((2.001, 2.001))
    m2 = merge_run_data([a, replace(b, done_span={})])  # a part that did not say when its answers came
    assert "measured" not in m2.done_span


def test_bench_merge_command(tmp_path: Path) -> None:
    pa_ = write_report(tmp_path / "a.arrow", make_report(make_run(1, start_unix_ns=T0)))
    pb = write_report(tmp_path / "b.arrow", make_report(make_run(2, start_unix_ns=T0)))
    out = tmp_path / "all.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "merge", str(pa_), str(pb), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    merged, a, b = read_report(out), read_report(pa_), read_report(pb)
    assert merged.run.total().requests == a.run.total().requests + b.run.total().requests
    lat = merged.run.histogram("latency", "measured", "ok")
    both = a.run.histogram("latency", "measured", "ok").copy()
    both.add(b.run.histogram("latency", "measured", "ok"))
    assert lat == both
    assert merge_reports([a, b]).run.total().requests == merged.run.total().requests


def test_bench_merge_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.arrow"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "bench", "merge", str(bad), "-o", str(tmp_path / "o.arrow")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_merged_counts_are_every_parts_sum() -> None:
    """``abandoned``, ``connections_opened`` and ``waited_at_cap`` count each part's share: the merged report
    (--processes, a Locust master, `bench merge`) carries their sum, not the first part's; a count no part has
    stays absent."""
    parts = [make_report(make_run(1, start_unix_ns=T0)), make_report(make_run(2, start_unix_ns=T0 + S))]
    parts[0].meta.extra.update(abandoned=3, connections_opened=8)
    parts[1].meta.extra.update(abandoned=4, connections_opened=8, waited_at_cap=5)
    extra = merge_reports(parts).meta.extra
    assert (extra["abandoned"], extra["connections_opened"], extra["waited_at_cap"]) == (7, 16, 5)
    for r in parts:
        for key in ("abandoned", "connections_opened", "waited_at_cap"):
            r.meta.extra.pop(key, None)
    assert not {"abandoned", "connections_opened", "waited_at_cap"} & merge_reports(parts).meta.extra.keys()

"""Report file: exact round trip, readable with pyarrow alone, clear errors, redaction, atomic writes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pytest
from test_report_helpers import make_report, make_run

from bench.errors import InputError
from bench.report.reader import iter_raw, read_report
from bench.report.writer import SCHEMA, default_report_path, redact_scenario, write_report


def test_round_trip_is_exact(tmp_path: Path) -> None:
    run = make_run(raw=tmp_path / "raw.arrows")
    report = make_report(run)
    path = write_report(tmp_path / "r.arrow", report)
    back = read_report(path)
    assert back.meta == report.meta
    assert back.run.histograms == run.histograms
    assert back.run.series == run.series
    assert back.run.totals == run.totals
    assert back.run.errors == run.errors and back.run.error_samples == run.error_samples
    assert back.run.counters == run.counters and back.run.gauges == run.gauges
    assert back.run.phases == run.phases and back.run.start_unix_ns == run.start_unix_ns
    assert back.run.done_span == run.done_span and set(run.done_span) == {"warmup", "measured"}
    assert sum(b.num_rows for b in iter_raw(path)) == 2000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_readable_with_pyarrow_alone(tmp_path: Path) -> None:
    run = make_run()
    path = write_report(tmp_path / "r.arrow", make_report(run))
    reader = pyarrow.ipc.open_file(str(path))
    assert reader.schema.metadata[b"bench.schema_version"] == b"1"
    meta = json.loads(reader.schema.metadata[b"bench.report"])
    assert meta["scenario_name"] == "quickstart"
    table = reader.read_all()
    hist = table.filter(pc.equal(table["section"], "histogram"))
    lat = hist.filter(pc.and_(pc.equal(hist["name"], "latency"), pc.equal(hist["phase"], "measured")))
    assert sum(lat["count"].to_pylist()) == run.total("measured").requests
    series = table.filter(pc.equal(table["section"], "series"))
    assert sum(series["requests"].to_pylist()) == run.total("measured").requests + run.total("warmup").requests


def test_truncated_file_is_an_input_error(tmp_path: Path) -> None:
    path = write_report(tmp_path / "r.arrow", make_report(make_run()))
    data = path.read_bytes()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_report(cut)


def test_non_report_and_wrong_version(tmp_path: Path) -> None:
    other = tmp_path / "other.arrow"
    with pyarrow.ipc.new_file(str(other), pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": [1]}))
    with pytest.raises(InputError, match="not a bench report"):
        read_report(other)
    text = tmp_path / "t.arrow"
    text.write_text("hello")
    with pytest.raises(InputError):
        read_report(text)
    future = tmp_path / "future.arrow"
    schema = SCHEMA.with_metadata({b"bench.schema_version": b"99", b"bench.report": b"{}"})
    with pyarrow.ipc.new_file(str(future), schema) as w:
        pass
    with pytest.raises(InputError, match="version 99"):
        read_report(future)
    with pytest.raises(InputError, match="no such file"):
        read_report(tmp_path / "missing.arrow")


def test_partial_flag_round_trips(tmp_path: Path) -> None:
    run = make_run()
    run.partial = True
    assert read_report(write_report(tmp_path / "p.arrow", make_report(run))).run.partial


def test_redact_scenario() -> None:
    text = ('[auth]\ntoken = "abc123"\nclient_secret = \'s3cr3t\'\npassword=hunter2\ntoken_env = "WALLAROO_TOKEN"\n'
            'api_key = "k-1"\n[target]\nurl = "https://x/infer"\nheaders = { Authorization = "Bearer zzz", '
            'Accept = "application/json" }\nextra = ["Authorization: Bearer yyy"]\nconcurrency = 8\n')
    out = redact_scenario(text)
    for secret in ("abc123", "s3cr3t", "hunter2", "k-1", "zzz", "yyy"):
        assert secret not in out
    for kept in ('token_env = "WALLAROO_TOKEN"', 'url = "https://x/infer"', "concurrency = 8",
                 'Accept = "application/json"'):
        assert kept in out
    assert out.count("\n") == text.count("\n")


def test_default_report_path() -> None:
    when = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    assert default_report_path(Path("reports"), "quick start/x", when) == Path(
        "reports/20250304T050607Z-quick-start-x.arrow")


def test_figures_with_no_sample_are_null_never_0(tmp_path: Path) -> None:
    """A second whose requests all failed has no latency (null in the series); so has an empty histogram row.
    The file still reads back exactly."""
    from bench.recorder import Recorder
    from bench.report.model import HistKey, Histogram
    from bench.results import Kind

    s = 1_000_000_000
    rec = Recorder(0, s)
    for i in range(10):
        rec.record(i * s // 10, i * s // 10, i * s // 10 + 1_000_000, Kind.OK, 200, 1, 10, 10, 0)  # second 0
        t = s + i * s // 10
        rec.record(t, t, t + 1_000_000, Kind.HTTP_ERROR, 503, 1, 10, 10, 0)  # second 1: errors only
    run = rec.finish(2 * s, partial=False)
    run.histograms[HistKey("server", "measured", "all")] = Histogram()
    path = write_report(tmp_path / "r.arrow", make_report(run))
    table = pyarrow.ipc.open_file(str(path)).read_all()
    series = table.filter(pc.equal(table["section"], "series")).to_pylist()
    assert [r["second"] for r in series] == [0, 1]
    assert series[0]["p99_ms"] > 0 and series[0]["max_ms"] > 0
    assert all(series[1][k] is None for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")), series[1]
    empty = next(r for r in table.filter(pc.equal(table["section"], "histogram")).to_pylist() if r["name"] == "server")
    assert empty["count"] == 0 and all(empty[k] is None for k in ("min_ms", "max_ms", "mean_ms", "p50_ms", "p99_ms"))
    back = read_report(path)
    assert back.run.series == run.series and back.run.histograms == run.histograms

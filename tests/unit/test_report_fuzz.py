"""The report reader on damaged input (hypothesis): truncated or corrupted Arrow files and wrong schemas give
an InputError (one line, exit 2 through the CLI), never another exception; whatever it accepts, the views
render. Short in the default run; ``BENCH_FUZZ_LONG=1`` runs the long version (2,000 examples each)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_report_helpers import make_report, make_run

from bench.errors import InputError
from bench.report.html import render_html
from bench.report.markdown import report_markdown
from bench.report.reader import read_report
from bench.report.summary import render_summary, summarize
from bench.report.writer import SCHEMA, write_report

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("BENCH_FUZZ_LONG") == "1"
FUZZ = settings(max_examples=2000 if LONG else 60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    run = make_run(3, n=300)
    path = write_report(tmp_path_factory.mktemp("fuzz") / "good.arrow", make_report(run))
    return path.read_bytes()


def _check(data: bytes, path: Path) -> None:
    """Reading either fails with InputError or gives a report every view can render."""
    path.write_bytes(data)
    try:
        report = read_report(path)
    except InputError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    summarize(report)
    render_summary(report, Console(file=io.StringIO(), width=120, color_system=None))
    report_markdown(report)
    render_html(report)


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated(good: bytes, tmp_path: Path, cut: float) -> None:
    path = tmp_path / "t.arrow"
    path.write_bytes(good[: int(len(good) * cut)])
    with pytest.raises(InputError):
        read_report(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1,
                      max_size=8))
def test_corrupted_bytes(good: bytes, tmp_path: Path, flips: list[tuple[float, int]]) -> None:
    data = bytearray(good)
    for where, value in flips:
        data[int(where * len(data))] = value
    _check(bytes(data), tmp_path / "c.arrow")


_TYPES = st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.int32(), pa.binary()])
_SECTIONS = st.sampled_from(["meta", "phase", "total", "histogram", "series", "gauge", "counter", "error",
                             "error_sample", "raw", "server_latency", "whatever"])


@FUZZ
@given(drop=st.sets(st.sampled_from([f.name for f in SCHEMA]), max_size=4),
       retype=st.dictionaries(st.sampled_from([f.name for f in SCHEMA]), _TYPES, max_size=3),
       section=_SECTIONS, values=st.lists(st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=8)),
                                          min_size=1, max_size=3))
def test_wrong_schema(tmp_path: Path, drop: set[str], retype: dict[str, pa.DataType], section: str,
                      values: list[object]) -> None:
    """Columns missing, of other types, or holding junk, under valid bench metadata."""
    fields = [pa.field(f.name, retype.get(f.name, f.type)) for f in SCHEMA if f.name not in drop]
    cols = []
    for f in fields:
        if f.name == "section" and pa.types.is_string(f.type):
            cols.append(pa.array([section] * len(values), pa.string()))
            continue
        try:
            cols.append(pa.array(values, f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            cols.append(pa.nulls(len(values), f.type))
    schema = pa.schema(fields, metadata={b"bench.schema_version": b"1", b"bench.report": b"{}"})
    sink = io.BytesIO()
    with pyarrow.ipc.new_file(sink, schema) as w:
        w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
    _check(sink.getvalue(), tmp_path / "w.arrow")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "directory"])
def test_cli_commands_give_one_line_and_exit_2(good: bytes, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bad.arrow"
    if damage == "truncate":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"ARROW1\x00\x00" + bytes(range(256)) * 4)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.mkdir()
    ok = tmp_path / "ok.arrow"
    ok.write_bytes(good)
    for args in (["report", str(bad)], ["compare", str(ok), str(bad)], ["compare", str(bad), str(ok)],
                 ["merge", str(ok), str(bad), "-o", str(tmp_path / "m.arrow")]):
        proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "bad.arrow" in proc.stderr, proc.stderr


def test_schema_metadata_holds_partial_and_start(tmp_path: Path) -> None:
    """docs/report-format.md: the bench.report JSON in the schema metadata has partial and start_unix_ns."""
    run = make_run(4, n=100, start_unix_ns=1_700_000_000_123_456_789)
    run.partial = True
    path = write_report(tmp_path / "p.arrow", make_report(run))
    meta = json.loads(pyarrow.ipc.open_file(str(path)).schema.metadata[b"bench.report"])
    assert meta["partial"] is True and meta["start_unix_ns"] == 1_700_000_000_123_456_789
    assert meta["scenario_name"] == "quickstart"


def test_unknown_sections_round_trip(tmp_path: Path) -> None:
    """Sections the run model does not interpret are kept (newer additions, server metrics)."""
    report = make_report(make_run(5, n=100))
    report.sections["server_metric"] = [{"name": "requests_total", "second": 1, "value": 12.0}]
    back = read_report(write_report(tmp_path / "s.arrow", report))
    row = back.sections["server_metric"][0]
    assert (row["name"], row["second"], row["value"]) == ("requests_total", 1, 12.0)

"""Capacity you can show: the knee and highest-passing maths, the capacity report file (readable with pyarrow
alone), and its terminal / Markdown / HTML views."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.ipc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from test_report_helpers import make_report, make_run

from bench.capacity import highest_pass, knee_index
from bench.errors import InputError
from bench.report.capacity_report import (
    CapacityReport,
    CapacityStep,
    is_capacity_report,
    read_capacity_report,
    step_from_report,
    write_capacity_report,
)
from bench.report.capacity_views import capacity_html, capacity_markdown, render_capacity

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 400.0  # req/s of the modelled endpoint


def queue_steps(rates: list[float], *, server: bool = True) -> list[CapacityStep]:
    """Steps of an M/M/1-like endpoint: latency = 2 ms / (1 - load), achieved = min(offered, capacity)."""
    out = []
    for n, r in enumerate(rates, start=1):
        rho = min(r / CAPACITY, 0.995)
        p50 = 2.0 / (1 - rho)
        achieved = min(r, CAPACITY * 0.99)
        errors = 0.0 if r < CAPACITY else 0.2
        verdict = "pass" if 5 * p50 <= 50 and errors <= 0.01 else "fail"
        out.append(CapacityStep(n, r, achieved, p50, 5 * p50, errors, verdict, requests=int(achieved * 5),
                                server_p50_ms=1.0 if server else None, server_p99_ms=2.0 if server else None,
                                reasons=() if verdict == "pass" else ("p99 over 50 ms",)))
    return out


RATES = [50.0, 100.0, 200.0, 300.0, 350.0, 380.0, 420.0]


def test_knee_is_where_latency_outgrows_throughput() -> None:
    steps = queue_steps(RATES)
    i = knee_index([s.offered for s in steps], [s.goodput for s in steps], [s.p99_ms for s in steps])
    assert i is not None and steps[i].offered == 200.0  # 1/(1-rho) doubles at half the capacity: max power
    assert highest_pass([s.offered for s in steps], [s.verdict for s in steps]) == RATES.index(300.0)


def test_no_knee_when_the_sweep_stops_early_or_has_too_few_steps() -> None:
    low = queue_steps([20.0, 40.0, 80.0])
    assert knee_index([s.offered for s in low], [s.goodput for s in low], [s.p99_ms for s in low]) is None
    assert knee_index([1.0, 2.0], [1.0, 2.0], [1.0, 1.0]) is None
    assert knee_index([1.0, 2.0, 3.0], [1.0, None, 3.0], [1.0, 1.0, None]) is None  # unmeasured steps
    assert highest_pass([1.0, 2.0], ["fail", "harness"]) is None


@given(st.permutations(list(range(len(RATES)))))
def test_knee_does_not_depend_on_step_order(order: list[int]) -> None:
    """A rate search visits loads out of order (bisection): the answer is the same load."""
    steps = [queue_steps(RATES)[i] for i in order]
    i = knee_index([s.offered for s in steps], [s.goodput for s in steps], [s.p99_ms for s in steps])
    assert i is not None and steps[i].offered == 200.0


def test_report_round_trip_and_plain_pyarrow(tmp_path: Path) -> None:
    steps = queue_steps(RATES)
    path = write_capacity_report(tmp_path / "cap.arrow", steps, scenario_name="cap", slo="p99_ms ≤ 50",
                                 stop_reason="bracketed", extra={"precision": 0.05})
    assert is_capacity_report(path)
    back = read_capacity_report(path)
    assert back.steps == steps and back.info["stop_reason"] == "bracketed"
    assert back.knee is not None and back.knee.offered == 200.0 and back.best is not None and back.best.offered == 300.0
    # without bench: pyarrow alone
    reader = pyarrow.ipc.open_file(str(path))
    info = json.loads(reader.schema.metadata[b"bench.capacity"])
    rows = reader.read_all().to_pylist()
    assert info["knee"]["offered"] == 200.0 and info["highest_pass"]["offered"] == 300.0
    assert [r["offered"] for r in rows] == RATES and rows[0]["server_p99_ms"] == 2.0


def test_not_a_capacity_report(tmp_path: Path) -> None:
    from bench.report.writer import write_report

    run_path = write_report(tmp_path / "run.arrow", make_report(make_run(1, n=100)))
    assert not is_capacity_report(run_path) and not is_capacity_report(tmp_path / "nope.arrow")
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"bad\.arrow"):
        read_capacity_report(bad)


def test_views_table_findings_and_missing_values() -> None:
    steps = [*queue_steps(RATES, server=False), CapacityStep(8, 2000.0, 0.0, None, None, 1.0, "fail")]
    cap = read_capacity_report_like(steps)
    buf = io.StringIO()
    render_capacity(cap, Console(file=buf, width=160, color_system=None))
    out = buf.getvalue()
    assert "knee: 200 req/s offered" in out and "highest load that met the SLO: 300 req/s" in out
    md = capacity_markdown(cap)
    assert "| 8 | 2,000 | 0.0 | — | — |" in md and "server p50" not in md


def read_capacity_report_like(steps: list[CapacityStep]) -> CapacityReport:
    return CapacityReport(steps, {"scenario_name": "cap", "load_kind": "rate", "slo": "p99_ms ≤ 50"})


def test_html_draws_curves_and_marks() -> None:
    page = capacity_html(read_capacity_report_like(queue_steps(RATES)))
    series = dict(re.findall(r'<polyline class="series" data-name="([^"]*)" data-points="(\d+)"', page))
    for name in ("p50", "p99", "server p50", "server p99", "achieved", "offered (ideal)", "error rate"):
        assert int(series.get(name, 0)) >= 2, (name, series)
    marks = re.findall(r'<g class="mark" data-name="([^"]*)"', page)
    assert marks.count("knee") == 3 and marks.count("highest under SLO") == 3
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_step_from_report_uses_the_views_figures() -> None:
    report = make_report(make_run(2))
    report.meta.extra["abandoned"] = 10
    step = step_from_report(3, 100.0, report, verdict="pass")
    assert step.p99_ms is not None and step.p99_ms > 0 and step.server_p50_ms is None
    assert step.error_rate is not None and step.requests == report.run.total().requests + 10


def test_bench_report_on_a_capacity_file(tmp_path: Path) -> None:
    path = write_capacity_report(tmp_path / "cap.arrow", queue_steps(RATES), scenario_name="cap")
    html_path, md_path = tmp_path / "cap.html", tmp_path / "cap.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "report", str(path), "--html", str(html_path),
                           "--markdown", str(md_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    assert "knee" in proc.stdout and html_path.read_text().count("<svg") == 3
    assert "highest load that met the SLO" in md_path.read_text()


def test_capacity_doc_example_runs_without_bench(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "capacity.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert snippets
    path = write_capacity_report(tmp_path / "cap.arrow", queue_steps(RATES), scenario_name="cap")
    guard = ("import sys\nclass _NoBench:\n    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'bench' or name.startswith('bench.'):\n"
             "            raise ImportError('example must not import bench')\n"
             "sys.meta_path.insert(0, _NoBench())\n")
    for snippet in snippets:
        script = tmp_path / "example.py"
        script.write_text(guard + snippet)
        proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "knee: {'step': 3, 'offered': 200.0" in proc.stdout


def test_concurrency_sweep_is_labelled_in_clients(tmp_path: Path) -> None:
    """perf_analyzer-style concurrency sweep: offered = clients, no 'ideal' line (req/s ≠ clients)."""
    steps = [CapacityStep(n, float(c), 100.0 * min(c, 4), 10.0 * max(1, c / 4), 30.0 * max(1, c / 4), 0.0,
                          "pass" if c <= 8 else "fail", load_kind="concurrency")
             for n, c in enumerate((1, 2, 4, 8, 16, 32), start=1)]
    path = write_capacity_report(tmp_path / "c.arrow", steps, scenario_name="conc", load_kind="concurrency")
    cap = read_capacity_report(path)
    assert cap.knee is not None and cap.knee.offered == 4.0 and cap.best is not None and cap.best.offered == 8.0
    page = capacity_html(cap)
    assert "offered (clients)" in page and 'data-name="offered (ideal)"' not in page
    assert "knee: 4 clients offered" in capacity_markdown(cap)
    with pytest.raises(ValueError):
        write_capacity_report(tmp_path / "x.arrow", steps, scenario_name="x", load_kind="users")

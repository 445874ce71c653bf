"""Missing is not zero: views of a run with no ok request show "—" (None in JSON); compare does not judge."""

from __future__ import annotations

import io
import re

import orjson
from rich.console import Console
from test_compare import synth_run

from bench.recorder import Recorder
from bench.report.compare import compare_reports
from bench.report.html import render_html
from bench.report.markdown import comparison_markdown, report_markdown
from bench.report.model import Report, ReportMeta, RunData
from bench.report.summary import render_summary, summarize
from bench.report.terminal import render_comparison
from bench.results import Kind

S = 1_000_000_000


def all_errors_run(seconds: int = 5) -> RunData:
    """Every request a reset: no ok request, so no latency sample."""
    rec = Recorder(0, S)
    for sec in range(1 + seconds):
        for i in range(50):
            t = sec * S + i * S // 50
            rec.record(t, t, t + 1_000_000, Kind.RESET, 0, 0, 10, 0, 0)
    return rec.finish((1 + seconds) * S, partial=False)


def _report(run: RunData) -> Report:
    return Report(ReportMeta("dead", load={"mode": "closed"}, target={"kind": "http"}), run)


def test_summary_json_has_none_for_unmeasured_latency() -> None:
    s = summarize(_report(all_errors_run()))
    assert s["requests"] > 0 and s["ok"] == 0
    assert set(s["latency_ms"].values()) == {None} and set(s["service_ms"].values()) == {None}
    assert b'"p50":null' in orjson.dumps(s["latency_ms"])


def test_summary_error_rate_none_without_requests() -> None:
    empty = Recorder(0, S).finish(2 * S, partial=False)
    s = summarize(_report(empty))
    assert s["error_rate"] is None and s["latency_ms"]["p99"] is None and s["schedule_lag_p99_ms"] is None


def test_terminal_markdown_html_show_a_dash_never_zero() -> None:
    report = _report(all_errors_run())
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=140, color_system=None))
    views = {"terminal": buf.getvalue(), "markdown": report_markdown(report), "html": render_html(report)}
    for name, text in views.items():
        lines = re.split(r"</tr>|</div></div>|\n", text)
        rows = [ln for ln in lines if ("from intended time" in ln or "service (sent" in ln or "p99 latency" in ln)
                and "<svg" not in ln]
        assert rows, name
        for row in rows:  # the latency rows (schedule lag of the sends was measured: 0 there is real)
            assert "0.000" not in row and "0.00 ms" not in row, (name, row)
            assert "—" in row, (name, row)
    assert re.search(r"from intended time\s*│?\s*—", views["terminal"])


def test_compare_refuses_to_judge_a_metric_without_samples() -> None:
    base = _report(synth_run(1, seconds=5))
    dead = _report(all_errors_run())
    cmp = compare_reports(base, dead)
    by = {m.key: m for m in cmp.metrics}
    for key in ("p50", "p99", "service_p99", "max"):
        assert by[key].new is None and by[key].change is None, key
    # a gated latency the new run has no sample of is lost, not passed (with error_rate off, a build answering
    # every request with 500 went through the gate); an ungated one is not judged
    assert by["p50"].regression and by["p99"].regression
    assert not by["service_p99"].regression and not by["max"].regression
    assert by["error_rate"].regression  # what was measured is still judged: 0 % -> 100 % errors
    assert cmp.failed is not None and cmp.verdict().startswith("regression: the new run failed")
    assert any("no samples in the new run" in n and "p50" in n for n in cmp.notes)
    assert any("not judged" in n and "service_p99 (new)" in n for n in cmp.notes)
    buf = io.StringIO()
    render_comparison(cmp, Console(file=buf, width=160, color_system=None), "base", "new")
    md = comparison_markdown(cmp, "base", "new")
    for text in (buf.getvalue(), md):
        assert "no samples" in text
        lat_rows = [ln for ln in text.splitlines() if re.match(r"\W*(p50|p99|latency p50|service p99)\b", ln.strip())]
        assert lat_rows and all("-100" not in ln and "—" in ln for ln in lat_rows), lat_rows
    # and the other way round: nothing to compare against
    back = compare_reports(dead, base)
    assert {m.key for m in back.metrics if m.missing} >= {"p50", "p99"}
    assert not any(m.regression for m in back.metrics if m.missing) and back.failed is None


def test_a_new_run_that_failed_is_a_regression_whatever_the_thresholds() -> None:
    base = _report(synth_run(1, seconds=5))
    dead = _report(all_errors_run())
    off = {k: None for k in ("p50", "p99", "rps", "error_rate")}
    cmp = compare_reports(base, dead, off)
    assert cmp.regressed and not cmp.regressions and "the new run failed" in cmp.verdict()
    assert not compare_reports(base, base, off).regressed

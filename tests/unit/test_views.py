"""Markdown and HTML views: content, escaping, self-containment, step-summary append."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
from test_compare import synth_run

from bench.report.compare import compare_reports
from bench.report.html import percentile_curve, render_html
from bench.report.markdown import append_step_summary, cell, comparison_markdown, report_markdown
from bench.report.model import ErrorSample, Report, ReportMeta
from bench.report.slo import check_slo, slo_from_mapping

EVIL = '<script>alert("x")</script> | `tick` & co'


def _report(error_rate: float = 0.05) -> Report:
    run = synth_run(1, seconds=4, error_rate=error_rate)
    run.error_samples.append(ErrorSample("http_error", 500, EVIL, 3))
    meta = ReportMeta(EVIL, scenario_text=f'name = "{EVIL}"', host="h<1>", load={"mode": "closed",
                      "concurrency": 8, "duration_s": 4.0}, target={"kind": "wallaroo", "url": "embedded"})
    meta.extra["slo"] = check_slo(slo_from_mapping({"p99_ms": 1.0, "error_rate": 0.5}, "s"), run).to_dict()
    meta.generator_bound = True
    meta.generator_bound_reasons = ["schedule lag p99 3 ms > 1 ms <b>"]
    return Report(meta, run)


def test_cell_escapes_html_and_pipes() -> None:
    assert cell("a|b\nc<d>") == "a\\|b c&lt;d&gt;"


def test_report_markdown() -> None:
    md = report_markdown(_report())
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "| from intended time |" in md and "| service (sent→done) |" in md
    assert "**SLO: FAILED**" in md and "❌ p99_ms" in md and "✅ error_rate" in md
    assert "**Generator-bound**" in md and "&lt;b&gt;" in md
    assert "http_error:500" in md


def test_comparison_markdown_names_regressions() -> None:
    cmp = compare_reports(synth_run(1), synth_run(2, median_ms=13.0))
    md = comparison_markdown(cmp, "base|1.arrow", "new.arrow")
    assert md.startswith("### bench compare: ❌ regression: p50 +")
    assert "base\\|1.arrow" in md
    assert re.search(r"\| latency p99 \(ms\) \|.*\| significant \| ❌ regression \|", md)
    ok = comparison_markdown(compare_reports(synth_run(1), synth_run(2)), "a", "b")
    assert ok.startswith("### bench compare: ✅ no regression")


def test_step_summary_appends(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    target.write_text("before\n")
    assert append_step_summary("one", {"GITHUB_STEP_SUMMARY": str(target)}) == target
    append_step_summary("two\n", {"GITHUB_STEP_SUMMARY": str(target)})
    assert target.read_text() == "before\none\ntwo\n"
    assert append_step_summary("x", {}) is None


def test_html_is_self_contained_escaped_and_has_plots() -> None:
    page = render_html(_report())
    assert "<script" not in page  # nothing executable, in particular not the scenario name
    assert page.count("&lt;script&gt;") >= 3
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://(?!www\.w3\.org/2000/svg)""", page)
    series = re.findall(r'<polyline class="series" data-name="([^"]*)" data-points="(\d+)"', page)
    names = {n for n, _ in series}
    assert {"from intended time", "service time", "p50", "p99", "max", "requests/s", "errors/s"} <= names
    assert all(int(k) >= 2 for _, k in series)
    assert ">99 %<" in page and ">50 %<" in page and ">99.9 %<" in page
    assert "generator-bound" in page and "SLO failed" in page and "h&lt;1&gt;" in page


def test_html_without_errors_or_data() -> None:
    run = synth_run(1, seconds=0, warmup_s=0)
    page = render_html(Report(ReportMeta("empty"), run))
    assert "no data" in page and "Errors per second (none)" in page


def test_percentile_curve_is_monotonic_and_ends_at_max() -> None:
    h = synth_run(1, seconds=3).histogram("latency", "measured", "ok")
    xs, ys, names = percentile_curve(h)
    assert xs[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(xs))
    assert all(b >= a for a, b in itertools.pairwise(ys))
    assert ys[-1] == h.max_us / 1000.0 and names[-1] == "p100"


def test_pipe_width_rules() -> None:
    from bench.report.console import PIPE_WIDTH, pipe_width

    assert pipe_width(True, {}) is None and pipe_width(True, {"COLUMNS": "100"}) is None  # a terminal: rich decides
    assert pipe_width(False, {}) == PIPE_WIDTH and pipe_width(False, {"COLUMNS": " "}) == PIPE_WIDTH
    assert pipe_width(False, {"COLUMNS": "200"}) == 200 and pipe_width(False, {"COLUMNS": "0"}) == PIPE_WIDTH


def test_target_specific_histograms_are_in_markdown_and_html() -> None:
    """UbiOps batch_e2e / queue / processing (and a target's server-reported time) were only in the terminal and
    --json: both views now carry them as a table, with the same percentiles as the summary."""
    from bench.hdr import Histogram
    from bench.report.model import HistKey
    from bench.report.summary import summarize

    report = _report()
    for name, us in (("batch_e2e", 90_000), ("queue", 30_000), ("processing", 55_000)):
        h = Histogram()
        h.record_us(np.array([us, us + 1000, us * 2], dtype=np.int64))
        report.run.histograms[HistKey(name, "measured", "all")] = h
    s = summarize(report)
    md, page = report_markdown(report), render_html(report)
    assert "**Target-specific timings (ms, all answers)**" in md
    for label, name in (("batch: created → result collected", "batch_e2e"), ("batch: queued (created → started)",
                        "queue"), ("batch: processing (started → done)", "processing")):
        p50, p99 = (f"{s['other_ms'][name][k]:.3f}" for k in ("p50", "p99"))
        assert re.search(rf"\| {re.escape(label)} \| {p50} \| [0-9.]+ \| {p99} \|", md), md
        assert re.search(rf"<td>{re.escape(label)}</td><td>{p50}</td><td>[0-9.]+</td><td>{p99}</td>", page)
    assert "Target-specific" not in report_markdown(_report()) and "other-timings" not in render_html(_report())

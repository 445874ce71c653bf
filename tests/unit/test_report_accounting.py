"""In-flight-at-end requests are errors (kind 'abandoned') in every view, the SLO gate and compare; a
recorder-side 'abandoned' kind is counted once; error kinds come with one scrubbed sample each."""

from __future__ import annotations

import io

from rich.console import Console
from test_compare import synth_run

from bench.recorder import Recorder
from bench.report.accounting import scrub_detail, top_errors, unrecorded_errors
from bench.report.compare import compare_reports
from bench.report.html import render_html
from bench.report.markdown import report_markdown
from bench.report.merge import merge_reports
from bench.report.model import ErrorCount, ErrorSample, Report, ReportMeta, RunData
from bench.report.slo import check_slo, slo_from_mapping
from bench.report.summary import render_summary, summarize
from bench.results import Kind

S = 1_000_000_000


def never_answered(abandoned: int = 8, **extra: object) -> Report:
    """A server that accepts and never answers: nothing recorded, 8 requests in flight at the end."""
    run = Recorder(0, S).finish(4 * S, partial=False)
    return Report(ReportMeta("stall", load={"mode": "closed", "concurrency": 8}, target={"kind": "http"},
                             extra={"abandoned": abandoned, **extra}), run)


def test_never_answering_server_is_all_errors_not_a_clean_run() -> None:
    report = never_answered()
    s = summarize(report)
    assert (s["requests"], s["errors"], s["ok"], s["error_rate"]) == (8, 8, 0, 1.0)
    assert s["errors_by_kind"] == {"abandoned": 8}
    assert s["top_errors"][0]["kind"] == "abandoned" and "in flight" in s["top_errors"][0]["sample"]
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=140, color_system=None))
    out = buf.getvalue()
    assert "100.00 %" in out and "abandoned" in out and "in flight" in out
    assert "abandoned" in report_markdown(report) and "abandoned" in render_html(report)


def test_slo_error_rate_counts_abandoned() -> None:
    slo = slo_from_mapping({"error_rate": 0.01}, "s")
    run = synth_run(2, seconds=4)
    report = Report(ReportMeta("x", extra={"abandoned": 400}), run)
    assert check_slo(slo, run).passed  # the recorder alone saw no error
    res = check_slo(slo, report)
    assert not res.passed and res.results[0].measured is not None and res.results[0].measured > 0.01
    assert not check_slo(slo, never_answered()).passed


def test_compare_counts_abandoned_as_errors() -> None:
    base = Report(ReportMeta("x"), synth_run(3, seconds=6))
    new = Report(ReportMeta("x", extra={"abandoned": 300}), synth_run(4, seconds=6))
    by = {m.key: m for m in compare_reports(base, new).metrics}
    assert by["error_rate"].new is not None and by["error_rate"].new > 0.02
    assert by["error_rate"].regression


def test_recorder_side_abandoned_is_counted_once() -> None:
    run = synth_run(5, seconds=3)
    tot = run.total("measured")
    tot.requests += 8
    tot.errors += 8
    run.errors.append(ErrorCount("abandoned", 0, "measured", 8))
    report = Report(ReportMeta("x", extra={"abandoned": 8}), run)
    assert unrecorded_errors(report) == {}
    s = summarize(report)
    assert s["errors_by_kind"] == {"abandoned": 8} and s["errors"] == 8
    assert s["requests"] == tot.requests


def test_ubiops_batch_abandoned_and_cancelled_are_errors_failed_not_twice() -> None:
    rec = Recorder(0, 0)
    for i in range(10):
        kind = Kind.REQUEST_FAILED if i < 5 else Kind.OK
        rec.record(i * 1000, i * 1000, i * 1000 + 500, kind, 200, 1, 1, 1, 0)
    rec.error_detail(Kind.REQUEST_FAILED, 200, b"model raised ValueError: token=abc123 bad input")
    run = rec.finish(S, partial=False)
    report = Report(ReportMeta("b", extra={"ubiops": {"failed": 5, "abandoned": 3, "cancelled": 2}}), run)
    s = summarize(report)
    assert s["errors_by_kind"] == {"abandoned": 3, "cancelled": 2, "request_failed:200": 5}
    assert (s["requests"], s["errors"]) == (15, 10)
    top = {e.kind: e.sample for e in top_errors(report)}
    assert "abc123" not in top["request_failed:200"] and "token=***" in top["request_failed:200"]


def test_merge_sums_every_parts_in_flight_errors() -> None:
    a, b = never_answered(4), never_answered(6)
    b.run.start_unix_ns += 1
    b.meta.host = "other"
    merged = merge_reports([a, b])
    assert summarize(merged)["errors_by_kind"] == {"abandoned": 10}


def test_scrub_detail_blanks_credentials_and_truncates() -> None:
    text = ("upstream said: Authorization: Bearer eyJhbGciOi.secret.sig url=https://alice:hunter2@h/x "
            "api_key=KEY123 " + "x" * 500)
    out = scrub_detail(text)
    for secret in ("eyJhbGciOi", "hunter2", "KEY123"):
        assert secret not in out
    assert len(out) <= 160 and out.endswith("…") and "\n" not in scrub_detail("a\nb")


def test_top_errors_one_sample_per_kind_commonest_first() -> None:
    run: RunData = synth_run(6, seconds=3, error_rate=0.1)
    run.error_samples.extend([ErrorSample("http_error", 500, "rare reason", 1),
                              ErrorSample("http_error", 500, "common reason", 9)])
    top = top_errors(Report(ReportMeta("x", extra={"abandoned": 1}), run))
    assert [e.kind for e in top] == ["http_error:500", "abandoned"]
    assert top[0].sample == "common reason"


def test_unreachable_verdict_survives_abandoned_connects() -> None:
    """Requests still connecting at the end (abandoned) beside connect failures: still unreachable."""
    from bench.session import unreachable_reason

    assert unreachable_reason({"ok": 0, "errors_by_kind": {"connect_timeout": 5, "abandoned": 3}})
    assert unreachable_reason({"ok": 0, "errors_by_kind": {"abandoned": 8}}) is None  # connected, never answered
    assert unreachable_reason({"ok": 0, "errors_by_kind": {"connect_refused": 2, "reset": 1}}) is None

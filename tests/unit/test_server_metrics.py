"""Server metrics beside client latency: bucket percentiles, per-second deltas, the report round trip and the
views naming the gap (network + queueing outside the handler)."""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from rich.console import Console
from test_report_helpers import make_report, make_run

from bench.report.html import render_html
from bench.report.markdown import report_markdown
from bench.report.reader import read_report
from bench.report.server_metrics import Scrape, add_server_metrics, bucket_quantile, server_latency, server_series
from bench.report.summary import render_summary, summarize
from bench.report.writer import write_report

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)
METRIC = "rest_server_request_duration_seconds"


def cumulative(values_s: list[float]) -> dict[float, float]:
    return {le: float(sum(1 for v in values_s if v <= le)) for le in BUCKETS_S}


def test_bucket_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.005: 10.0, 0.01: 50.0, 0.025: 90.0, math.inf: 100.0}
    assert bucket_quantile(0.5, buckets) == pytest.approx((0.01, 0.005, 0.01))
    assert bucket_quantile(0.3, buckets) == pytest.approx((0.0075, 0.005, 0.01))
    assert bucket_quantile(0.99, buckets) == (0.025, 0.025, math.inf)  # +Inf bucket: highest finite bound
    assert bucket_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


@given(st.lists(st.floats(0.0001, 0.2), min_size=1, max_size=200), st.floats(0.01, 0.99))
@example(values=[0.125] * 3 + [0.001953125] * 3, q=0.5)  # interpolated to 0.0025 + 5e-19 once
def test_bucket_quantile_brackets_the_true_quantile(values: list[float], q: float) -> None:
    """The true quantile lies in the bucket named, and the value is inside that bucket."""
    got = bucket_quantile(q, cumulative(values))
    assert got is not None
    value, lo, hi = got
    assert lo <= value <= hi
    true = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    assert lo <= true <= hi or (math.isinf(hi) and true > lo)


def _scrapes(n_before: int, n_during: int, server_ms: float) -> list[Scrape]:
    """Scrapes 0.5 s apart over a 3 s run (warm-up 0-1 s): the server handled each request in server_ms."""
    out, total = [], 0
    for i in range(8):
        t = i * 0.5
        total += n_before if t < 1.0 else n_during
        out.append(Scrape(t, counters={"requests_total": float(total)}, gauges={"in_progress": 3.0},
                          histograms={METRIC: cumulative([server_ms / 1000.0] * total)}))
    return out


def test_round_trip_and_views_show_server_beside_client(tmp_path: Path) -> None:
    report = make_report(make_run(7))
    add_server_metrics(report, _scrapes(100, 300, 2.0), latency_metric=METRIC,
                       url="http://user:pw@127.0.0.1:8082/metrics?token=x", scrape_errors=1)
    back = read_report(write_report(tmp_path / "s.arrow", report))
    srv = server_latency(back)
    assert srv is not None and srv.metric == METRIC
    assert srv.count == 4 * 300  # the scrapes bracketing the measured phase (1.0 .. 3.0 s): 4 intervals
    assert srv.p50_ms is not None and 1.0 <= srv.p50_ms <= 2.5 and srv.bounds_ms["p50"] == (1.0, 2.5)
    series = server_series(back)
    assert series["requests_total"][2] == pytest.approx(600.0)  # 300 per 0.5 s
    assert series["in_progress"][1] == 3.0
    info = back.meta.extra["server_metrics"]
    assert info["scrape_errors"] == 1 and "pw" not in info["url"] and "token" not in info["url"]

    s = summarize(back)
    assert s["server_ms"]["p50"] == pytest.approx(srv.p50_ms, abs=1e-3)
    gap = s["outside_handler_ms"]["p50"]  # the range the server's bucket (1–2.5 ms) allows
    assert gap["low_ms"] == pytest.approx(s["service_ms"]["p50"] - 2.5, abs=2e-3)
    assert gap["high_ms"] == pytest.approx(s["service_ms"]["p50"] - 1.0, abs=2e-3)
    assert gap["low_ms"] <= s["service_ms"]["p50"] - s["server_ms"]["p50"] <= gap["high_ms"]
    buf = io.StringIO()
    render_summary(back, Console(file=buf, width=200, color_system=None))
    for text in (buf.getvalue(), report_markdown(back), render_html(back)):
        assert "server handler (bucket res.)" in text
        assert "network + queueing outside the handler" in text
        assert "bucket 1–2.5 ms" in text


def test_no_server_metrics_no_server_rows() -> None:
    report = make_report(make_run(8))
    s = summarize(report)
    assert s["server_ms"] is None and s["outside_handler_ms"] is None
    assert "server handler" not in report_markdown(report)


def test_counter_reset_is_not_a_negative_rate() -> None:
    report = make_report(make_run(9))
    scrapes = [Scrape(1.0, counters={"c": 100.0}), Scrape(2.0, counters={"c": 5.0})]
    add_server_metrics(report, scrapes, latency_metric=None)
    assert server_series(report)["c"][2] == 5.0
    assert server_latency(report) is None


def _views(report: object) -> list[str]:
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=400, color_system=None))  # type: ignore[arg-type]
    return [buf.getvalue(), report_markdown(report), html.unescape(render_html(report))]  # type: ignore[arg-type]


def _steady(t: float, rate: float, start: float = 0.0, before: float = 0.0) -> float:
    """The server's cumulative count at t: ``before`` requests from earlier, then ``rate`` per second."""
    return before + rate * max(0.0, t - start)


def test_a_scrape_without_the_histogram_mid_run_is_skipped_not_zero() -> None:
    """A 200 without the histogram (another pod, a partial exporter) says nothing about it: the interval is taken
    across it. Counting it as zero made the next interval hold the server's whole lifetime (65,000 requests)."""
    report = make_report(make_run(10))  # warm-up 0-1 s, measured 1-3 s
    scrapes = []
    for i in range(8):
        t = i * 0.5 - 0.2
        n = _steady(t, 100.0, before=65_000.0)
        scrapes.append(Scrape(t, histograms={} if i == 4 else {METRIC: {le: n for le in BUCKETS_S}}))
    add_server_metrics(report, scrapes, latency_metric=METRIC)
    srv = server_latency(report)
    assert srv is not None and srv.count_bounds is not None
    assert srv.count == pytest.approx(200, abs=2)  # 100/s over the 2 s measured phase
    assert srv.count_bounds[0] <= 200 <= srv.count_bounds[1] <= 300


def test_scrapes_before_the_first_with_the_histogram_count_as_zero() -> None:
    report = make_report(make_run(11))
    scrapes = [Scrape(0.0), *(Scrape(t, histograms={METRIC: {le: _steady(t, 100.0) for le in BUCKETS_S}})
                              for t in (0.5, 1.0, 2.0, 3.1))]
    add_server_metrics(report, scrapes, latency_metric=METRIC)
    warm = [r for r in report.sections["server_latency"] if r["phase"] == "warmup"]
    assert warm and warm[0]["count"] == 100


def test_count_bounds_hold_when_the_server_answers_a_scrape_late() -> None:
    """The server's snapshot is taken when it gets round to the scrape (MLServer under load: up to 1 s after the
    GET). Placed at the answer's arrival, with the inner bound from the GET's send, the phase's real count stays
    between the bounds; placed at the send (before), the outer bound was 1,600 for 2,000 real requests."""
    report = make_report(make_run(12))  # measured 1-3 s; the server counts 1,000/s only inside it
    scrapes = []
    for sent in (-0.5, 0.5, 1.5, 2.5, 3.5):
        snap = sent + 0.9
        n = 1000.0 * (min(snap, 3.0) - 1.0) if snap > 1.0 else 0.0
        scrapes.append(Scrape(snap, sent_s=sent, histograms={METRIC: {le: n for le in BUCKETS_S}}))
    add_server_metrics(report, scrapes, latency_metric=METRIC)
    srv = server_latency(report)
    assert srv is not None and srv.count_bounds is not None
    assert srv.count_bounds[0] <= 2000 <= srv.count_bounds[1]


def test_scrapes_not_bracketing_the_phase_mark_it_partial_in_every_view() -> None:
    report = make_report(make_run(13))  # measured 1-3 s; the endpoint failed from 1.6 s on
    scrapes = [Scrape(t, histograms={METRIC: cumulative([0.002] * int(100 * t))}) for t in (-0.1, 0.6, 1.1, 1.6)]
    add_server_metrics(report, scrapes, latency_metric=METRIC, scrape_errors=5)
    report.meta.extra["server_metrics"]["first_error"] = "PromError: HTTP 503"
    srv = server_latency(report)
    assert srv is not None and srv.partial and srv.covers_s == pytest.approx(0.6) and srv.phase_s == 2.0
    s = summarize(report)
    assert s["server_ms"]["partial"] == {"covers_s": 0.6, "phase_s": 2.0}
    for text in _views(report):
        assert "PARTIAL: the scrapes cover 0.6 of the phase's 2.0 s" in text
        assert "5 scrapes of the server's metrics failed (first: PromError: HTTP 503)" in text


def test_a_bracketed_phase_is_not_partial() -> None:
    report = make_report(make_run(14))
    add_server_metrics(report, _scrapes(100, 300, 2.0), latency_metric=METRIC)
    srv = server_latency(report)
    assert srv is not None and not srv.partial and summarize(report)["server_ms"]["partial"] is None
    assert not any("PARTIAL" in text for text in _views(report))


def test_views_say_the_server_figure_includes_errors_without_a_status_label() -> None:
    report = make_report(make_run(15))  # the run has 503s
    add_server_metrics(report, _scrapes(100, 300, 2.0), latency_metric=METRIC)
    assert summarize(report)["server_ms"]["answers"] == "all"
    for text in _views(report):
        assert "they include the server's error answers" in text
    ok_only = [Scrape(s.t_s, histograms=s.histograms, ok_only=frozenset({METRIC})) for s in _scrapes(100, 300, 2.0)]
    add_server_metrics(report, ok_only, latency_metric=METRIC)
    assert summarize(report)["server_ms"]["answers"] == "2xx"
    assert not any("error answers" in text for text in _views(report))


@pytest.mark.parametrize(("unit", "p50_ms"), [("s", 2000.0), ("ms", 2.0), ("us", 0.002)])
def test_latency_unit_scales_the_buckets(unit: str, p50_ms: float) -> None:
    """A histogram in ms (Triton's optional ones) read as seconds put a 2 ms request at 2,000 ms."""
    report = make_report(make_run(16))
    scrapes = [Scrape(t, histograms={"lat": {1.0: 0.0, 2.0: 100.0 * (t + 1), math.inf: 100.0 * (t + 1)}})
               for t in (-0.1, 1.0, 2.0, 3.1)]
    add_server_metrics(report, scrapes, latency_metric="lat", latency_unit=unit)
    srv = server_latency(report)
    assert srv is not None and srv.bounds_ms["p50"] == pytest.approx((p50_ms / 2, p50_ms))
    assert report.meta.extra["server_metrics"]["latency_unit"] == unit


def test_a_latency_metric_no_scrape_holds_is_a_warning_naming_what_they_hold() -> None:
    report = make_report(make_run(17))
    held = Scrape(1.0, counters={'nv_inference_request_duration_us{model="m"}': 5.0},
                  histograms={METRIC: {0.1: 1.0}}, seen={METRIC: frozenset({"/v2/models/{m}/infer"})})
    add_server_metrics(report, [held, held], latency_metric="rest_server_request_duration")
    warning = report.meta.extra["server_metrics"]["warning"]
    assert "latency_metric 'rest_server_request_duration': no histogram of that name in 2 scrapes" in warning
    assert f"histograms seen: {METRIC}" in warning
    add_server_metrics(report, [held], latency_metric="nv_inference_request_duration_us")
    assert "it is a counter, not a histogram" in report.meta.extra["server_metrics"]["warning"]
    filtered = Scrape(1.0, seen={METRIC: frozenset({"/v2/health/ready"})})
    add_server_metrics(report, [filtered], latency_metric=METRIC, path_contains="/predict")
    warning = report.meta.extra["server_metrics"]["warning"]
    assert "path_contains '/predict' matches no series" in warning and "/v2/health/ready" in warning
    for text in _views(report):
        assert "path_contains" in text
    add_server_metrics(report, [held], latency_metric=METRIC)
    assert "warning" not in report.meta.extra["server_metrics"]


def test_counter_rates_span_a_scrape_that_lacks_the_counter() -> None:
    report = make_report(make_run(18))
    scrapes = [Scrape(1.0, counters={"c": 100.0}), Scrape(2.0), Scrape(3.0, counters={"c": 300.0})]
    add_server_metrics(report, scrapes, latency_metric=None)
    assert server_series(report)["c"] == {3: 100.0}

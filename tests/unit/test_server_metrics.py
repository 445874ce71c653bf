"""Server metrics beside client latency: bucket percentiles, per-second deltas, the report round trip and the
views naming the gap (network + queueing outside the handler)."""

from __future__ import annotations

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

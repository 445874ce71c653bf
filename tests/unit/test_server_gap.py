"""The KServe server figures beside the client's: the client − server gap is the range the server's bucket
allows (never a negative network time), and a phase's server count is its share of each scrape interval, with
the bounds the scrapes allow (the warm-up counted ~2x its requests when phases took whole intervals)."""

from __future__ import annotations

import io
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from test_report_helpers import make_report, make_run

from bench.report.model import MEASURED, WARMUP
from bench.report.server_metrics import Scrape, add_server_metrics, handler_gap, server_latency
from bench.report.summary import outside_handler_text, render_summary, summarize

METRIC = "rest_server_request_duration_seconds"
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)


def steady(rate: float, times: list[float], server_s: float) -> list[Scrape]:
    """Scrapes at ``times`` of a server answering ``rate`` requests/s, each in ``server_s``."""
    return [Scrape(t, histograms={METRIC: {le: rate * t if server_s <= le else 0.0 for le in BUCKETS_S}})
            for t in times]


@given(client=st.floats(0.0, 1e4), lo=st.floats(0.0, 1e4), width=st.floats(0.001, 1e4) | st.just(math.inf))
def test_the_gap_is_the_range_the_bucket_allows_and_never_negative(client: float, lo: float, width: float) -> None:
    hi = lo + width
    gap = handler_gap(client, (lo, hi))
    assert gap is not None
    if client < lo:  # the server says its requests took longer in the handler than the client's end to end
        assert gap == {"low_ms": None, "high_ms": None, "status": "not_comparable"}
        return
    assert gap["low_ms"] >= 0 and gap["high_ms"] >= gap["low_ms"]
    assert gap["status"] == ("resolved" if client - hi > 0 else "within_bucket")
    for server in (lo, (lo + min(hi, client)) / 2, min(hi, client)):  # any server value the bucket allows
        assert gap["low_ms"] - 1e-3 <= client - server <= gap["high_ms"] + 1e-3


def test_no_gap_without_a_client_figure_or_a_bucket() -> None:
    assert handler_gap(None, (1.0, 2.0)) is None and handler_gap(3.0, None) is None


def test_a_client_figure_inside_the_servers_bucket_is_not_a_negative_network_time() -> None:
    """The audit's case: the server's p50 interpolated inside its bucket lies above the client's p50."""
    report = make_report(make_run(7, base_ms=2.5))  # client service p50 ≈ 2.7 ms
    add_server_metrics(report, steady(700.0, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], 0.004),
                       latency_metric=METRIC)  # every request 4 ms: the 2.5–5 ms bucket, p50 interpolated 3.75
    s = summarize(report)
    client, server = s["service_ms"]["p50"], s["server_ms"]["p50"]
    assert 2.5 <= client < server  # the old "client − server" was negative
    assert s["outside_handler_ms"]["p50"] == {"low_ms": 0.0, "high_ms": pytest.approx(client - 2.5, abs=1e-3),
                                              "status": "within_bucket"}
    text = outside_handler_text(s)
    assert "p50 0–" in text and "(within bucket resolution)" in text and "bucket 2.5–5 ms" in text
    gap_part = text.split("client service − server:")[1]
    assert not re.search(r"[-−]\s?\d", gap_part), text
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=300, color_system=None))
    assert "within bucket resolution" in buf.getvalue()


def test_a_client_figure_below_the_servers_bucket_is_not_compared() -> None:
    report = make_report(make_run(7, base_ms=2.5))
    add_server_metrics(report, steady(700.0, [0.0, 1.0, 2.0, 3.0], 0.02), latency_metric=METRIC)  # 10–25 ms
    s = summarize(report)
    assert s["outside_handler_ms"]["p50"]["status"] == "not_comparable"
    assert "p50 — (client p50 below the server's bucket" in outside_handler_text(s)


def test_phases_split_a_shared_scrape_interval_instead_of_both_counting_it() -> None:
    """Warm-up 0–1 s, measured 1–3 s, scrapes off the phase edges: the warm-up took the whole 0–1.7 s interval
    (1,190 of a steady 700/s server's requests for 700 sent)."""
    report = make_report(make_run(7))
    assert (report.run.phase(WARMUP).start_s, report.run.phase(WARMUP).end_s) == (0.0, 1.0)
    assert (report.run.phase(MEASURED).start_s, report.run.phase(MEASURED).end_s) == (1.0, 3.0)
    add_server_metrics(report, steady(700.0, [0.0, 0.6, 1.7, 2.8, 3.4], 0.004), latency_metric=METRIC)
    warm, measured = server_latency(report, WARMUP), server_latency(report, MEASURED)
    assert warm is not None and measured is not None
    assert warm.count == 700 and measured.count == 1400  # the phases' shares of a steady rate, no double count
    assert warm.count_bounds == (420, 1190)  # whole intervals inside (0–0.6 s) … every interval touching it
    assert measured.count_bounds == (770, 1960)  # 1.7–2.8 s … 0.6–3.4 s
    for srv in (warm, measured):
        assert srv.count_bounds is not None and srv.count_bounds[0] <= srv.count <= srv.count_bounds[1]
    s = summarize(report)
    assert s["server_ms"]["count"] == 1400 and s["server_ms"]["count_bounds"] == [770, 1960]
    assert "≈1,400 requests (770–1,960 to the scrape interval)" in outside_handler_text(s)


def test_a_scrape_before_the_servers_first_request_counts_as_zero() -> None:
    """The scrape just before the load has no histogram yet (a labelled series appears at the first request): it
    is the zero the warm-up starts from, not a scrape to skip (the warm-up then counted a sliver of itself)."""
    report = make_report(make_run(7))
    scrapes = [Scrape(-0.05), *steady(700.0, [0.9, 1.9, 2.9, 3.1], 0.004)]
    add_server_metrics(report, scrapes, latency_metric=METRIC)
    warm = server_latency(report, WARMUP)
    assert warm is not None and warm.count_bounds is not None
    # -0.05–0.9 s: 630 requests, 0.9 s of 0.95 in the warm-up; 0.9–1.9 s: 700, 0.1 s of it in the warm-up
    assert warm.count == round(630 * 0.9 / 0.95 + 700 * 0.1) == 667 and warm.count_bounds == (0, 1330)


def test_no_row_when_no_scrape_has_the_histogram() -> None:
    report = make_report(make_run(7))
    add_server_metrics(report, [Scrape(0.0), Scrape(1.0), Scrape(2.0)], latency_metric=METRIC)
    assert server_latency(report) is None and summarize(report)["server_ms"] is None

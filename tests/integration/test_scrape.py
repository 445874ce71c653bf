"""The server-metrics scraper against a real loopback HTTP server: an empty exposition (metric families with no
samples yet, as before a server's first request) is a valid scrape, not an error; a view made of nothing but
empty scrapes says so."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bench.scrape import ScrapeConfig, Scraper
from tests.integration.locust_cluster import serving

EMPTY = b"# HELP model_infer_request_duration Time spent.\n# TYPE model_infer_request_duration histogram\n"
FULL = EMPTY + (b'model_infer_request_duration_bucket{le="0.01"} 3\nmodel_infer_request_duration_bucket{le="+Inf"} 4\n'
                b"model_infer_request_duration_count 4\nmodel_infer_request_duration_sum 0.05\n")


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, list[bytes]]]:
    answers: list[bytes] = []  # what the next GETs answer, in order (the last repeats)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.pop(0) if len(answers) > 1 else answers[0]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", answers


def test_an_empty_exposition_is_a_scrape_not_an_error(metrics_server: tuple[str, list[bytes]]) -> None:
    url, answers = metrics_server
    answers += [EMPTY, FULL]
    scraper = Scraper(ScrapeConfig(url=url), url)
    with httpx.Client(timeout=5) as client:
        assert scraper.scrape_once(client) and scraper.scrape_once(client)
    assert scraper.errors == 0 and scraper.first_error == "" and len(scraper.scrapes) == 2
    assert scraper.with_samples == 1


def test_only_empty_scrapes_are_flagged(metrics_server: tuple[str, list[bytes]]) -> None:
    from bench.report.model import Report, ReportMeta
    from bench.rundata import MEASURED, WARMUP, PerSecond, Phase, RunData, Totals

    url, answers = metrics_server
    answers.append(EMPTY)
    scraper = Scraper(ScrapeConfig(url=url), url)
    with httpx.Client(timeout=5) as client:
        assert scraper.scrape_once(client) and scraper.scrape_once(client)
    run = RunData(start_unix_ns=0, phases=[Phase(WARMUP, 0.0, 0.0), Phase(MEASURED, 0.0, 1.0)], partial=False,
                  histograms={}, series=PerSecond(), totals={WARMUP: Totals(), MEASURED: Totals()})
    report = Report(meta=ReportMeta(scenario_name="scrape"), run=run)
    scraper.add_to(report)
    assert report.meta.extra["server_metrics"]["first_error"] == "no samples in any scrape"
    assert report.meta.extra["server_metrics"]["scrape_errors"] == 0

"""`[server_metrics]`: the server's Prometheus ``/metrics`` scraped during a run, beside the client's figures.

A control-plane thread (its own blocking httpx client, never the engines' event loop) scrapes every
``interval``: once just before the load, then on its period, then once after the load. Each good scrape is
folded by bench.prom into counters, gauges and histograms; a failed one (refused, timeout, non-2xx, text
that is not the Prometheus format, no samples) is counted with its first reason kept — never fatal. After the
run, ``add_to(report)`` stores them with bench.report.server_metrics (times relative to the run's start).
A ``--processes`` run scrapes in the parent only: the server's totals are not per worker.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.config.reader import safe_url
from bench.prom import PromError, fold, parse
from bench.tables import TableReader
from bench.units import parse_duration

__all__ = ["DEFAULT_LATENCY_METRIC", "ScrapeConfig", "Scraper", "config_from_mapping", "scraping"]

DEFAULT_LATENCY_METRIC = "rest_server_request_duration_seconds"  # MLServer's (and the emulator's) REST histogram
_CLOSING_TRIES = 3
_KEYS = ("url", "interval", "timeout", "latency_metric", "path_contains")


@dataclass(frozen=True, slots=True)
class ScrapeConfig:
    url: str  # …/metrics, or "embedded" (the embedded emulator's)
    interval_s: float = 1.0
    timeout_s: float = 2.0
    latency_metric: str = DEFAULT_LATENCY_METRIC
    path_contains: str = "/infer"  # request-duration series of routes whose `path` label holds this


def config_from_mapping(d: Mapping[str, Any], file: str, *, embedded: bool) -> ScrapeConfig:
    """Validate ``[server_metrics]``; problems are InputErrors naming ``server_metrics.<key>``."""
    r = TableReader(d, file, "server_metrics").only(_KEYS)
    url = r.required_string("url", "the server's Prometheus endpoint, e.g. http://127.0.0.1:8082/metrics")
    if url == "embedded":
        if not embedded:
            raise r.err("url", "'embedded' needs target.url = 'embedded'")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise r.err("url", f"expected an http:// or https:// URL, got {safe_url(url)!r}")

    def duration(key: str, default: float) -> float:
        try:
            seconds = parse_duration(d.get(key, default))
        except ValueError as exc:
            raise r.err(key, str(exc)) from None
        if seconds < 0.05:
            raise r.err(key, "must be at least 50ms")
        return seconds

    path = d.get("path_contains", "/infer")
    if not isinstance(path, str):
        raise r.err("path_contains", "expected a string ('' keeps every route)")
    return ScrapeConfig(url=url, interval_s=duration("interval", 1.0), timeout_s=duration("timeout", 2.0),
                        latency_metric=r.string("latency_metric") or DEFAULT_LATENCY_METRIC, path_contains=path)


class Scraper:
    """Scrapes ``url`` on a thread until ``stop``; ``add_to(report)`` stores what it got."""

    def __init__(self, cfg: ScrapeConfig, url: str, verify: ssl.SSLContext | bool = True) -> None:
        self.cfg, self.url = cfg, url
        self._verify = verify  # the run's TLS trust for the target's server (bench.tlstrust)
        self.scrapes: list[tuple[int, Any]] = []  # (wall ns, Folded)
        self.errors = 0
        self.first_error = ""
        self.with_samples = 0  # scrapes that held at least one sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(_CLOSING_TRIES * self.cfg.timeout_s + 5.0)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.cfg.timeout_s, follow_redirects=True, verify=self._verify) as client:
            while True:
                t0 = time.monotonic()
                self.scrape_once(client)
                if self._stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - t0))):
                    # the load has stopped: the closing scrape brackets the measured phase, so a failed one
                    # (counted) is tried again rather than leaving the server's view short of the phase's end
                    for _ in range(_CLOSING_TRIES):
                        if self.scrape_once(client):
                            break
                    return

    def scrape_once(self, client: Any) -> bool:
        """One scrape; False (and counted) when it failed."""
        import httpx

        wall = time.time_ns()
        try:
            r = client.get(self.url)
            if r.status_code != 200:
                raise PromError(f"HTTP {r.status_code}")
            types, samples = parse(r.text)
        except (httpx.HTTPError, PromError, UnicodeDecodeError) as exc:
            self.errors += 1
            if not self.first_error:
                self.first_error = f"{type(exc).__name__}: {exc}"[:200]
            return False
        # no samples is a valid answer (labelled metrics before the server's first request, e.g. a scrape just
        # before the load): kept; a view made only of empty scrapes is flagged in add_to
        self.scrapes.append((wall, fold(types, samples, path_contains=self.cfg.path_contains)))
        if samples:
            self.with_samples += 1
        return True

    def add_to(self, report: Any) -> str | None:
        """Store the scrapes in ``report`` (sections server_metric / server_latency, extra.server_metrics); returns
        a warning to print when no scrape succeeded (also kept as ``extra.server_metrics.warning``): a
        ``[server_metrics]`` URL that refuses connections used to leave the report without a server view and the
        terminal silent."""
        from bench.report.server_metrics import Scrape, add_server_metrics

        start = report.run.start_unix_ns
        scrapes = [Scrape(t_s=(wall - start) / 1e9, counters=f.counters, gauges=f.gauges, histograms=f.histograms)
                   for wall, f in self.scrapes]
        add_server_metrics(report, scrapes, latency_metric=self.cfg.latency_metric, url=self.url,
                           scrape_errors=self.errors)
        info = report.meta.extra["server_metrics"]
        if self.first_error:
            info["first_error"] = self.first_error
        elif self.scrapes and not self.with_samples:
            info["first_error"] = "no samples in any scrape"
        if self.scrapes or not self.errors:
            return None
        info["warning"] = (f"[server_metrics] no scrape of {info['url']} succeeded ({self.errors} failed, first: "
                           f"{self.first_error}): the report has no server-side view")
        return str(info["warning"])


@contextmanager
def scraping(cfg: ScrapeConfig | None, embedded_base: str | None,
             verify: ssl.SSLContext | bool = True) -> Iterator[Scraper | None]:
    """A running Scraper for the block (None when the scenario has no [server_metrics]); always stopped."""
    if cfg is None:
        yield None
        return
    url = f"{embedded_base}/metrics" if cfg.url == "embedded" and embedded_base else cfg.url
    scraper = Scraper(cfg, url, verify)
    scraper.start()
    try:
        yield scraper
    finally:
        scraper.stop()

"""`[server_metrics]`: the server's Prometheus ``/metrics`` scraped during a run, beside the client's figures.

A control-plane thread (its own blocking httpx client, never the engines' event loop) scrapes every
``interval``: once before the load (``start`` waits for that first attempt), then on its period, then once
after the load. Each good scrape is folded by bench.prom into counters, gauges and histograms and kept with
when its GET was sent and when its answer had arrived: the server took its snapshot somewhere between the two,
and a server busy with the load can take most of a second to answer. A failed one (refused, non-2xx, text that
is not the Prometheus format, or not complete within ``timeout`` — a total deadline, not httpx's per-read one,
so an endpoint sending a byte at a time cannot hold the run) is counted with its first reason kept — never
fatal. After the run, ``add_to(report)`` stores them with bench.report.server_metrics (times relative to the
run's start).
A ``--processes`` run scrapes in the parent only: the server's totals are not per worker.
"""

from __future__ import annotations

import math
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

__all__ = ["DEFAULT_LATENCY_METRIC", "LATENCY_UNITS", "ScrapeConfig", "Scraper", "config_from_mapping", "scraping",
           "unit_of"]

DEFAULT_LATENCY_METRIC = "rest_server_request_duration_seconds"  # MLServer's (and the emulator's) REST histogram
_CLOSING_TRIES = 3
_KEYS = ("url", "interval", "timeout", "latency_metric", "latency_unit", "path_contains")
LATENCY_UNITS = ("s", "ms", "us")
# a histogram's unit by its name's ending (the Prometheus convention puts the unit last); anything else is seconds
_UNIT_SUFFIXES = (("_seconds", "s"), ("_milliseconds", "ms"), ("_ms", "ms"), ("_microseconds", "us"),
                  ("_us", "us"))


@dataclass(frozen=True, slots=True)
class ScrapeConfig:
    url: str  # …/metrics, or "embedded" (the embedded emulator's)
    interval_s: float = 1.0
    timeout_s: float = 2.0
    latency_metric: str = DEFAULT_LATENCY_METRIC
    path_contains: str = "/infer"  # request-duration series of routes whose `path` label holds this
    latency_unit: str = "s"  # the histogram's bucket bounds: s, ms or us


def unit_of(metric: str) -> str:
    """The unit a histogram's name says (``…_ms`` → ms, ``…_us``/``…_microseconds`` → us), else seconds."""
    for suffix, unit in _UNIT_SUFFIXES:
        if metric.endswith(suffix):
            return unit
    return "s"


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
    metric = r.string("latency_metric") or DEFAULT_LATENCY_METRIC
    unit = d.get("latency_unit", unit_of(metric))
    if unit not in LATENCY_UNITS:
        raise r.err("latency_unit", f"expected one of {', '.join(LATENCY_UNITS)} (the histogram's bucket unit), "
                                    f"got {unit!r}")
    return ScrapeConfig(url=url, interval_s=duration("interval", 1.0), timeout_s=duration("timeout", 2.0),
                        latency_metric=metric, path_contains=path, latency_unit=unit)


class Scraper:
    """Scrapes ``url`` on a thread until ``stop``; ``add_to(report)`` stores what it got."""

    def __init__(self, cfg: ScrapeConfig, url: str, verify: ssl.SSLContext | bool = True) -> None:
        self.cfg, self.url = cfg, url
        self._verify = verify  # the run's TLS trust for the target's server (bench.tlstrust)
        self.scrapes: list[tuple[int, int, Any]] = []  # (wall ns GET sent, wall ns answer read, Folded)
        self.errors = 0
        self.first_error = ""
        self.with_samples = 0  # scrapes that held at least one sample
        self.slow = 0  # scrapes that took more than half the interval (their snapshot instant is vague)
        self.slowest_s = 0.0
        self._lock = threading.Lock()  # the thread's results against stop() giving up on it
        self._closed = False  # stop() has given up: a late answer is dropped, the hung scrape counted
        self._stop = threading.Event()
        self._stop_at = math.inf  # when stop() was called (monotonic): the closing scrapes' deadline counts from it
        self._first = threading.Event()  # the scrape before the load has been tried
        self._thread = threading.Thread(target=self._loop, name="bench-scraper", daemon=True)

    def start(self) -> None:
        """Start scraping; returns once the first scrape was tried (or its deadline passed), so that it comes
        before the load and brackets the first phase's start."""
        self._thread.start()
        self._first.wait(self.cfg.timeout_s + 1.0)

    def stop(self) -> None:
        """Stop after the closing scrape; a scrape still unanswered ``timeout`` + 1 s later is given up on and
        counted as failed (a hung endpoint must not hold the run, nor leave it without a warning)."""
        self._stop_at = time.monotonic()
        self._stop.set()
        self._thread.join(self.cfg.timeout_s + 1.0)
        with self._lock:
            self._closed = True
            if self._thread.is_alive():
                self._error(f"no answer within {self.cfg.timeout_s:g}s after the load (given up on)")

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.cfg.timeout_s, follow_redirects=True, verify=self._verify) as client:
            while True:
                t0 = time.monotonic()
                self.scrape_once(client)
                self._first.set()
                if self._stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - t0))):
                    # the load has stopped: the closing scrape brackets the measured phase, so a failed one
                    # (counted) is tried again rather than leaving the server's view short of the phase's end, as
                    # long as stop() waits (its `timeout` + 1 s)
                    closing = self._stop_at + self.cfg.timeout_s
                    for _ in range(_CLOSING_TRIES):
                        left = closing - time.monotonic()
                        if left < 0.05 or self.scrape_once(client, left):
                            break
                    return

    def _error(self, reason: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = reason[:200]

    def scrape_once(self, client: Any, budget_s: float | None = None) -> bool:
        """One scrape, complete within ``budget_s`` (default ``timeout``) however the answer trickles in; False
        (and counted) when it failed."""
        import httpx

        budget = self.cfg.timeout_s if budget_s is None else min(budget_s, self.cfg.timeout_s)
        wall = time.time_ns()
        deadline = time.monotonic() + budget
        try:
            with client.stream("GET", self.url, timeout=budget) as r:
                if r.status_code != 200:
                    raise PromError(f"HTTP {r.status_code}")
                chunks = []
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise PromError(f"the answer took longer than the {budget:g}s timeout")
                text = b"".join(chunks).decode(r.encoding or "utf-8", errors="replace")
            done = time.time_ns()
            types, samples = parse(text)
        except (httpx.HTTPError, PromError, UnicodeDecodeError, LookupError) as exc:
            with self._lock:
                if not self._closed:
                    self._error(f"{type(exc).__name__}: {exc}")
            return False
        took = (done - wall) / 1e9
        with self._lock:
            if self._closed:
                return False
            # no samples is a valid answer (labelled metrics before the server's first request, e.g. a scrape
            # just before the load): kept; a view made only of empty scrapes is flagged in add_to
            self.scrapes.append((wall, done, fold(types, samples, path_contains=self.cfg.path_contains)))
            if samples:
                self.with_samples += 1
            if took > self.cfg.interval_s / 2:
                self.slow += 1
            self.slowest_s = max(self.slowest_s, took)
        return True

    def add_to(self, report: Any) -> str | None:
        """Store the scrapes in ``report`` (sections server_metric / server_latency, extra.server_metrics); returns
        a warning to print (also kept as ``extra.server_metrics.warning``) when no scrape succeeded (a URL that
        refuses connections used to leave the report without a server view and the terminal silent) or when no
        good scrape held the ``latency_metric`` histogram (a typo, a counter, a ``path_contains`` matching no
        route: the same silence)."""
        from bench.report.server_metrics import Scrape, add_server_metrics

        start = report.run.start_unix_ns
        with self._lock:
            got = list(self.scrapes)
        scrapes = [Scrape(t_s=(done - start) / 1e9, sent_s=(sent - start) / 1e9, counters=f.counters,
                          gauges=f.gauges, histograms=f.histograms, ok_only=f.ok_only, seen=f.seen)
                   for sent, done, f in got]
        add_server_metrics(report, scrapes, latency_metric=self.cfg.latency_metric, url=self.url,
                           scrape_errors=self.errors, latency_unit=self.cfg.latency_unit,
                           path_contains=self.cfg.path_contains)
        info = report.meta.extra["server_metrics"]
        if self.first_error:
            info["first_error"] = self.first_error
        elif got and not self.with_samples:
            info["first_error"] = "no samples in any scrape"
        if self.slow:
            info["slow_scrapes"] = self.slow
            info["slowest_scrape_s"] = round(self.slowest_s, 3)
        info["interval_s"] = self.cfg.interval_s
        if not got and self.errors:
            info["warning"] = (f"[server_metrics] no scrape of {info['url']} succeeded ({self.errors} failed, "
                               f"first: {self.first_error}): the report has no server-side view")
        warning = info.get("warning")
        return str(warning) if warning else None


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

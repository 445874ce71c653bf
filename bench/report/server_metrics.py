"""The server's side of a run: Prometheus metrics scraped during it, stored beside the client's figures.

The scraper (run side) hands ``add_server_metrics`` its scrapes; this module turns them into two report
sections (see docs/report-format.md):

* ``server_metric`` — one row per (metric, second): ``name``, ``second``, ``value`` (a counter's per-second
  rate over the scrape interval ending in that second, or a gauge's last value), ``text`` = ``counter``|``gauge``.
* ``server_latency`` — one row per phase: ``name`` (the server's request-duration histogram), ``phase``,
  ``count``, ``p50_ms``/``p90_ms``/``p99_ms``, and ``text``, a JSON object ``{"resolution": "bucket",
  "bounds_ms": {"p50": [lo, hi], ...}, "buckets_ms": [...], "count_resolution": "scrape", "count_bounds":
  [inner, outer]}``. The buckets are the phase's share of each interval between scrapes (``_attributed``);
  the percentiles are interpolated linearly inside the bucket as Prometheus' ``histogram_quantile`` does: they
  are only as exact as the bucket bounds, and ``count`` only to the scrape interval. The views say so.

The views show the server percentiles next to the client's service time (sent → done) and the gap between
them (network + queueing outside the handler) as the range the bucket allows (``handler_gap``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report.model import MEASURED, WARMUP, Report

__all__ = ["SERVER_LATENCY", "SERVER_METRIC", "Scrape", "ServerLatency", "add_server_metrics",
           "bucket_quantile", "handler_gap", "server_latency", "server_series"]

SERVER_METRIC = "server_metric"
SERVER_LATENCY = "server_latency"
_QUANTILES = ((50.0, "p50"), (90.0, "p90"), (99.0, "p99"))


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape of the server's metrics endpoint.

    ``t_s``: seconds from the run's start. ``counters``: cumulative counter values and ``gauges``: current
    values (labels folded into the name by the scraper, e.g. ``requests_total{code="200"}``).
    ``histograms``: name -> {bucket upper bound in SECONDS (``math.inf`` for +Inf): cumulative count}, as
    Prometheus exposes ``*_bucket{le=...}``.
    """

    t_s: float
    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Mapping[float, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerLatency:
    """Server-side request-duration percentiles of one phase, at bucket resolution."""

    metric: str
    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    bounds_ms: Mapping[str, tuple[float, float]]  # 'p50' -> (bucket low, bucket high); high may be inf
    # (inner, outer): the phase's count is between them, to the scrape interval; None in reports before them,
    # whose ``count`` was the outer one
    count_bounds: tuple[int, int] | None = None

    def ms(self) -> dict[str, float | None]:
        return {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms}


def handler_gap(client_ms: float | None, bucket_ms: tuple[float, float] | None) -> dict[str, Any] | None:
    """Client service time − server time at one percentile, as far as the server's bucket tells it.

    The server's percentile is only known to lie in its bucket [lo, hi] (the interpolated value inside it is a
    guess), so the gap lies in [client − hi, client − lo], and time outside the handler cannot be negative:
    ``resolved`` when even the bucket's top leaves a positive gap; ``within_bucket`` when the client's figure is
    inside the bucket (the gap is 0 … client − lo: never a negative network time); ``not_comparable`` when the
    client's figure is below the bucket (no request set takes longer in its handler than end to end: the two
    figures do not describe the same requests). None without a client figure or a bucket."""
    if client_ms is None or bucket_ms is None:
        return None
    lo, hi = bucket_ms
    high = client_ms - lo
    if high < 0:
        return {"low_ms": None, "high_ms": None, "status": "not_comparable"}
    low = client_ms - hi
    if low > 0:
        return {"low_ms": round(low, 3), "high_ms": round(high, 3), "status": "resolved"}
    return {"low_ms": 0.0, "high_ms": round(high, 3), "status": "within_bucket"}


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> tuple[float, float, float] | None:
    """(value, bucket low, bucket high) of quantile q (0..1) from cumulative buckets (upper bound -> count).

    Linear interpolation inside the bucket (Prometheus ``histogram_quantile``); a quantile in the +Inf bucket
    is the highest finite bound. None when the buckets hold no observation.
    """
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]] if math.isinf(bounds[-1]) else max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    lo, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank and count > below:
            if math.isinf(le):
                return lo, lo, le
            # min: the interpolation's rounding may land a hair above the bucket's bound (seen: 0.0025 + 5e-19)
            return min(le, lo + (le - lo) * (rank - below) / (count - below)), lo, le
        lo, below = (le if not math.isinf(le) else lo), count
    return lo, lo, math.inf


def _delta(end: Mapping[float, float], start: Mapping[float, float] | None) -> dict[float, float]:
    if start is None:
        return dict(end)
    out = {le: end[le] - start.get(le, 0.0) for le in end}
    return dict(end) if any(v < 0 for v in out.values()) else out  # a counter reset (server restart)


def _attributed(scrapes: Sequence[Scrape], name: str, start_s: float,
                end_s: float) -> tuple[dict[float, float], float, float] | None:
    """The histogram ``name`` of the phase [start_s, end_s]: (buckets, inner, outer).

    The server's counts are known only at the scrapes, so a phase's share of each interval between two scrapes is
    taken as its share of the interval's time (a steady rate inside an interval): two phases meeting inside an
    interval split it instead of both counting it whole (the warm-up had counted ~2x its requests). ``inner``
    counts the intervals wholly inside the phase, ``outer`` every interval touching it: the phase's true count is
    between them. A scrape without the histogram counts as zero (a server creates a labelled series at its first
    request: the scrape just before the load has none). None when no scrape has it or no interval overlaps."""
    if not any(name in s.histograms for s in scrapes):
        return None
    empty: Mapping[float, float] = {}
    buckets: dict[float, float] = {}
    inner = outer = 0.0
    touched = False
    for prev, cur in itertools.pairwise(scrapes):
        dt = cur.t_s - prev.t_s
        overlap = min(cur.t_s, end_s) - max(prev.t_s, start_s)
        if dt <= 0 or overlap <= 1e-9:
            continue
        touched = True
        delta = _delta(cur.histograms.get(name, empty), prev.histograms.get(name, empty))
        share = min(1.0, overlap / dt)
        for le, n in delta.items():
            buckets[le] = buckets.get(le, 0.0) + n * share
        count = max(delta.values(), default=0.0)
        outer += count
        if prev.t_s >= start_s - 1e-9 and cur.t_s <= end_s + 1e-9:
            inner += count
    return (buckets, inner, outer) if touched else None


def _latency_row(name: str, phase: str, scrapes: Sequence[Scrape], start_s: float,
                 end_s: float) -> dict[str, Any] | None:
    got = _attributed(scrapes, name, start_s, end_s)
    if got is None:
        return None
    buckets, inner, outer = got
    total = max(buckets.values(), default=0.0)
    row: dict[str, Any] = {"name": name, "phase": phase, "count": round(total)}
    bounds: dict[str, list[float | None]] = {}
    for p, key in _QUANTILES:
        q = bucket_quantile(p / 100.0, buckets)
        row[f"{key}_ms"] = None if q is None else q[0] * 1000.0
        if q is not None:
            bounds[key] = [q[1] * 1000.0, None if math.isinf(q[2]) else q[2] * 1000.0]
    finite = sorted(le * 1000.0 for le in buckets if not math.isinf(le))
    row["text"] = json.dumps({"resolution": "bucket", "bounds_ms": bounds, "buckets_ms": finite,
                              "count_resolution": "scrape", "count_bounds": [round(inner), round(outer)]})
    return row


def _series_rows(scrapes: Sequence[Scrape]) -> list[dict[str, Any]]:
    rates: dict[tuple[str, int], list[float]] = {}  # (name, second) -> [delta, dt]
    gauges: dict[tuple[str, int], float] = {}
    ordered = sorted(scrapes, key=lambda s: s.t_s)
    for prev, cur in itertools.pairwise(ordered):
        dt = cur.t_s - prev.t_s
        if dt <= 0:
            continue
        for name, value in cur.counters.items():
            if name not in prev.counters:
                continue
            d = value - prev.counters[name]
            acc = rates.setdefault((name, int(cur.t_s)), [0.0, 0.0])
            acc[0] += value if d < 0 else d  # a reset: the new value is what happened since
            acc[1] += dt
    for s in ordered:
        for name, value in s.gauges.items():
            gauges[(name, int(s.t_s))] = value
    rows = [{"name": n, "second": sec, "value": d / dt, "text": "counter"}
            for (n, sec), (d, dt) in sorted(rates.items())]
    rows += [{"name": n, "second": sec, "value": v, "text": "gauge"} for (n, sec), v in sorted(gauges.items())]
    return rows


_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)[^/@]*@")


def add_server_metrics(report: Report, scrapes: Sequence[Scrape], *, latency_metric: str | None, url: str = "",
                       scrape_errors: int = 0) -> None:
    """Store the server's metrics in ``report`` (sections ``server_metric``/``server_latency`` and
    ``extra.server_metrics``). ``latency_metric``: the request-duration histogram to show beside the client's
    latency (e.g. MLServer's ``rest_server_request_duration_seconds``), None when the server has none.
    Failed scrapes are counted in ``scrape_errors``; they never fail the run."""
    ordered = sorted(scrapes, key=lambda s: s.t_s)
    report.sections[SERVER_METRIC] = _series_rows(ordered)
    rows = []
    if latency_metric:
        for phase in (WARMUP, MEASURED):
            ph = report.run.phase(phase)
            if ph.duration_s > 0:
                row = _latency_row(latency_metric, phase, ordered, ph.start_s, ph.end_s)
                if row is not None:
                    rows.append(row)
    report.sections[SERVER_LATENCY] = rows
    report.meta.extra["server_metrics"] = {
        "url": _USERINFO.sub(r"\1", url.split("?")[0]), "scrapes": len(ordered), "scrape_errors": scrape_errors,
        "latency_metric": latency_metric, "resolution": "bucket"}


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def server_latency(report: Report, phase: str = MEASURED) -> ServerLatency | None:
    """The stored server request-duration percentiles of ``phase``, or None when the report has none."""
    for r in report.sections.get(SERVER_LATENCY, []):
        if r.get("phase") != phase or not isinstance(r.get("name"), str):
            continue
        try:
            info = json.loads(r.get("text") or "{}")
        except ValueError:
            info = {}
        raw = info.get("bounds_ms", {}) if isinstance(info, dict) else {}
        bounds: dict[str, tuple[float, float]] = {}
        for key, pair in raw.items() if isinstance(raw, dict) else ():
            if isinstance(pair, list) and len(pair) == 2 and _float(pair[0]) is not None:
                hi = _float(pair[1])
                bounds[str(key)] = (float(pair[0]), math.inf if hi is None else hi)
        count = r.get("count")
        cb = info.get("count_bounds") if isinstance(info, dict) else None
        count_bounds = (int(cb[0]), int(cb[1])) if isinstance(cb, list) and len(cb) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in cb) else None
        return ServerLatency(r["name"], count if isinstance(count, int) else 0, _float(r.get("p50_ms")),
                             _float(r.get("p90_ms")), _float(r.get("p99_ms")), bounds, count_bounds)
    return None


def server_series(report: Report) -> dict[str, dict[int, float]]:
    """name -> second -> value of the ``server_metric`` rows (per-second counter rates and gauges)."""
    out: dict[str, dict[int, float]] = {}
    for r in report.sections.get(SERVER_METRIC, []):
        name, sec, value = r.get("name"), r.get("second"), _float(r.get("value"))
        if isinstance(name, str) and isinstance(sec, int) and value is not None:
            out.setdefault(name, {})[sec] = value
    return out

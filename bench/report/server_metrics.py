"""The server's side of a run: Prometheus metrics scraped during it, stored beside the client's figures.

The scraper (run side) hands ``add_server_metrics`` its scrapes; this module turns them into two report
sections (see docs/report-format.md):

* ``server_metric`` — one row per (metric, second): ``name``, ``second``, ``value`` (a counter's per-second
  rate over the scrape interval ending in that second, or a gauge's last value), ``text`` = ``counter``|``gauge``.
* ``server_latency`` — one row per phase: ``name`` (the server's request-duration histogram), ``phase``,
  ``count``, ``p50_ms``/``p90_ms``/``p99_ms``, and ``text``, a JSON object ``{"resolution": "bucket",
  "bounds_ms": {"p50": [lo, hi], ...}, "buckets_ms": [...], "count_resolution": "scrape", "count_bounds":
  [inner, outer], "unit": "s", "answers": "2xx"|"all", "covers_s": x, "phase_s": y, "partial": bool}``. The
  buckets are the phase's share of each interval between scrapes (``_attributed``); the percentiles are
  interpolated linearly inside the bucket as Prometheus' ``histogram_quantile`` does: they are only as exact as
  the bucket bounds, and ``count`` only to the scrape interval. The views say so.

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

    ``t_s``: seconds from the run's start when the answer had arrived, ``sent_s`` when its GET was sent (None:
    the same instant): the server's snapshot lies between them. ``counters``: cumulative counter values and
    ``gauges``: current values (labels folded into the name by the scraper, e.g. ``requests_total{code="200"}``).
    ``histograms``: name -> {bucket upper bound in the histogram's unit (``math.inf`` for +Inf): cumulative
    count}, as Prometheus exposes ``*_bucket{le=...}``. ``ok_only``: the histograms holding only 2xx series
    (their series carry a status label). ``seen``: every histogram of the scrape, before the path filter, with
    its ``path`` labels (what a warning names when the one asked for is not there).
    """

    t_s: float
    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Mapping[float, float]] = field(default_factory=dict)
    sent_s: float | None = None
    ok_only: frozenset[str] = frozenset()
    seen: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def sent(self) -> float:
        return self.t_s if self.sent_s is None else min(self.sent_s, self.t_s)


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
    answers: str = "all"  # "2xx": the histogram's status label let only ok answers in; "all": errors included
    covers_s: float | None = None  # the part of the phase between the first and last usable scrape
    phase_s: float | None = None

    @property
    def partial(self) -> bool:
        """The scrapes do not bracket the phase: the figures describe only ``covers_s`` of its ``phase_s``."""
        return self.covers_s is not None and self.phase_s is not None and self.covers_s < self.phase_s - 1e-3

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


def _usable(scrapes: Sequence[Scrape], name: str) -> list[Scrape]:
    """The scrapes that say something about histogram ``name``: those before the first that has it (the server
    creates a labelled series at its first request: it was zero then) and, after that, only those that have it.
    A later scrape without it (another pod behind a balancer, an exporter answering partially) is skipped, the
    interval taken across it: counting it as zero made the next interval hold the server's whole lifetime."""
    first = next((i for i, s in enumerate(scrapes) if name in s.histograms), None)
    if first is None:
        return []
    return [*scrapes[:first], *(s for s in scrapes[first:] if name in s.histograms)]


@dataclass(frozen=True, slots=True)
class _Attributed:
    buckets: dict[float, float]
    inner: float
    outer: float
    covers_s: float  # the part of the phase between the first and the last usable scrape
    ok_only: bool


def _attributed(scrapes: Sequence[Scrape], name: str, start_s: float, end_s: float) -> _Attributed | None:
    """The histogram ``name`` of the phase [start_s, end_s].

    The server's counts are known only at the scrapes, so a phase's share of each interval between two scrapes is
    taken as its share of the interval's time (a steady rate inside an interval): two phases meeting inside an
    interval split it instead of both counting it whole (the warm-up had counted ~2x its requests). A scrape is
    placed at its answer's arrival; its snapshot may be as early as its GET's send (a server under load took 1 s
    to answer), so ``inner`` counts the intervals surely inside the phase (sent after its start, answered before
    its end) and ``outer`` every interval that may touch it: the phase's count is between them as long as the
    server's counters are current when it answers. None when no scrape has it or no interval overlaps."""
    usable = _usable(scrapes, name)
    empty: Mapping[float, float] = {}
    buckets: dict[float, float] = {}
    inner = outer = 0.0
    touched = False
    for prev, cur in itertools.pairwise(usable):
        dt = cur.t_s - prev.t_s
        delta = _delta(cur.histograms.get(name, empty), prev.histograms.get(name, empty))
        count = max(delta.values(), default=0.0)
        if min(cur.t_s, end_s) - max(prev.sent, start_s) > 1e-9:
            outer += count
            if prev.sent >= start_s - 1e-9 and cur.t_s <= end_s + 1e-9:
                inner += count
        overlap = min(cur.t_s, end_s) - max(prev.t_s, start_s)
        if dt <= 0 or overlap <= 1e-9:
            continue
        touched = True
        share = min(1.0, overlap / dt)
        for le, n in delta.items():
            buckets[le] = buckets.get(le, 0.0) + n * share
    if not touched:
        return None
    covers = max(0.0, min(end_s, usable[-1].t_s) - max(start_s, usable[0].t_s))
    with_it = [s for s in usable if name in s.histograms]
    return _Attributed(buckets, inner, outer, covers, all(name in s.ok_only for s in with_it))


_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 0.001}


def _latency_row(name: str, phase: str, scrapes: Sequence[Scrape], start_s: float,
                 end_s: float, unit: str = "s") -> dict[str, Any] | None:
    got = _attributed(scrapes, name, start_s, end_s)
    if got is None:
        return None
    to_ms = _MS_PER_UNIT[unit]
    buckets = got.buckets
    total = max(buckets.values(), default=0.0)
    row: dict[str, Any] = {"name": name, "phase": phase, "count": round(total)}
    bounds: dict[str, list[float | None]] = {}
    for p, key in _QUANTILES:
        q = bucket_quantile(p / 100.0, buckets)
        row[f"{key}_ms"] = None if q is None else q[0] * to_ms
        if q is not None:
            bounds[key] = [q[1] * to_ms, None if math.isinf(q[2]) else q[2] * to_ms]
    finite = sorted(le * to_ms for le in buckets if not math.isinf(le))
    phase_s = end_s - start_s
    row["text"] = json.dumps({"resolution": "bucket", "bounds_ms": bounds, "buckets_ms": finite,
                              "count_resolution": "scrape", "count_bounds": [round(got.inner), round(got.outer)],
                              "unit": unit, "answers": "2xx" if got.ok_only else "all",
                              "covers_s": round(got.covers_s, 3), "phase_s": round(phase_s, 3),
                              "partial": got.covers_s < phase_s - 1e-3})
    return row


def _series_rows(scrapes: Sequence[Scrape]) -> list[dict[str, Any]]:
    rates: dict[tuple[str, int], list[float]] = {}  # (name, second) -> [delta, dt]
    gauges: dict[tuple[str, int], float] = {}
    ordered = sorted(scrapes, key=lambda s: s.t_s)
    last: dict[str, tuple[float, float]] = {}  # counter -> (t_s, value) at the last scrape that had it
    for cur in ordered:
        for name, value in cur.counters.items():
            before = last.get(name)
            last[name] = (cur.t_s, value)
            if before is None or cur.t_s <= before[0]:
                continue  # across a scrape without it: the rate over the whole gap, not a lost second
            d = value - before[1]
            acc = rates.setdefault((name, int(cur.t_s)), [0.0, 0.0])
            acc[0] += value if d < 0 else d  # a reset: the new value is what happened since
            acc[1] += cur.t_s - before[0]
    for s in ordered:
        for name, value in s.gauges.items():
            gauges[(name, int(s.t_s))] = value
    rows = [{"name": n, "second": sec, "value": d / dt, "text": "counter"}
            for (n, sec), (d, dt) in sorted(rates.items())]
    rows += [{"name": n, "second": sec, "value": v, "text": "gauge"} for (n, sec), v in sorted(gauges.items())]
    return rows


def _missing_warning(scrapes: Sequence[Scrape], metric: str, path_contains: str) -> str | None:
    """One line when no scrape held histogram ``metric`` (as filtered by ``path_contains``), naming what the
    scrapes did hold; None when one did or there was no scrape."""
    if not scrapes or any(metric in s.histograms for s in scrapes):
        return None
    n = len(scrapes)
    paths = sorted({p for s in scrapes for p in s.seen.get(metric, ())})
    if any(metric in s.seen for s in scrapes):
        return (f"[server_metrics] path_contains {path_contains!r} matches no series of histogram {metric!r} in "
                f"{n} scrapes (paths seen: {_few(paths)}): the report has no server latency")
    seen = sorted({h for s in scrapes for h in s.seen})
    other = next((kind for s in scrapes for kind, names in (("counter", s.counters), ("gauge", s.gauges))
                  if any(k == metric or k.startswith((metric + "{", metric + "_total")) for k in names)), None)
    what = f"it is a {other}, not a histogram" if other else "no histogram of that name"
    return (f"[server_metrics] latency_metric {metric!r}: {what} in {n} scrapes (histograms seen: {_few(seen)}): "
            "the report has no server latency")


def _few(names: Sequence[str], most: int = 8) -> str:
    if not names:
        return "none"
    more = len(names) - most
    return ", ".join(names[:most]) + (f", … {more} more" if more > 0 else "")


_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)[^/@]*@")


def add_server_metrics(report: Report, scrapes: Sequence[Scrape], *, latency_metric: str | None, url: str = "",
                       scrape_errors: int = 0, latency_unit: str = "s", path_contains: str = "") -> None:
    """Store the server's metrics in ``report`` (sections ``server_metric``/``server_latency`` and
    ``extra.server_metrics``). ``latency_metric``: the request-duration histogram to show beside the client's
    latency (e.g. MLServer's ``rest_server_request_duration_seconds``), None when the server has none; its
    buckets are in ``latency_unit`` (s, ms or us). Failed scrapes are counted in ``scrape_errors``; they never
    fail the run. A histogram no scrape held leaves ``extra.server_metrics.warning`` naming what they did hold."""
    ordered = sorted(scrapes, key=lambda s: s.t_s)
    report.sections[SERVER_METRIC] = _series_rows(ordered)
    rows = []
    if latency_metric:
        for phase in (WARMUP, MEASURED):
            ph = report.run.phase(phase)
            if ph.duration_s > 0:
                row = _latency_row(latency_metric, phase, ordered, ph.start_s, ph.end_s, latency_unit)
                if row is not None:
                    rows.append(row)
    report.sections[SERVER_LATENCY] = rows
    info: dict[str, Any] = {
        "url": _USERINFO.sub(r"\1", url.split("?")[0]), "scrapes": len(ordered), "scrape_errors": scrape_errors,
        "latency_metric": latency_metric, "latency_unit": latency_unit, "resolution": "bucket"}
    warning = _missing_warning(ordered, latency_metric, path_contains) if latency_metric else None
    if warning:
        info["warning"] = warning
    report.meta.extra["server_metrics"] = info


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
        info = info if isinstance(info, dict) else {}
        return ServerLatency(r["name"], count if isinstance(count, int) else 0, _float(r.get("p50_ms")),
                             _float(r.get("p90_ms")), _float(r.get("p99_ms")), bounds, count_bounds,
                             answers="2xx" if info.get("answers") == "2xx" else "all",
                             covers_s=_float(info.get("covers_s")), phase_s=_float(info.get("phase_s")))
    return None


def server_series(report: Report) -> dict[str, dict[int, float]]:
    """name -> second -> value of the ``server_metric`` rows (per-second counter rates and gauges)."""
    out: dict[str, dict[int, float]] = {}
    for r in report.sections.get(SERVER_METRIC, []):
        name, sec, value = r.get("name"), r.get("second"), _float(r.get("value"))
        if isinstance(name, str) and isinstance(sec, int) and value is not None:
            out.setdefault(name, {})[sec] = value
    return out

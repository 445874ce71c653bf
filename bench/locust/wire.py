"""What a distributed run's worker streams to its master: deltas between successive recorder snapshots.

A delta carries only what changed since the previous one -- added HDR bucket counts (sparse), added totals,
counters and errors, added per-second counts and per-second histogram buckets -- as plain msgpack/JSON types,
so a message stays small however long the run; the span of each phase's answers (``RunData.done_span``, which
throughput needs) travels whole, being two numbers. The master folds deltas with ``LiveRun.apply``; folding every
delta of a run gives exactly the last snapshot (tested), so a worker that dies mid-run leaves its data up to
its last delta. A worker that finishes sends its whole report instead, which replaces the live data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.report.model import ErrorCount, ErrorSample, HistKey, Histogram, PerSecond, Phase, RunData, Totals

__all__ = ["LiveRun", "delta"]

_TOTAL_FIELDS = Totals.__slots__


def _hist_delta(cur: Histogram, prev: Histogram | None) -> dict[str, Any] | None:
    """Sparse added buckets (index, count), with the exact min/max so far; None when nothing was added."""
    added = cur.counts if prev is None else cur.counts - prev.counts
    if cur.total == (prev.total if prev is not None else 0):
        return None
    index = np.flatnonzero(added)
    return {"i": index.tolist(), "c": added[index].tolist(), "min": cur.min_us, "max": cur.max_us}


def _apply_hist(h: Histogram, d: dict[str, Any]) -> None:
    index = np.asarray(d["i"], dtype=np.int64)
    counts = np.asarray(d["c"], dtype=np.int64)
    h.counts[index] += counts
    h.min_us = int(d["min"]) if h.total == 0 else min(h.min_us, int(d["min"]))
    h.max_us = max(h.max_us, int(d["max"]))
    h.total += int(counts.sum())


def _key(k: HistKey) -> str:
    return f"{k.metric}|{k.phase}|{k.outcome}"


def _series_map(s: PerSecond) -> dict[int, tuple[list[int], str]]:
    return {int(s.second[i]): ([int(getattr(s, c)[i]) for c in PerSecond.COUNT_COLUMNS], s.hdr[i])
            for i in range(len(s))}


def delta(prev: RunData | None, cur: RunData) -> dict[str, Any]:
    """The change from snapshot ``prev`` (None: nothing sent yet) to the later snapshot ``cur`` of one run."""
    hists: dict[str, Any] = {}
    for k, h in cur.histograms.items():
        d = _hist_delta(h, prev.histograms.get(k) if prev is not None else None)
        if d is not None:
            hists[_key(k)] = d
    totals = {}
    for ph, t in cur.totals.items():
        p = prev.totals.get(ph, Totals()) if prev is not None else Totals()
        totals[ph] = [getattr(t, f) - getattr(p, f) for f in _TOTAL_FIELDS]
    counters = {n: v - (prev.counters.get(n, 0) if prev is not None else 0) for n, v in cur.counters.items()}
    before = {(e.kind, e.status, e.phase): e.count for e in prev.errors} if prev is not None else {}
    errors = [[e.kind, e.status, e.phase, e.count - before.get((e.kind, e.status, e.phase), 0)]
              for e in cur.errors if e.count != before.get((e.kind, e.status, e.phase), 0)]
    old = _series_map(prev.series) if prev is not None else {}
    series = []
    for sec, (cols, hdr) in _series_map(cur.series).items():
        ocols, ohdr = old.get(sec, ([0] * len(cols), ""))
        dcols = [a - b for a, b in zip(cols, ocols, strict=True)]
        dh = None
        if hdr != ohdr and hdr:
            dh = _hist_delta(Histogram.decode(hdr), Histogram.decode(ohdr) if ohdr else None)
        if any(dcols) or dh is not None:
            series.append([sec, dcols, dh])
    return {"start_unix_ns": cur.start_unix_ns, "phases": [[p.name, p.start_s, p.end_s] for p in cur.phases],
            "hists": hists, "totals": totals, "counters": counters, "errors": errors, "series": series,
            "gauges": {n: [[s, v] for s, v in g.items()] for n, g in cur.gauges.items()},
            "samples": [[s.kind, s.status, s.detail, s.count] for s in cur.error_samples],
            "span": {ph: [lo, hi] for ph, (lo, hi) in cur.done_span.items()}}


class LiveRun:
    """A worker's run as the master knows it so far: the fold of every delta received."""

    def __init__(self) -> None:
        self.start_unix_ns = 0
        self.phases: list[Phase] = []
        self.hists: dict[HistKey, Histogram] = {}
        self.totals: dict[str, Totals] = {}
        self.counters: dict[str, int] = {}
        self.errors: dict[tuple[str, int, str], int] = {}
        self.seconds: dict[int, list[int]] = {}
        self.sec_hists: dict[int, Histogram] = {}
        self.gauges: dict[str, dict[int, float]] = {}
        self.samples: list[ErrorSample] = []
        self.span: dict[str, tuple[float, float]] = {}  # stays empty from a worker older than the "span" key
        self.deltas = 0

    def apply(self, d: dict[str, Any]) -> None:
        self.deltas += 1
        self.start_unix_ns = int(d["start_unix_ns"])
        self.phases = [Phase(str(n), float(a), float(b)) for n, a, b in d["phases"]]
        for key, hd in d["hists"].items():
            metric, phase, outcome = key.split("|")
            _apply_hist(self.hists.setdefault(HistKey(metric, phase, outcome), Histogram()), hd)
        for ph, values in d["totals"].items():
            t = self.totals.setdefault(ph, Totals())
            t.add(Totals(**dict(zip(_TOTAL_FIELDS, (int(v) for v in values), strict=True))))
        for name, n in d["counters"].items():
            self.counters[name] = self.counters.get(name, 0) + int(n)
        for kind, status, phase, n in d["errors"]:
            key = (str(kind), int(status), str(phase))
            self.errors[key] = self.errors.get(key, 0) + int(n)
        for sec, cols, hd in d["series"]:
            row = self.seconds.setdefault(int(sec), [0] * len(PerSecond.COUNT_COLUMNS))
            for j, v in enumerate(cols):
                row[j] += int(v)
            if hd is not None:
                _apply_hist(self.sec_hists.setdefault(int(sec), Histogram()), hd)
        self.gauges = {n: {int(s): float(v) for s, v in g} for n, g in d["gauges"].items()}
        self.samples = [ErrorSample(str(k), int(st), str(det), int(c)) for k, st, det, c in d["samples"]]
        if "span" in d:  # absolute: the latest replaces
            self.span = {str(ph): (float(lo), float(hi)) for ph, (lo, hi) in d["span"].items()}

    def run_data(self, *, partial: bool) -> RunData:
        secs = sorted(self.seconds)
        cols = {c: np.array([self.seconds[s][j] for s in secs], dtype=np.int64)
                for j, c in enumerate(PerSecond.COUNT_COLUMNS)}
        hdr = [self.sec_hists[s].encode() if s in self.sec_hists and self.sec_hists[s].total else "" for s in secs]
        series = PerSecond(second=np.array(secs, dtype=np.int64), **cols, hdr=hdr)
        return RunData(start_unix_ns=self.start_unix_ns, phases=list(self.phases), partial=partial,
                       histograms={k: h.copy() for k, h in sorted(self.hists.items())}, series=series,
                       totals={k: Totals(**{f: getattr(v, f) for f in _TOTAL_FIELDS}) for k, v in self.totals.items()},
                       counters=dict(self.counters), gauges={k: dict(v) for k, v in self.gauges.items()},
                       errors=[ErrorCount(k, s, p, c) for (k, s, p), c in sorted(self.errors.items())],
                       error_samples=list(self.samples), done_span=dict(self.span))

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.totals.values())

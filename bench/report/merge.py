"""Exact merge of runs made at the same time (several processes or hosts).

Histograms add bucket by bucket (same HDR setting everywhere), so merged percentiles equal those of one
histogram of all values. Series are aligned by the wall-clock second of each run's start.

Only reports that belong together merge: the same scenario, load mode and target kind, each run once, measured
at the same time (each run's measured window shares at least half of the shorter with the others'; ``MIN_OVERLAP``).
``merge_problems`` says what is wrong; ``force`` merges anyway and records why. Reports made with other HDR
settings never reach this module: the reader refuses them, as their buckets cannot be added exactly.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from bench.errors import InputError
from bench.report.accounting import unrecorded_errors
from bench.report.model import (
    ErrorCount,
    ErrorSample,
    HistKey,
    Histogram,
    PerSecond,
    Phase,
    Report,
    ReportMeta,
    RunData,
    Totals,
)
from bench.report.writer import utc_iso
from bench.rundata import MEASURED

__all__ = ["MIN_OVERLAP", "merge_problems", "merge_reports", "merge_run_data", "run_identity"]

_MAX_SAMPLES = 20


def _merge_series(runs: Sequence[RunData], base_s: int) -> PerSecond:
    by_sec: dict[int, dict[str, int]] = {}
    hists: dict[int, Histogram] = {}
    for run in runs:
        shift = run.start_unix_ns // 1_000_000_000 - base_s
        s = run.series
        for i in range(len(s)):
            sec = int(s.second[i]) + shift
            row = by_sec.setdefault(sec, dict.fromkeys(PerSecond.COUNT_COLUMNS, 0))
            for c in PerSecond.COUNT_COLUMNS:
                row[c] += int(getattr(s, c)[i])
            if s.hdr[i]:
                hists.setdefault(sec, Histogram()).add(s.histogram(i))
    secs = sorted(by_sec)
    cols = {c: np.array([by_sec[x][c] for x in secs], dtype=np.int64) for c in PerSecond.COUNT_COLUMNS}
    return PerSecond(second=np.array(secs, dtype=np.int64), **cols,
                     hdr=[hists[x].encode() if x in hists and hists[x].total else "" for x in secs])


def merge_run_data(runs: Sequence[RunData]) -> RunData:
    """One RunData holding all of ``runs``: sums of counts, added histograms, series aligned by start second."""
    if not runs:
        raise ValueError("nothing to merge")
    start = min(r.start_unix_ns for r in runs)
    base_s = start // 1_000_000_000
    hists: dict[HistKey, Histogram] = {}
    totals: dict[str, Totals] = {}
    counters: dict[str, int] = {}
    gauges: dict[str, dict[int, float]] = {}
    errors: dict[tuple[str, int, str], int] = {}
    samples: dict[tuple[str, int, str], int] = {}
    phase_span: dict[str, tuple[float, float]] = {}
    done_span: dict[str, tuple[float, float]] = {}
    for run in runs:
        offset_s = (run.start_unix_ns - start) / 1e9
        shift = run.start_unix_ns // 1_000_000_000 - base_s
        for k, h in run.histograms.items():
            hists.setdefault(k, Histogram()).add(h)
        for ph, t in run.totals.items():
            totals.setdefault(ph, Totals()).add(t)
        for name, n in run.counters.items():
            counters[name] = counters.get(name, 0) + n
        for name, series in run.gauges.items():
            g = gauges.setdefault(name, {})
            for sec, v in series.items():
                g[sec + shift] = max(v, g.get(sec + shift, v))
        for e in run.errors:
            errors[(e.kind, e.status, e.phase)] = errors.get((e.kind, e.status, e.phase), 0) + e.count
        for sm in run.error_samples:
            key = (sm.kind, sm.status, sm.detail)
            if key in samples or len(samples) < _MAX_SAMPLES:
                samples[key] = samples.get(key, 0) + sm.count
        for p in run.phases:
            lo, hi = phase_span.get(p.name, (p.start_s + offset_s, p.end_s + offset_s))
            phase_span[p.name] = (min(lo, p.start_s + offset_s), max(hi, p.end_s + offset_s))
        for ph, (lo, hi) in run.done_span.items():
            first, last = done_span.get(ph, (lo + offset_s, hi + offset_s))
            done_span[ph] = (min(first, lo + offset_s), max(last, hi + offset_s))
    # Phases: each spans from its earliest start to its latest end across runs (runs made together overlap).
    phases = [Phase(n, lo, hi) for n, (lo, hi) in phase_span.items()]
    if not all("sent" in r.counters for r in runs):  # a part that did not count its sends (a worker lost
        counters.pop("sent", None)  # mid-run, an older report): the whole run's sends are unknown, not fewer
    return RunData(
        start_unix_ns=start, phases=phases, partial=any(r.partial for r in runs),
        histograms=dict(sorted(hists.items())), series=_merge_series(runs, base_s), totals=totals,
        counters=counters, gauges=gauges,
        errors=[ErrorCount(k, s, p, c) for (k, s, p), c in sorted(errors.items())],
        error_samples=[ErrorSample(k, s, d, c) for (k, s, d), c in samples.items()], raw_path=None,
        # every part's answers span from the earliest first to the latest last, unless a part with answers did not
        # say when they came (an old Locust worker's stream, a recovered part): then that phase has no span
        done_span={ph: v for ph, v in done_span.items() if all(ph in r.done_span or not r.answered(ph) for r in runs)})


def _sum_unrecorded(reports: Sequence[Report]) -> dict[str, int]:
    """Every part's in-flight-at-end errors (``extra`` of the first alone would lose the others')."""
    out: dict[str, int] = {}
    for r in reports:
        for kind, n in unrecorded_errors(r).items():
            out[kind] = out.get(kind, 0) + n
    return out


def run_identity(report: Report) -> str:
    """The run a report holds: ``extra.run_id`` (stamped by the writer), else a digest of what was measured
    (reports written before run ids existed): the same file, or a copy of it, gives the same identity."""
    rid = report.meta.extra.get("run_id") if isinstance(report.meta.extra, dict) else None
    if isinstance(rid, str) and rid:
        return rid
    digest = hashlib.sha256(f"{report.meta.host}|{report.run.start_unix_ns}|{report.meta.extra.get('worker')}"
                            .encode())
    for key, h in sorted(report.run.histograms.items()):
        digest.update(f"{key}:{h.total}:{h.min_us}:{h.max_us}".encode())
        digest.update(h.counts[h.counts != 0].tobytes())
    return "digest:" + digest.hexdigest()[:16]


def _name(r: Report) -> str:
    return r.path.name if r.path is not None else (r.meta.host or "report")


def _differ(label: str, reports: Sequence[Report], value: Callable[[Report], object]) -> str | None:
    values = [value(r) for r in reports]
    if len({repr(v) for v in values}) <= 1:
        return None
    shown = ", ".join(f"{v if v not in (None, '') else '(none)'} ({_name(r)})" for v, r in zip(values, reports,
                                                                                              strict=True))
    return f"different {label}: {shown}"


# A merge adds runs made at the same time. Each run's measured window must share with the union of the other runs'
# measured windows at least this fraction of the shorter of the two (its own length, the others' covered length):
# two back-to-back runs share 0 %; a part that stopped early, wholly inside the others' windows, shares 100 % (and
# the others share all of its length). Runs without a measured window are not judged.
MIN_OVERLAP = 0.5


def _window(r: Report) -> tuple[float, float] | None:
    """The measured phase in Unix seconds, or None when the run has none."""
    ph = next((p for p in r.run.phases if p.name == MEASURED), None)
    if ph is None or ph.end_s <= ph.start_s:
        return None
    t0 = r.run.start_unix_ns / 1e9
    return t0 + ph.start_s, t0 + ph.end_s


def _union(windows: Sequence[tuple[float, float]], within: tuple[float, float] = (-np.inf, np.inf)) -> float:
    """Seconds covered by the union of ``windows`` inside ``within``."""
    covered, reach = 0.0, within[0]
    for lo, hi in sorted(windows):
        lo, hi = max(lo, reach), min(hi, within[1])
        if hi > lo:
            covered += hi - lo
            reach = hi
    return float(covered)


def _not_simultaneous(reports: Sequence[Report]) -> str | None:
    windows = [(r, w) for r in reports if (w := _window(r)) is not None]
    if len(windows) < 2:
        return None
    apart = []
    for i, (r, w) in enumerate(windows):
        others = [o for j, (_, o) in enumerate(windows) if j != i]
        share = _union(others, w) / min(w[1] - w[0], _union(others))
        if share < MIN_OVERLAP:
            apart.append(f"{_name(r)} {share:.0%}")
    if not apart:
        return None
    shown = ", ".join(f"{_name(r)} {utc_iso(int(w[0] * 1e9))[11:23]}–{utc_iso(int(w[1] * 1e9))[11:23]}"
                      for r, w in windows)
    return (f"not simultaneous: measured windows (UTC) {shown}; shared with the other runs: {', '.join(apart)} "
            f"(needs {MIN_OVERLAP:.0%} of the shorter: merge adds runs made at the same time)")


def merge_problems(reports: Sequence[Report]) -> list[str]:
    """Why these reports do not belong in one merged report ([] when they do)."""
    out = [p for p in (
        _differ("scenarios", reports, lambda r: r.meta.scenario_name),
        _differ("load modes", reports, lambda r: r.meta.load.get("mode")),
        _differ("target kinds", reports, lambda r: r.meta.target.get("kind")),
        _not_simultaneous(reports),
    ) if p]
    seen: dict[str, Report] = {}
    for r in reports:
        rid = run_identity(r)
        if rid in seen:
            out.append(f"the same run twice: {_name(seen[rid])} and {_name(r)} (run id {rid})")
        seen.setdefault(rid, r)
    return out


def merge_reports(reports: Sequence[Report], *, force: bool = False) -> Report:
    """Merge whole reports: RunData merged exactly; metadata from the first, with hosts and verdicts combined.

    Raises InputError naming the problem when the reports do not belong together (``merge_problems``), unless
    ``force``: then the merged report keeps the reasons in ``extra.merge_forced`` and a mixed load mode is
    labelled as such (never as the first report's).
    """
    if not reports:
        raise InputError("nothing to merge")
    problems = merge_problems(reports)
    if problems and not force:
        raise InputError("cannot merge: " + "; ".join(problems) + " (--force merges anyway)")
    names = {r.meta.scenario_name for r in reports}
    modes = sorted({str(r.meta.load.get("mode")) for r in reports})
    first = reports[0].meta
    run = merge_run_data([r.run for r in reports])
    own = {k: v for k, v in first.extra.items() if k not in _PER_RUN_VERDICTS}
    end_s = max((p.end_s for p in run.phases), default=0.0)
    reasons = [f"{r.meta.host or r.path}: {why}" for r in reports for why in r.meta.generator_bound_reasons]
    meta = ReportMeta(
        scenario_name=first.scenario_name if len(names) == 1 else "+".join(sorted(names)),
        scenario_text=first.scenario_text, bench_version=first.bench_version,
        python_version=first.python_version, libraries=dict(first.libraries),
        host=",".join(dict.fromkeys(r.meta.host for r in reports)),
        start_utc=utc_iso(run.start_unix_ns), end_utc=utc_iso(run.start_unix_ns + int(end_s * 1e9)),
        load={**first.load, "mode": "+".join(modes)} if len(modes) > 1 else dict(first.load),
        target=dict(first.target),
        generator_bound=any(r.meta.generator_bound for r in reports), generator_bound_reasons=reasons,
        cpu_fraction=None,
        extra={**own, "merged_from": [str(r.path) if r.path else r.meta.host for r in reports],
               "unrecorded_errors": _sum_unrecorded(reports), "run_id": uuid.uuid4().hex,
               "merged_run_ids": [run_identity(r) for r in reports]})
    for key in _SUMMED_COUNTS:  # every part's, not the first part's alone
        counts = [r.meta.extra[key] for r in reports if r.meta.extra.get(key) is not None]
        if counts:
            meta.extra[key] = sum(int(n) for n in counts)
    if problems:
        meta.extra["merge_forced"] = problems
    merged = Report(meta=meta, run=run)
    _judge_again(merged, reports)
    return merged


# a part's verdicts on its own share: never the merged run's (they are judged again on the merged data below)
_PER_RUN_VERDICTS = ("slo", "failed", "accounting")
# a part's counts of its own share (requests in flight at its end, connects, sends that waited at the
# connections cap): the merged run's are their sum
_SUMMED_COUNTS = ("abandoned", "connections_opened", "waited_at_cap")


def _judge_again(merged: Report, reports: Sequence[Report]) -> None:
    """The merged run's own accounting and, when every part was judged against the same ``[slo]``, its SLO
    verdict on the merged data (a part's verdict on its share says nothing about the whole run)."""
    from bench.report.accounting import request_accounting
    from bench.report.slo import Objective, SloObjectives, SloResult, check_slo

    accounting = request_accounting(merged.run)
    if accounting is not None:
        merged.meta.extra["accounting"] = accounting
    limits: set[tuple[tuple[str, float], ...]] = set()
    for r in reports:
        stored = r.meta.extra.get("slo") if isinstance(r.meta.extra, dict) else None
        if not isinstance(stored, dict):
            return
        try:
            limits.add(tuple((o.key, o.allowed) for o in SloResult.from_dict(stored).results))
        except (KeyError, TypeError, ValueError):
            return
    if len(limits) == 1 and (only := limits.pop()):
        objectives = SloObjectives(tuple(Objective(k, a) for k, a in only))
        merged.meta.extra["slo"] = check_slo(objectives, merged).to_dict()

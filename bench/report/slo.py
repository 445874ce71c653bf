"""SLO gates: the scenario's ``[slo]`` table, checked against a finished report (and, optionally, mid-run).

Latency objectives are over the measured phase's ok requests (errors have their own objective, error_rate),
``p*_ms``/``max_ms`` from the intended send time (no coordinated omission), ``service_p99_ms`` from the
actual send. ``min_rps`` counts ok answers per second (as req/s counts answers: at the rate they came back): an endpoint
that fails fast, or falls behind an open loop's rate, must not pass a throughput objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.config.slo import KEYS, PCT, Objective, SloObjectives, slo_from_mapping
from bench.report.accounting import accounted_totals
from bench.report.model import MEASURED, Report, RunData, measured_rows_per_s

__all__ = ["KEYS", "Objective", "ObjectiveResult", "ProgressLike", "SloObjectives", "SloResult", "check_slo",
           "hopeless", "slo_from_mapping"]

@dataclass(frozen=True, slots=True)
class ObjectiveResult:
    key: str
    measured: float | None  # None: nothing to measure (no ok requests for a latency objective)
    allowed: float
    passed: bool

    def describe(self) -> str:
        label, unit, direction = KEYS[self.key]
        op_ok, op_bad = ("≥", "<") if direction == "min" else ("≤", ">")
        if self.measured is None:
            return f"{self.key}: {label} not measured (no sample); allowed {op_ok} {_fmt(self.allowed, self.key)}"
        op = op_ok if self.passed else op_bad
        return (f"{self.key}: {label} {_fmt(self.measured, self.key)} {op} allowed "
                f"{_fmt(self.allowed, self.key)}{' ' + unit if unit else ''}")


@dataclass(slots=True)
class SloResult:
    results: list[ObjectiveResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[ObjectiveResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the report's metadata under extra['slo'])."""
        return {"passed": self.passed,
                "objectives": [{"key": r.key, "measured": r.measured, "allowed": r.allowed, "passed": r.passed,
                                "text": r.describe()} for r in self.results]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SloResult:
        return cls([ObjectiveResult(str(o["key"]), None if o.get("measured") is None else float(o["measured"]),
                                    float(o["allowed"]), bool(o["passed"]))
                    for o in data.get("objectives", []) if o.get("key") in KEYS])

    def render(self) -> str:
        """Plain text for the terminal: one line per objective, broken ones first and named."""
        if not self.results:
            return "SLO: no objectives"
        head = "SLO: passed" if self.passed else f"SLO: FAILED ({len(self.failures)} of {len(self.results)} broken)"
        lines = [head]
        for r in sorted(self.results, key=lambda r: r.passed):
            lines.append(f"  {'ok  ' if r.passed else 'FAIL'} {r.describe()}")
        return "\n".join(lines)


def _fmt(value: float, key: str) -> str:
    if key == "error_rate":
        return f"{value * 100:.3g} %"
    if key == "max_dropped":
        return f"{int(value):,}"
    return f"{value:,.3f}" if value < 1000 else f"{value:,.1f}"


def _measure(key: str, report: Report | RunData) -> float | None:
    run = report.run if isinstance(report, Report) else report
    tot = accounted_totals(report)  # requests in flight at the end are errors (kind 'abandoned')
    if key in PCT or key == "max_ms":
        h = run.histogram("latency", MEASURED, "ok")
        if not h.total:
            return None
        return h.max_us / 1000.0 if key == "max_ms" else h.percentiles_ms((PCT[key],))[PCT[key]]
    if key == "service_p99_ms":
        h = run.histogram("service", MEASURED, "ok")
        return h.percentiles_ms((99,))[99] if h.total else None
    if key == "error_rate":
        return tot.errors / tot.requests if tot.requests else None
    d = run.duration_s(MEASURED)
    if key == "min_rps":  # a measured window of 0 s: no rate (not measured), not a rate of 0
        return run.ok_rps(MEASURED) if d > 0 else None
    if key == "min_rows_per_s":  # (rows not counted, e.g. an opaque ad hoc body: not measured)
        return measured_rows_per_s(report) if d > 0 else None
    if key == "max_dropped":
        return float(tot.dropped)
    raise KeyError(key)


def check_slo(objectives: SloObjectives, report: Report | RunData) -> SloResult:
    """Measure every objective on the measured phase; a lower bound passes at >=, an upper bound at <=."""
    out = SloResult()
    for o in objectives.objectives:
        m = _measure(o.key, report)
        if m is None:
            ok = False
        elif o.is_lower_bound:
            ok = m >= o.limit
        else:
            ok = m <= o.limit
        out.results.append(ObjectiveResult(o.key, m, o.limit, ok))
    return out


class ProgressLike(Protocol):
    """What ``hopeless`` reads: bench.recorder.Progress fits (counts since the run started)."""

    @property
    def elapsed_s(self) -> float: ...
    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def dropped(self) -> int: ...


def hopeless(objectives: SloObjectives, now: ProgressLike, *, measured_from: ProgressLike | None,
             end_s: float, max_rps: float) -> str | None:
    """A reason to stop early when an objective can no longer be met, else None.

    ``measured_from``: the snapshot taken when the warm-up ended (None while still warming up: nothing is
    judged then). ``end_s``: planned end of the run (warm-up + duration, seconds from the start).
    ``max_rps``: an upper bound on the request rate for the rest of the run (the open-loop target rate plus
    dropped, or for a closed loop a generous multiple of the best rate seen, e.g. 2×). Only objectives that
    counts can settle are judged: ``max_dropped`` (the count never shrinks) and ``error_rate`` (the errors
    so far cannot be diluted below the limit even if every remaining request succeeds). Latency and
    throughput objectives are left to the end-of-run check.
    """
    if measured_from is None:
        return None
    requests = now.requests - measured_from.requests
    errors = now.errors - measured_from.errors
    dropped = now.dropped - measured_from.dropped
    remaining = max(0.0, end_s - now.elapsed_s) * max(0.0, max_rps)
    for o in objectives.objectives:
        if o.key == "max_dropped" and dropped > o.limit:
            return f"max_dropped: {dropped:,} sends dropped already > allowed {int(o.limit):,}"
        if o.key == "error_rate" and errors > 0:
            best = errors / (requests + remaining)
            if best > o.limit:
                return (f"error_rate: {errors:,} errors in {requests:,} requests; even if all of the at most "
                        f"{remaining:,.0f} remaining requests succeed, the rate stays ≥ {best * 100:.3g} % > "
                        f"allowed {o.limit * 100:.3g} %")
    return None

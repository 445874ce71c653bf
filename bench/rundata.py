"""What one run measured (or several merged runs): the recorder produces it, the report file stores it, the
views read it. Times are relative to the run's start; every histogram is a bench.hdr.Histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.hdr import Histogram, IntArray
from bench.results import UNANSWERED_NAMES

__all__ = ["MEASURED", "OUTCOMES", "PHASES", "WARMUP", "ErrorCount", "ErrorSample", "HistKey", "PerSecond", "Phase",
           "RunData", "Totals"]

WARMUP = "warmup"
MEASURED = "measured"
PHASES = (WARMUP, MEASURED)
OUTCOMES = ("ok", "error")


@dataclass(frozen=True, slots=True, order=True)
class HistKey:
    """Which histogram: metric ('latency', 'service', 'schedule_lag', 'server', 'loop_lag' or a named one
    such as 'batch_e2e'), phase ('warmup' | 'measured') and outcome ('ok' | 'error' | 'all')."""

    metric: str
    phase: str = MEASURED
    outcome: str = "all"


@dataclass(frozen=True, slots=True)
class Phase:
    """A phase of the run in seconds from the run's start."""

    name: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)


@dataclass(slots=True)
class Totals:
    """Request totals of one phase (phase chosen by each request's intended send time)."""

    requests: int = 0  # recorded requests, any outcome (dropped sends excluded)
    ok: int = 0
    errors: int = 0
    rows: int = 0  # rows of ok requests
    bytes_out: int = 0
    bytes_in: int = 0
    dropped: int = 0  # open loop: sends that could not start (max_in_flight reached)

    def add(self, other: Totals) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class ErrorCount:
    kind: str  # bench.results.kind_name
    status: int  # HTTP status, 0 when there was no answer
    phase: str
    count: int


@dataclass(frozen=True, slots=True)
class ErrorSample:
    """One distinct error detail (answer body excerpt or exception text) and how often it was seen."""

    kind: str
    status: int
    detail: str
    count: int


@dataclass(slots=True)
class PerSecond:
    """Per-second series, second index from the run's start (by done time; dropped by intended time).

    ``hdr[i]`` is the encoded latency histogram (from the intended time) of the ok requests completed in
    second ``second[i]`` ('' when none); p50/p90/p99/max_ms are derived from it. Seconds with no activity
    may be absent; consumers should use ``second``, not the position.
    """

    second: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    requests: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    errors: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rows: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bytes_out: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bytes_in: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dropped: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hdr: list[str] = field(default_factory=list)

    COUNT_COLUMNS = ("requests", "errors", "rows", "bytes_out", "bytes_in", "dropped")

    def __len__(self) -> int:
        return len(self.second)

    def histogram(self, i: int) -> Histogram:
        """The latency histogram of position i (not second i)."""
        return Histogram.decode(self.hdr[i]) if self.hdr[i] else Histogram()

    def latency_percentiles_ms(self) -> dict[str, npt.NDArray[np.float64]]:
        """p50/p90/p99/max (ms) per position, derived from the per-second histograms; NaN for a second with no ok
        answer (not measured: the report stores null, never 0)."""
        out = {k: np.full(len(self), np.nan) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")}
        for i in range(len(self)):
            h = self.histogram(i)
            if h.total:
                pct = h.percentiles_ms((50, 90, 99))
                out["p50_ms"][i], out["p90_ms"][i], out["p99_ms"][i] = pct[50], pct[90], pct[99]
                out["max_ms"][i] = h.max_us / 1000.0
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PerSecond):
            return NotImplemented
        return self.hdr == other.hdr and all(
            np.array_equal(getattr(self, c), getattr(other, c)) for c in ("second", *self.COUNT_COLUMNS))

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class RunData:
    """Everything measured in one run (or several merged runs). Times are relative to ``start_unix_ns``."""

    start_unix_ns: int  # wall-clock time of the run's start (aligns runs from several hosts)
    phases: list[Phase]
    partial: bool
    histograms: dict[HistKey, Histogram]
    series: PerSecond
    totals: dict[str, Totals]  # by phase name
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> second -> last value
    errors: list[ErrorCount] = field(default_factory=list)
    error_samples: list[ErrorSample] = field(default_factory=list)
    raw_path: Path | None = None  # Arrow IPC stream of per-request rows (recorder's raw log), if any
    # phase -> (first, last) answer's done time (s from the start) of the phase's requests; absent when unknown
    # (a recovered report, a merge with a part from a Locust worker older than the span in its deltas): throughput
    # is then answers / duration
    done_span: dict[str, tuple[float, float]] = field(default_factory=dict)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        return Phase(name, 0.0, 0.0)

    def total(self, phase: str = MEASURED) -> Totals:
        return self.totals.get(phase, Totals())

    def histogram(self, metric: str, phase: str = MEASURED, outcome: str = "all") -> Histogram:
        """One histogram; outcome 'all' merges ok and error when they are kept apart."""
        h = self.histograms.get(HistKey(metric, phase, outcome))
        if h is not None:
            return h
        if outcome == "all":
            return Histogram.merged(self.histograms.get(HistKey(metric, phase, o), Histogram())
                                    for o in OUTCOMES)
        return Histogram()

    def duration_s(self, phase: str = MEASURED) -> float:
        return self.phase(phase).duration_s

    def answered(self, phase: str = MEASURED) -> int:
        """Requests of the phase that got an answer, ok or error: not those still in flight at the end, nor those
        that got none (a timeout, a refused or broken connection: ``UNANSWERED_NAMES``)."""
        unanswered = sum(e.count for e in self.errors if e.phase == phase and e.kind in UNANSWERED_NAMES)
        return self.total(phase).requests - unanswered

    def rps(self, phase: str = MEASURED) -> float:
        """Throughput: the phase's answers per second — at most the rate they were sent, and at most the rate they
        came back (``done_span``: from the first answer to the last, so a long latency that fills the pipeline
        during the window costs nothing, while an endpoint that fell behind an open loop shows its own rate)."""
        d = self.duration_s(phase)
        if d <= 0:
            return 0.0
        n = self.answered(phase)
        rate = n / d
        span = self.done_span.get(phase)
        if span is not None and n >= 2 and span[1] > span[0]:
            rate = min(rate, (n - 1) / (span[1] - span[0]))
        return rate

    def sent_rps(self, phase: str = MEASURED) -> float:
        """Requests taken on per second, by intended send time: the load the run applied in the phase (an open
        loop's rate less its drops), answered or not."""
        d = self.duration_s(phase)
        return self.total(phase).requests / d if d > 0 else 0.0

    def ok_rps(self, phase: str = MEASURED) -> float:
        """Ok answers per second (``rps``, scaled by the ok share of the answers)."""
        n = self.answered(phase)
        return self.rps(phase) * self.total(phase).ok / n if n > 0 else 0.0

    def rows_per_s(self, phase: str = MEASURED) -> float:
        """Rows of ok answers per second (``rps``, scaled by the rows per answer)."""
        n = self.answered(phase)
        return self.rps(phase) * self.total(phase).rows / n if n > 0 else 0.0

    def errors_by_kind(self, phase: str = MEASURED) -> dict[str, int]:
        """Error counts keyed 'kind' or 'kind:status' (when a status is known)."""
        out: dict[str, int] = {}
        for e in self.errors:
            if e.phase == phase:
                key = f"{e.kind}:{e.status}" if e.status else e.kind
                out[key] = out.get(key, 0) + e.count
        return dict(sorted(out.items()))



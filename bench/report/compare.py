"""Compare two runs and decide "slower, and not by noise".

The point estimates are the whole-run figures people read (measured phase: merged HDR histograms and
totals). Noise comes from the per-second windows the report stores: each run's windows are resampled with
a moving-block bootstrap (blocks keep neighbouring, autocorrelated seconds together) and the change of the
window means gets a one-sided confidence bound. A metric is a regression only when its point estimate is
worse than the threshold allows AND that bound says the change is not zero (it is in the worse direction
with the chosen confidence). With fewer than ``MIN_WINDOWS`` whole seconds per run noise cannot be judged;
then the threshold alone decides and the comparison says so.

Only the latency from the intended time has per-second histograms; the service-time rows borrow the
latency windows' noise (the two views move together unless the harness queues).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bench.errors import InputError
from bench.report.accounting import accounted_totals, unrecorded_errors
from bench.report.model import MEASURED, Report, RunData, measured_rows_per_s

__all__ = [
    "DEFAULT_THRESHOLDS",
    "METRICS",
    "MIN_WINDOWS",
    "Comparison",
    "Metric",
    "MetricDelta",
    "belonging",
    "compare_reports",
    "differences",
    "format_change",
    "measured_windows",
    "parse_thresholds",
]

MIN_WINDOWS = 3
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    higher_is_worse: bool
    absolute: bool = False  # compared as a difference (percentage points), not a ratio


_LAT = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("max", 100.0))
METRICS: tuple[Metric, ...] = (
    *(Metric(k, f"latency {k} (ms)", True) for k, _ in _LAT),
    *(Metric(f"service_{k}", f"service {k} (ms)", True) for k, _ in _LAT),
    Metric("rps", "req/s", False),
    Metric("rows_per_s", "rows/s", False),
    Metric("error_rate", "error rate", True, absolute=True),
)
_BY_KEY = {m.key: m for m in METRICS}
_RATES = frozenset({"rps", "rows_per_s"})  # no measured window: not judged (the views show "—")
_PCT = dict(_LAT)
DEFAULT_THRESHOLDS: dict[str, float] = {"p50": 0.10, "p99": 0.10, "rps": 0.05, "error_rate": 0.005}


@dataclass(frozen=True, slots=True)
class MetricDelta:
    metric: Metric
    base: float | None  # None: no sample to measure it on (e.g. no ok request for a latency)
    new: float | None
    change: float | None  # relative (0.1 = +10 %) or, for absolute metrics, the difference (0.005 = +0.5 pp)
    threshold: float | None  # allowed worsening (same unit as change); None: not gated
    beyond_threshold: bool
    significant: bool | None  # None: too few windows to judge noise
    ci: tuple[float, float] | None  # two-sided bootstrap interval of the window-mean change
    regression: bool

    @property
    def key(self) -> str:
        return self.metric.key

    @property
    def missing(self) -> bool:
        """Not measured in one of the runs: no verdict either way (never "-100 %")."""
        return self.base is None or self.new is None


@dataclass(slots=True)
class Comparison:
    metrics: list[MetricDelta]
    base_windows: int
    new_windows: int
    confidence: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the runs may not be comparable at all (belonging())
    failed: str | None = None  # the new run failed (no successful answer): a regression whatever the thresholds

    @property
    def regressions(self) -> list[MetricDelta]:
        return [m for m in self.metrics if m.regression]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions) or self.failed is not None

    def verdict(self) -> str:
        if not self.regressed:
            return "no regression"
        parts = [f"the new run failed ({self.failed})"] if self.failed else []
        parts += [f"{m.key} {format_change(m)}" for m in self.regressions if not self.failed or m.new is not None]
        return "regression: " + ", ".join(parts)


def format_change(m: MetricDelta) -> str:
    if m.change is None:
        return "no samples in new" if m.regression else "n/a"
    if m.metric.absolute:
        return f"{m.change * 100:+.2f} pp"
    if math.isinf(m.change):
        return "+inf %"
    return f"{m.change * 100:+.1f} %"


def parse_thresholds(text: str | None) -> dict[str, float | None]:
    """``p99=10%,rps=5%,error_rate=0.5pp`` (``off`` disables a metric) merged over the defaults."""
    out: dict[str, float | None] = dict(DEFAULT_THRESHOLDS)
    if not text:
        return out
    given: set[str] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("p99.9", "p999")
        value = value.strip().lower()
        if not sep or key not in _BY_KEY:
            raise InputError(f"expected METRIC=LIMIT with METRIC one of {', '.join(_BY_KEY)}, got {part!r}",
                             key="--max-regression")
        if key in given:  # the last one silently won: a gate looser (or stricter) than the one read in the CI file
            raise InputError(f"{key} is given twice", key="--max-regression")
        given.add(key)
        if value == "off":
            out[key] = None
            continue
        absolute = _BY_KEY[key].absolute
        suffix = "pp" if absolute else "%"
        if not value.endswith(suffix):
            raise InputError(f"{key}: expected a limit like {'0.5pp' if absolute else '10%'}, got {value!r}",
                             key="--max-regression")
        try:
            number = float(value[: -len(suffix)])
        except ValueError:
            raise InputError(f"{key}: not a number: {value!r}", key="--max-regression") from None
        if not math.isfinite(number) or number < 0:
            raise InputError(f"{key}: must be a finite number >= 0, got {value!r}", key="--max-regression")
        out[key] = number / 100.0
    return out


def measured_windows(run: RunData, min_overlap_s: float = 0.5) -> list[int]:
    """Positions in ``run.series`` of the seconds that start inside the measured phase and overlap it by at
    least ``min_overlap_s`` (the last second of a run is often partial; it also holds the final drain).

    Seconds that began during the warm-up are left out: their start-up latencies would swamp the noise.
    """
    ph = run.phase(MEASURED)
    sec = run.series.second.astype(np.float64)
    overlap = np.minimum(sec + 1, ph.end_s) - sec
    keep = (sec >= ph.start_s - 1e-6) & (overlap >= min_overlap_s - 1e-9)
    return [int(i) for i in np.nonzero(keep)[0]]


def _active_s(run: RunData, pos: list[int]) -> FloatArray:
    """How much of each window the run was sending (the last second of a run is often partial)."""
    sec = run.series.second[pos].astype(np.float64)
    end = run.phase(MEASURED).end_s
    out: FloatArray = np.clip(np.minimum(sec + 1, end) - sec, 0.5, 1.0)
    return out


def _window_values(run: RunData, in_flight: int = 0) -> dict[str, FloatArray]:
    """Per-second values; ``in_flight`` requests unanswered at the end are errors spread over the windows."""
    pos = measured_windows(run)
    s = run.series
    lat: dict[str, list[float]] = {k: [] for k, _ in _LAT}
    for i in pos:
        h = s.histogram(i)
        if not h.total:
            continue
        pct = h.percentiles_ms((50.0, 90.0, 99.0, 99.9))
        for k, p in _LAT:
            lat[k].append(h.max_us / 1000.0 if k == "max" else pct[p])
    req = s.requests[pos].astype(np.float64)
    err = s.errors[pos].astype(np.float64)
    if in_flight and len(pos):  # a count of the whole run, not a burst of its last second: spread evenly
        req += in_flight / len(pos)
        err += in_flight / len(pos)
    active = _active_s(run, pos)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in lat.items()}
    out.update({f"service_{k}": out[k] for k, _ in _LAT})
    out["rps"] = req / active
    out["rows_per_s"] = s.rows[pos].astype(np.float64) / active
    out["error_rate"] = np.divide(err, req, out=np.zeros_like(err), where=req > 0)
    return out


def _point(report: Report | RunData) -> dict[str, float | None]:
    """Whole-run figures; None for a figure with no sample (latency without ok requests, error rate without
    requests), which is then not judged. Requests in flight at the end are errors (bench.report.accounting)."""
    run = report.run if isinstance(report, Report) else report
    out: dict[str, float | None] = {}
    for view, prefix in (("latency", ""), ("service", "service_")):
        h = run.histogram(view, MEASURED, "ok")
        pct = h.percentiles_ms((50.0, 90.0, 99.0, 99.9))
        for k, p in _LAT:
            out[prefix + k] = None if not h.total else h.max_us / 1000.0 if k == "max" else pct[p]
    tot = accounted_totals(report)
    timed = run.duration_s(MEASURED) > 0  # a measured window of 0 s (stopped in the warm-up): no rate, not 0
    out["rps"] = run.rps(MEASURED) if timed else None
    out["rows_per_s"] = measured_rows_per_s(report) if timed else None
    out["error_rate"] = tot.errors / tot.requests if tot.requests else None
    return out


def _block_indices(n: int, resamples: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """(resamples, n) indices of a moving-block bootstrap, block length ≈ n^(1/3)."""
    length = max(1, round(n ** (1 / 3)))
    blocks = -(-n // length)
    starts = rng.integers(0, n - length + 1, size=(resamples, blocks))
    idx = (starts[:, :, None] + np.arange(length)[None, None, :]).reshape(resamples, blocks * length)
    out: npt.NDArray[np.int64] = idx[:, :n].astype(np.int64)
    return out


def _bootstrap(metric: Metric, base: FloatArray, new: FloatArray, resamples: int, rng: np.random.Generator,
               confidence: float) -> tuple[bool, tuple[float, float]] | None:
    """(significantly worse?, two-sided interval) of the change of window means, or None if not judgeable."""
    if len(base) < MIN_WINDOWS or len(new) < MIN_WINDOWS:
        return None
    mb = base[_block_indices(len(base), resamples, rng)].mean(axis=1)
    mn = new[_block_indices(len(new), resamples, rng)].mean(axis=1)
    if metric.absolute:
        stat = mn - mb
    else:
        if float(base.mean()) <= 0:
            return None
        stat = mn / np.maximum(mb, 1e-12) - 1.0
    alpha = 1.0 - confidence
    lo, hi = (float(x) for x in np.quantile(stat, [alpha, 1.0 - alpha]))
    worse = lo > 0 if metric.higher_is_worse else hi < 0
    return worse, (lo, hi)


# what defines the test a report measured: the same scenario under the same load against the same route. Runs that
# differ in one of these answer different questions, and comparing them reads the difference as a regression (or
# hides one): `-c 8` against `-c 1` was "REGRESSION rps -77 %", capacity steps at 100 and 200 req/s "no regression"
_LOAD_KEYS = ("mode", "concurrency", "rate", "stages", "arrival", "rows_per_request", "processes", "max_in_flight")
_TARGET_KEYS = ("kind", "url", "host")


def _same(a: object, b: object) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | str):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _shown(value: object) -> str:
    return "(none)" if value in (None, "", []) else str(value)


def differences(base: Report, new: Report) -> list[str]:
    """What makes the two runs different tests (scenario name, load, target route), one line each; [] when they
    measured the same test. A load key one report does not record (an older bench's baseline) is not held against
    it; the mode and the target are (a Host only one run sent reached another route)."""
    out: list[str] = []
    if base.meta.scenario_name != new.meta.scenario_name:
        out.append(f"scenario: base {_shown(base.meta.scenario_name)}, new {_shown(new.meta.scenario_name)}")
    for section, keys in (("load", _LOAD_KEYS), ("target", _TARGET_KEYS)):
        b_meta, n_meta = getattr(base.meta, section), getattr(new.meta, section)
        for key in keys:
            if section == "load" and key != "mode" and (key not in b_meta or key not in n_meta):
                continue
            b, n = b_meta.get(key), n_meta.get(key)
            if not _same(b, n):
                out.append(f"{section}.{key}: base {_shown(b)}, new {_shown(n)}")
    return out


_HARNESS_KEYS = {"engine": "engine", "http2": "HTTP/2"}  # how the load was generated: another client's own cost


def belonging(base: Report, new: Report) -> list[str]:
    """Why two reports may not be comparable: a different test (``differences``), a partial (interrupted) run, a
    run whose figures are the load generator's (generator-bound), or a different engine: a change of the harness
    reads as a change of the build."""
    out = [f"not the same test: {d}" for d in differences(base, new)]
    for name, r in (("base", base), ("new", new)):
        if r.run.partial:
            out.append(f"{name} report is partial (the run was interrupted): its figures cover only part of it")
        if r.meta.generator_bound:
            why = "; ".join(r.meta.generator_bound_reasons[:2])
            out.append(f"{name} run was generator-bound ({why}): its latency and throughput are partly the load "
                       "generator's, so a change between the runs may be the harness's, not the build's")
    for key, label in _HARNESS_KEYS.items():
        b, n = base.meta.target.get(key), new.meta.target.get(key)
        if key in base.meta.target and key in new.meta.target and b != n:
            out.append(f"another load generator setting: {label} base {_shown(b)}, new {_shown(n)} (the client's "
                       "own cost differs)")
    return out


def failed_run(report: Report) -> str | None:
    """Why a report's run failed (no successful answer; stamped as ``extra.failed`` when it was written), or None;
    an older report without the stamp fails when its measured phase had requests and none was ok."""
    failed = report.meta.extra.get("failed")
    if isinstance(failed, str) and failed:
        return failed
    tot = accounted_totals(report)
    return f"no successful answer in {tot.requests:,} measured requests" if tot.requests and not tot.ok else None


def compare_reports(base: Report | RunData, new: Report | RunData,
                    thresholds: Mapping[str, float | None] | None = None, *, confidence: float = 0.99,
                    resamples: int = 2000, seed: int = 0) -> Comparison:
    """Deltas of every metric, and which ones regressed (worse beyond threshold AND significant)."""
    b_run = base.run if isinstance(base, Report) else base
    n_run = new.run if isinstance(new, Report) else new
    limits = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    rng = np.random.default_rng(seed)
    bw = _window_values(b_run, sum(unrecorded_errors(base).values()) if isinstance(base, Report) else 0)
    nw = _window_values(n_run, sum(unrecorded_errors(new).values()) if isinstance(new, Report) else 0)
    bp, np_ = _point(base), _point(new)
    out: list[MetricDelta] = []
    unmeasured: list[str] = []
    for m in METRICS:
        b, n = bp[m.key], np_[m.key]
        change: float | None
        if b is None or n is None:
            runs = " and ".join(name for name, v in (("base", b), ("new", n)) if v is None)
            unmeasured.append(f"{m.key} ({runs})")
            # a gated latency the base measured and the new run has no sample of; a rate with no measured window
            # is not judged (a failed new run is a regression through ``failed``)
            lost = b is not None and limits.get(m.key) is not None and m.key not in _RATES
            out.append(MetricDelta(m, b, n, None, limits.get(m.key), lost, None, None, lost))
            continue
        if m.absolute:
            change = n - b
        elif b > 0:
            change = n / b - 1.0
        else:
            change = math.inf if n > 0 else None
        worse_by = None if change is None else (change if m.higher_is_worse else -change)
        limit = limits.get(m.key)
        beyond = limit is not None and worse_by is not None and worse_by > limit + 1e-12
        judged = _bootstrap(m, bw[m.key], nw[m.key], resamples, rng, confidence)
        significant = None if judged is None else judged[0]
        ci = None if judged is None else judged[1]
        regression = beyond and significant is not False
        out.append(MetricDelta(m, b, n, change, limit, beyond, significant, ci, regression))
    nb, nn = len(measured_windows(b_run)), len(measured_windows(n_run))
    cmp = Comparison(out, nb, nn, confidence)
    if isinstance(base, Report) and isinstance(new, Report):
        cmp.warnings = belonging(base, new)
    if isinstance(new, Report):
        cmp.failed = failed_run(new)
    lost_keys = [m.key for m in out if m.regression and m.new is None]
    if lost_keys:
        cmp.notes.append("no samples in the new run where the base had them (a regression): " + ", ".join(lost_keys))
    unjudged = [u for u in unmeasured if u.split(" ")[0] not in lost_keys]
    if unjudged:
        cmp.notes.append("no samples, not judged: " + ", ".join(unjudged))
    if min(nb, nn) < MIN_WINDOWS:
        cmp.notes.append(f"only {min(nb, nn)} measured second(s) in a run (need {MIN_WINDOWS}): noise not "
                         "judged, thresholds alone decide; run longer for a noise-aware verdict")
    return cmp

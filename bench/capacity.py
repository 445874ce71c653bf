"""Capacity planning: the search for the highest open-loop rate that meets an SLO, and what it means in replicas.

Pure parts only (no sockets, no files, no printing), so the maths is unit-testable:

* ``CapacitySearch`` — the sweep strategy, an iterator of rates fed by each step's verdict (guidellm style):
  grow geometrically from a start rate until a step fails (SLO broken or endpoint saturated), then bisect
  between the last pass and the first failure until the bracket is within the precision. A step that was
  generator-bound is no verdict on the endpoint: the search stops there (the harness limit was reached).
* ``judge_step`` — pass / fail / harness for one measured step, with the reasons in words.
* ``plan_replicas`` — replicas needed for a target rate, assuming per-replica throughput is linear.
* ``knee_index`` / ``highest_pass`` — the knee of the latency–throughput curve and the highest load that met
  the SLO, over the steps of a sweep (rate or concurrency).

The runs (and ``step_scenario``, a scenario for one step) live in ``bench.sweep``; the flags, files and the
table on the terminal in ``bench.commands.capacity``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench.errors import InputError

__all__ = ["SATURATION_RATIO", "THROUGHPUT_KEYS", "CapacitySearch", "Failure", "ReplicaPlan", "StepMeasure",
           "StopReason", "Verdict", "drops_are_the_cap", "growth_seconds", "highest_pass", "judge_step",
           "knee_index", "latency_grew", "parse_precision", "parse_slo_flag", "plan_replicas", "saturation_slack",
           "shifted_rate", "start_from_probe"]

Verdict = Literal["pass", "fail", "harness"]
StopReason = Literal["bracketed", "max_rate", "lowest_failed", "harness", "max_steps", "interrupted"]

SATURATION_RATIO = 0.97  # achieved completions below 97 % of the target rate: the endpoint did not keep up
_SATURATION_SLACK = 2.0  # ... and short by more than this many requests (a constant rate jitters ±1 per second)


@dataclass
class CapacitySearch:
    """Geometric growth then bisection. Iterate for the next rate; ``record`` each rate's verdict before the next.

    Invariants (checked by tests): every pass recorded is below every failure recorded while bisecting, so
    ``last_pass < first_fail`` whenever both exist; bisection stops when
    ``first_fail - last_pass <= precision * first_fail`` (the boundary is known to within ``precision``);
    the search always ends (the bracket halves each step; ``max_steps`` bounds everything).
    """

    start: float
    max_rate: float | None = None
    precision: float = 0.05
    factor: float = 2.0
    max_steps: int = 40
    last_pass: float | None = None  # highest rate that met the SLO
    first_fail: float | None = None  # lowest rate that failed it
    stop_reason: StopReason | None = None
    history: list[tuple[float, Verdict]] = field(default_factory=list)
    _pending: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and self.start > 0):
            raise ValueError(f"start rate must be > 0, got {self.start}")
        if self.max_rate is not None and not self.max_rate >= self.start:
            raise ValueError(f"max rate {self.max_rate} is below the start rate {self.start}")
        if not 0 < self.precision < 1:
            raise ValueError(f"precision must be between 0 and 1, got {self.precision}")
        if not self.factor > 1:
            raise ValueError(f"growth factor must be > 1, got {self.factor}")

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def bisecting(self) -> bool:
        return self.first_fail is not None and self.last_pass is not None

    def next_rate(self) -> float | None:
        """The next rate to try, or None when the search is over (see ``stop_reason``)."""
        if self._pending is not None:
            raise RuntimeError(f"record the verdict for {self._pending:g} req/s first")
        if self.done:
            return None
        if len(self.history) >= self.max_steps:
            self.stop_reason = "max_steps"
            return None
        if not self.history:
            rate = self.start
        elif self.bisecting:
            assert self.last_pass is not None and self.first_fail is not None
            rate = (self.last_pass + self.first_fail) / 2
        else:
            assert self.last_pass is not None
            rate = self.last_pass * self.factor
            if self.max_rate is not None:
                rate = min(rate, self.max_rate)
        self._pending = rate
        return rate

    def record(self, rate: float, verdict: Verdict) -> None:
        if self._pending is None or rate != self._pending:
            raise RuntimeError(f"{rate:g} req/s was not the rate handed out")
        self._pending = None
        self.history.append((rate, verdict))
        if verdict == "harness":
            self.stop_reason = "harness"
            return
        if verdict == "pass":
            self.last_pass = rate if self.last_pass is None else max(self.last_pass, rate)
            if not self.bisecting and self.max_rate is not None and rate >= self.max_rate:
                self.stop_reason = "max_rate"
                return
        else:
            self.first_fail = rate if self.first_fail is None else min(self.first_fail, rate)
            if self.last_pass is None:
                self.stop_reason = "lowest_failed"
                return
        if self.bisecting and self.within_precision():
            self.stop_reason = "bracketed"

    def within_precision(self) -> bool:
        if self.last_pass is None or self.first_fail is None:
            return False
        return self.first_fail - self.last_pass <= self.precision * self.first_fail

    def stop(self, reason: StopReason) -> None:
        """End the search from outside (Ctrl-C)."""
        self._pending = None
        self.stop_reason = reason

    def __iter__(self) -> Iterator[float]:
        while (rate := self.next_rate()) is not None:
            yield rate
            if self._pending is not None:
                raise RuntimeError(f"no verdict recorded for {rate:g} req/s")


@dataclass(frozen=True)
class StepMeasure:
    """What the judge needs from one step's report (measured phase)."""

    target_rps: float
    achieved_rps: float  # answers per second, counted over the measured window shifted by the median latency
    window_s: float  # length of the window achieved_rps was counted over
    requests: int
    error_rate: float
    dropped: int
    generator_bound: bool = False
    generator_bound_reasons: tuple[str, ...] = ()
    cpu_saturated: bool = False  # the generator used (nearly) a whole core: answers may have waited unread
    service_ms: Mapping[str, float] = field(default_factory=dict)  # sent→done percentiles, keyed like the SLO
    loop_lag_ms: float = 0.0  # the generator's longest event-loop stall: an answer may have waited that long unread
    answer_error_rate: float | None = None  # errors that were answers (not UNANSWERED_NAMES); None: all
    baseline_ms: float | None = None  # the lowest (unloaded) service p50 seen in the sweep so far, this step's too
    max_in_flight: int = 0  # the step's in-flight cap (0: not known)
    cap_set: bool = False  # ... set by the user (load.max_in_flight), not sized by the sweep
    latency_growth_ms: tuple[float, float | None, float] | None = None  # p50 of the step's thirds (done time)
    latency_sd_ms: float = 0.0  # spread of the latency, (p84 − p16) / 2: the answers' count is that noisy


@dataclass(frozen=True)
class Failure:
    """One broken objective: its ``[slo]`` key, the allowed value and the sentence that explains it."""

    key: str
    allowed: float
    text: str


_LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")
THROUGHPUT_KEYS = ("min_rps", "min_rows_per_s")  # a rate sweep sets the rate: these objectives do not apply
FLAT_LATENCY = 1.5  # service p50 within this × the unloaded one: the endpoint was not queueing
GROWTH_RATIO = 1.5  # p50 of the step's last third over its first third: a queue building up...
GROWTH_MIN_MS = 5.0  # ... by more than this (a shared machine's hiccups move a few-ms p50 by a ms or two)


def _endpoint_caused(f: Failure, m: StepMeasure) -> bool:
    """Would this failure stand without the harness's own delays? Latency from the intended time includes the
    generator's send lag; the service time (sent → done) does not, but it does include the time an answer waited
    unread in a busy generator: at most its loop lag, unbounded when its CPU was saturated (then no latency
    failure is the endpoint's). Error rates are the endpoint's answers (with a saturated CPU only those with an
    HTTP status: a read timeout may be the generator's). Throughput and drop counts may be the harness's."""
    if f.key in _LATENCY_KEYS or f.key == "service_p99_ms":
        if m.cpu_saturated:
            return False
        if f.key == "service_p99_ms" or m.generator_bound:
            service = m.service_ms.get("p99_ms" if f.key == "service_p99_ms" else f.key, 0.0)
            return service - m.loop_lag_ms > f.allowed
        return True
    if f.key == "error_rate":
        return not m.cpu_saturated or (m.answer_error_rate if m.answer_error_rate is not None
                                       else m.error_rate) > f.allowed
    return False


def saturation_slack(m: StepMeasure) -> float:
    """Requests a step may fall short by before it counts as saturated: a constant rate's ±1 per second, and
    the noise of counting answers in a window: requests whose latency differs by about its spread (σ) cross
    the window's two edges, a count variance of about 1.2 × rate × σ (Gaussian latency); three standard
    deviations of it. A jittery high-latency endpoint that keeps up is not saturated by chance."""
    return max(_SATURATION_SLACK, 3 * math.sqrt(1.2 * m.target_rps * m.latency_sd_ms / 1000))


def drops_are_the_cap(m: StepMeasure) -> bool:
    """Sends dropped at the in-flight cap while the service time stayed near the unloaded one: by Little's law
    the cap (in flight = rate × latency) was too small for the rate, the endpoint was not queueing."""
    p50 = m.service_ms.get("p50_ms")
    return bool(m.dropped and p50 is not None and m.baseline_ms is not None
                and p50 <= FLAT_LATENCY * m.baseline_ms)


def _cap_hint(m: StepMeasure) -> str:
    p50 = m.service_ms.get("p50_ms") or 0.0
    need = math.ceil(m.target_rps * p50 / 1000)
    held = f"{m.max_in_flight:,} in flight" if m.max_in_flight else "the in-flight cap"
    who = "load.max_in_flight" if m.cap_set else "the cap the sweep sized"
    return (f"harness limit: {held} ({who}) at a flat service p50 of {p50:,.4g} ms allows about "
            f"{(m.max_in_flight or 0) / max(p50 / 1000, 1e-9):,.4g} req/s; {m.target_rps:,.4g} req/s needs ≥ "
            f"{need:,} in flight: raise load.max_in_flight (≥ {2 * need:,} leaves room)")


def judge_step(m: StepMeasure, slo_failures: list[Failure], *, max_error_rate: float) -> tuple[Verdict, list[str]]:
    """pass / fail / harness and why.

    A step fails on any broken objective, or when the endpoint saturated: answers short of the target rate
    (counted over the measured window shifted by the median latency, so the spread of latencies costs nothing),
    latency growing through the step (a queue building up: a short step may end before it breaks the limit),
    sends dropped at the in-flight cap while the endpoint queued, or errors above the limit. A failure stands
    only when the endpoint alone explains it; one the harness may explain makes the step 'harness' (no verdict
    on the endpoint): a generator whose CPU was saturated (its answers waited unread, so even the service time
    is its own), a generator that sent late (then the service time, less its loop lag, must break the limit),
    and drops at an in-flight cap too small for rate × latency while latency stayed flat (Little's law). A pass
    stands whatever the generator did: late sends only add latency, so the endpoint did at least that well."""
    failures: list[tuple[str, bool]] = [(f.text, _endpoint_caused(f, m)) for f in slo_failures
                                        if f.key not in THROUGHPUT_KEYS]
    cap_limited = drops_are_the_cap(m)
    harness_rate = m.cpu_saturated or cap_limited  # completions short because the harness did not send / read
    short = (m.target_rps - m.achieved_rps) * m.window_s
    if m.achieved_rps < SATURATION_RATIO * m.target_rps and short > saturation_slack(m):
        failures.append((f"saturated: {m.achieved_rps:,.1f} req/s completed < {SATURATION_RATIO:.0%} of "
                         f"{m.target_rps:,.4g} req/s", not harness_rate))
    if m.latency_growth_ms is not None:
        first, middle, last = m.latency_growth_ms
        if latency_grew(first, middle, last, m.baseline_ms):
            # a generator that kept its CPU adds at most its loop's stalls, not a rising queue
            failures.append((f"saturated: latency grew through the step (p50 {first:,.4g} ms in its first third, "
                             f"{last:,.4g} ms in its last): a queue was building up",
                             not m.cpu_saturated and last - first > m.loop_lag_ms))
    if m.dropped:
        text = f"saturated: {m.dropped:,} sends dropped (in-flight cap reached)"
        failures.append((f"{text}; {_cap_hint(m)}" if cap_limited else text, not harness_rate))
    if m.error_rate > max_error_rate and not any(f.key == "error_rate" for f in slo_failures):
        failures.append((f"errors: {m.error_rate:.2%} > {max_error_rate:.2%}",
                         _endpoint_caused(Failure("error_rate", max_error_rate, ""), m)))
    if m.requests == 0:
        failures.append(("no requests were recorded", False))
    reasons = [text for text, _ in failures]
    bound = ("generator-bound (" + "; ".join(m.generator_bound_reasons or ("harness limit",)) + ")"
             if m.generator_bound or m.cpu_saturated else "")
    if not failures:
        return "pass", [f"{bound}, but a late send only adds latency: the pass stands"] if bound else []
    if any(endpoint for _, endpoint in failures):
        return "fail", [*reasons, f"{bound}, but the endpoint alone breaks the SLO"] if bound else reasons
    why = bound or "the harness's in-flight cap"
    return "harness", [*reasons, f"{why}: no verdict on the endpoint"]


@dataclass(frozen=True)
class ReplicaPlan:
    target_rps: float
    capacity_rps: float  # what the endpoint sustained with ``replicas`` replicas
    replicas: int
    per_replica_rps: float
    replicas_needed: int
    utilisation: float  # target / (replicas_needed × per_replica_rps) — what is left is headroom
    lower_bound: bool = False  # capacity_rps is only a lower bound (the sweep stopped before a failure)

    def note(self) -> str:
        if self.lower_bound:
            return (f"{self.target_rps:,.4g} req/s needs at most {self.replicas_needed} replica(s): the capacity "
                    f"is only a lower bound (≥ {self.capacity_rps:,.4g} req/s over {self.replicas} replica(s), "
                    f"≥ {self.per_replica_rps:,.4g} req/s each, assumed linear in replicas), so fewer may do; "
                    "sweep higher (--max, more load generators) for a count.")
        head = (f"{self.target_rps:,.4g} req/s needs {self.replicas_needed} replica(s): "
                f"{self.capacity_rps:,.4g} req/s over {self.replicas} replica(s) = "
                f"{self.per_replica_rps:,.4g} req/s each, assumed linear in replicas")
        return (f"{head}; at {self.replicas_needed} the target is {self.utilisation:.0%} of the SLO capacity "
                f"({1 - self.utilisation:.0%} headroom). Linear scaling ignores shared limits (load balancer, "
                f"database, token service); add a replica for failover and verify at the new size.")


def plan_replicas(target_rps: float, capacity_rps: float, replicas: int, *, lower_bound: bool = False) -> ReplicaPlan:
    """ceil(target / (capacity / replicas)); capacity must be > 0. With ``lower_bound`` (the capacity is only
    known to be at least that) the count is an upper bound: at most that many replicas are needed."""
    if capacity_rps <= 0 or replicas < 1 or target_rps <= 0:
        raise ValueError("target, capacity and replicas must be > 0")
    per = capacity_rps / replicas
    needed = max(1, math.ceil(target_rps / per - 1e-9))
    return ReplicaPlan(target_rps, capacity_rps, replicas, per, needed, target_rps / (needed * per), lower_bound)


def shifted_rate(seconds: Sequence[int], answers: Sequence[float], *, start_s: float, end_s: float,
                 shift_s: float, early_s: float, first_s: float, last_s: float) -> tuple[float, float] | None:
    """(answers per second, window s) over the measured window shifted by the latency: from ``start + shift``
    (the median) to ``end + early`` (a low percentile, e.g. p1: later, the answers thin out as the sends stopped
    at ``end``); the plain shift when that is under a second; None when even that is.

    A request sent at t comes back at about t + its latency, so this window holds as many answers as the
    window's sends when the endpoint keeps up, whatever the spread of latencies (first answer to last answer
    adds the spread to the span and called a slow, jittery endpoint saturated); an endpoint that fell behind
    answers at its own rate in any window. ``seconds``/``answers``: the per-second series by done time; the
    window is narrowed to whole seconds where that leaves one, else each second's count is taken as spread
    evenly over its part between the run's first and last answers (``first_s``, ``last_s``). The count is
    noisy at the window's edges (answers reorder across them): see ``saturation_slack``."""
    lo, hi = start_s + shift_s, min(end_s + early_s, last_s)
    if hi - lo < 1.0:
        hi = min(end_s + shift_s, last_s)
    if hi - lo < 1.0:
        return None
    # whole seconds where the answers go on past the window (their density changes inside a second near the
    # end); the part up to the last answer when the window reaches it
    if hi < last_s and math.floor(hi) - lo >= 1:
        hi = math.floor(hi)
    if math.ceil(lo) <= hi - 1:
        lo = math.ceil(lo)
    n = 0.0
    for sec, a in zip(seconds, answers, strict=True):
        a_lo, a_hi = max(float(sec), first_s), min(sec + 1.0, last_s)
        if a_hi <= a_lo:
            n += a if lo <= sec < hi else 0.0
            continue
        n += a * max(0.0, min(a_hi, hi) - max(a_lo, lo)) / (a_hi - a_lo)
    return n / (hi - lo), hi - lo


def growth_seconds(lo: float, hi: float) -> tuple[list[int], list[int], list[int]] | None:
    """The whole seconds of ``[lo, hi)`` split in first, middle and last thirds (the middle may be empty with
    two seconds); None with fewer than two."""
    secs = list(range(math.ceil(lo - 0.25), math.floor(hi + 0.25)))
    if len(secs) < 2:
        return None
    k = max(1, len(secs) // 3)
    return secs[:k], secs[k:-k], secs[-k:]


def latency_grew(first: float, middle: float | None, last: float, baseline_ms: float | None) -> bool:
    """A queue building up through the step: p50 rising from the first third to the middle to the last, the
    last over ``GROWTH_RATIO`` × the first and more than one unloaded service time (at least
    ``GROWTH_MIN_MS``) above it."""
    floor = max(GROWTH_MIN_MS, baseline_ms or 0.0)
    rising = middle is None or first <= middle <= last
    return rising and last > GROWTH_RATIO * first and last - first > floor


def start_from_probe(probe_rps: float) -> float:
    """Half of what one closed-loop client achieved: one client in flight never queues behind another, so
    its rate is ≤ the capacity of a single replica; half of it is safely below the knee of any endpoint."""
    return max(0.5, 0.5 * probe_rps)


def parse_slo_flag(text: str) -> dict[str, float]:
    """``p99_ms=50,error_rate=0.01`` → a mapping for ``bench.report.slo.slo_from_mapping``."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value pairs like p99_ms=50,error_rate=0.01, got {part!r}", key="--slo")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise InputError(f"{key.strip()}: expected a number, got {value!r}", key="--slo") from None
    if not out:
        raise InputError("no objectives given", key="--slo")
    return out


def parse_precision(text: str | float) -> float:
    """'5%' or 0.05 → 0.05 (a fraction strictly between 0 and 1)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InputError(f"expected a percentage like 5% or a fraction like 0.05, got {text!r}",
                         key="--precision") from None
    if not 0 < value < 1:
        raise InputError(f"must be > 0 % and < 100 %, got {text!r}", key="--precision")
    return value


def knee_index(offered: Sequence[float], goodput: Sequence[float | None],
               p99_ms: Sequence[float | None]) -> int | None:
    """The knee of a latency–throughput curve: the step with the most "power" (Kleinrock): ok throughput per
    unit of tail latency, ``goodput / p99``. Below the knee more load buys throughput at little latency cost;
    past it latency grows faster than throughput. Returns an index into the inputs (any order; steps are
    taken by offered load), or None with fewer than 3 measured steps or when power still rises at the
    highest load (the sweep did not reach the knee)."""
    pts = sorted((o, i) for i, o in enumerate(offered)
                 if goodput[i] is not None and p99_ms[i] is not None and (p99_ms[i] or 0) > 0)
    if len(pts) < 3:
        return None
    power = [(goodput[i] or 0.0) / (p99_ms[i] or 1.0) for _, i in pts]
    best = max(range(len(pts)), key=lambda k: (power[k], -k))
    if best == len(pts) - 1:
        return None
    return pts[best][1]


def highest_pass(offered: Sequence[float], verdicts: Sequence[str]) -> int | None:
    """Index of the highest offered load whose step met the SLO (verdict 'pass'), or None."""
    passing = [(o, i) for i, (o, v) in enumerate(zip(offered, verdicts, strict=True)) if v == "pass"]
    return max(passing)[1] if passing else None

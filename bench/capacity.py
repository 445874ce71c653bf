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

__all__ = ["SATURATION_RATIO", "CapacitySearch", "Failure", "ReplicaPlan", "StepMeasure", "StopReason", "Verdict",
           "highest_pass", "judge_step", "knee_index", "parse_precision", "parse_slo_flag", "plan_replicas",
           "start_from_probe"]

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
    achieved_rps: float  # completions per second inside the measured window
    window_s: float  # length of the window achieved_rps was counted over
    requests: int
    error_rate: float
    dropped: int
    generator_bound: bool = False
    generator_bound_reasons: tuple[str, ...] = ()
    cpu_saturated: bool = False  # the generator used (nearly) a whole core
    service_ms: Mapping[str, float] = field(default_factory=dict)  # sent→done percentiles, keyed like the SLO


@dataclass(frozen=True)
class Failure:
    """One broken objective: its ``[slo]`` key, the allowed value and the sentence that explains it."""

    key: str
    allowed: float
    text: str


_LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def _endpoint_caused(f: Failure, m: StepMeasure) -> bool:
    """Would this failure stand without the harness's own delays? Latency from the intended time includes the
    generator's send lag; the service time (sent → done) does not, so if it alone breaks the limit, the endpoint
    broke it. Error rates are the endpoint's answers. Throughput and drop counts may be the harness's."""
    if f.key in _LATENCY_KEYS:
        return m.service_ms.get(f.key, 0.0) > f.allowed
    return f.key in ("service_p99_ms", "error_rate")


def judge_step(m: StepMeasure, slo_failures: list[Failure], *, max_error_rate: float) -> tuple[Verdict, list[str]]:
    """pass / fail / harness and why.

    A step fails on any broken objective, or when the endpoint saturated: completions short of the target rate,
    sends dropped at the in-flight cap, or errors above the limit. A generator-bound step (the harness sent late
    or ran out of CPU) is judged with care: a pass stands (late sends only add latency, so the endpoint did at
    least that well), a failure stands only when the endpoint alone explains it (service time over the limit,
    errors, completions short while the generator still had CPU); otherwise the step is 'harness' — no verdict
    on the endpoint."""
    failures: list[tuple[str, bool]] = [(f.text, _endpoint_caused(f, m)) for f in slo_failures]
    short = (m.target_rps - m.achieved_rps) * m.window_s
    if m.achieved_rps < SATURATION_RATIO * m.target_rps and short > _SATURATION_SLACK:
        failures.append((f"saturated: {m.achieved_rps:,.1f} req/s completed < {SATURATION_RATIO:.0%} of "
                         f"{m.target_rps:,.4g} req/s", not m.cpu_saturated))
    if m.dropped:
        failures.append((f"saturated: {m.dropped:,} sends dropped (in-flight cap reached)", not m.cpu_saturated))
    if m.error_rate > max_error_rate and not any(f.key == "error_rate" for f in slo_failures):
        failures.append((f"errors: {m.error_rate:.2%} > {max_error_rate:.2%}", True))
    if m.requests == 0:
        failures.append(("no requests were recorded", False))
    reasons = [text for text, _ in failures]
    if not m.generator_bound:
        return ("fail" if failures else "pass"), reasons
    bound = "generator-bound (" + "; ".join(m.generator_bound_reasons or ("harness limit",)) + ")"
    if not failures:
        return "pass", [f"{bound}, but a late send only adds latency: the pass stands"]
    if any(endpoint for _, endpoint in failures):
        return "fail", [*reasons, f"{bound}, but the endpoint alone breaks the SLO"]
    return "harness", [*reasons, f"{bound}: no verdict on the endpoint"]


@dataclass(frozen=True)
class ReplicaPlan:
    target_rps: float
    capacity_rps: float  # what the endpoint sustained with ``replicas`` replicas
    replicas: int
    per_replica_rps: float
    replicas_needed: int
    utilisation: float  # target / (replicas_needed × per_replica_rps) — what is left is headroom

    def note(self) -> str:
        head = (f"{self.target_rps:,.4g} req/s needs {self.replicas_needed} replica(s): "
                f"{self.capacity_rps:,.4g} req/s over {self.replicas} replica(s) = "
                f"{self.per_replica_rps:,.4g} req/s each, assumed linear in replicas")
        return (f"{head}; at {self.replicas_needed} the target is {self.utilisation:.0%} of the SLO capacity "
                f"({1 - self.utilisation:.0%} headroom). Linear scaling ignores shared limits (load balancer, "
                f"database, token service); add a replica for failover and verify at the new size.")


def plan_replicas(target_rps: float, capacity_rps: float, replicas: int) -> ReplicaPlan:
    """ceil(target / (capacity / replicas)); capacity must be > 0."""
    if capacity_rps <= 0 or replicas < 1 or target_rps <= 0:
        raise ValueError("target, capacity and replicas must be > 0")
    per = capacity_rps / replicas
    needed = max(1, math.ceil(target_rps / per - 1e-9))
    return ReplicaPlan(target_rps, capacity_rps, replicas, per, needed, target_rps / (needed * per))


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

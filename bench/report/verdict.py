"""The overload verdict: did the harness, not the endpoint, limit the run ("generator-bound")?

Open loop (a target rate): the schedule-lag p99 above a bound means sends left late, so latency numbers
include the harness's own queueing; an achieved rate short of the target while the generator's CPU was
saturated means the harness could not keep up, and so do dropped sends (max_in_flight reached) while the CPU
was saturated (without saturation, drops mean a slow target: counted, not blamed on the harness).
Closed loop (no target rate): a saturated CPU or a large
schedule lag means throughput may describe the harness.
"""

from __future__ import annotations

from bench.report.model import MEASURED, Report, ReportMeta, RunData
from bench.results import GATE_HOLDS

__all__ = ["NOT_JUDGED", "POOL_ADVICE", "apply_verdict", "generator_bound", "judged", "not_judged_parts"]

POOL_ADVICE = 64  # open-loop connections past which a busy, late loop is advised to cap its pool (see below)
NOT_JUDGED = "not judged (recovered from a checkpoint, which keeps neither the schedule lag nor the CPU use)"


def judged(meta: ReportMeta) -> bool:
    """False for a report recovered from a checkpoint, or a merged one with such a part and no part found
    generator-bound (``extra.generator_bound_not_judged``): its verdict was never made."""
    return "recovered" not in meta.extra and not meta.extra.get("generator_bound_not_judged")


def not_judged_parts(merged: Report, parts: list[str]) -> None:
    """A merged run with parts whose schedule lag and CPU use are unknown (taken from a checkpoint or a lost
    worker's stream) that no judged part found generator-bound is "not judged", never "no"."""
    if parts and not merged.meta.generator_bound:
        merged.meta.extra["generator_bound_not_judged"] = parts


def generator_bound(run: RunData, *, target_rps: float | None, cpu_fraction: float | None,
                    connections: int | None = None, waited_at_cap: tuple[int, int] = (0, 0),
                    lag_bound_ms: float = 1.0, rate_tolerance: float = 0.01,
                    cpu_saturated: float = 0.9, lag_busy: float = 0.6) -> tuple[bool, list[str]]:
    """(bound?, reasons). cpu_fraction: generator CPU time / wall time over the run, as a fraction of one core
    (None when not measured: then only the schedule lag can tell). ``lag_busy``: from this busy share on, a
    late schedule is put down to the loop's load: on a 2-vCPU VM (docs/performance.md) an open loop 87-90 % busy
    turned every hiccup of a ms or two (the target's, the kernel's, its own) into a backlog that drained at the
    loop's spare ~10 %, tens of ms of late sends; at 62-73 % busy it held a 1 ms lag p99 in 3 of 6 runs, at
    36-57 % busy in 18 of 18. ``connections``: how many an open loop opened (None: not counted); a busy loop whose
    pool grew past POOL_ADVICE is told to cap it: at 80 % of the ceiling against a fast server, 32 connections held
    the rate in 9 of 12 rounds over two sessions, with lag p99 1.2-3.3 ms in all but one (29 ms); the growing
    pool's was 1.7-122 ms (docs/performance.md). ``waited_at_cap``: (sends that waited for a free connection
    because the pool was at ``engine.connections``, that cap): the lag then is the cap's as much as the loop's,
    and the reason says so."""
    reasons: list[str] = []
    lag = run.histogram("schedule_lag", MEASURED, "all")
    if lag.total:
        lag_p99 = lag.percentiles_ms((99,))[99]
        # a client-side rate limit (the UbiOps backoff's send gate, counter GATE_HOLDS) makes sends leave late on
        # purpose: that lag is the platform's limit, shown as its pauses, not the harness's
        if lag_p99 > lag_bound_ms and not run.counters.get(GATE_HOLDS):
            why = f"schedule lag p99 {lag_p99:.3g} ms > {lag_bound_ms:g} ms: sends left late"
            waited, cap = waited_at_cap
            if cpu_fraction is not None:  # what to do about it depends on whether the generator's core was full
                why += f"; the generator's loop was {cpu_fraction * 100:.0f} % busy"
                if cpu_fraction >= lag_busy:
                    why += (" (too busy to catch up after a stall: a lower rate per process, or --processes N, "
                            "keeps the schedule)")
                elif not (waited and cap):  # (with sends held by the cap, the cap is the likelier cause)
                    why += (" (it had room: likely stalls from outside it, e.g. another process on its core; "
                            "pin it with taskset)")
                if cpu_fraction >= lag_busy and connections is not None and connections > POOL_ADVICE:
                    why += (f"; it opened {connections:,} connections: against a fast server, --connections "
                            "32-64 keeps the pool small and the catch-up bursts short")
            if waited and cap:
                why += (f"; {waited:,} sends waited for one of the {cap:,} connections --connections allows: "
                        "a target slower than that pool can serve at this rate needs more")
            reasons.append(why)
    cpu = cpu_fraction if cpu_fraction is not None else 0.0  # only read when saturated (so measured)
    saturated = cpu_fraction is not None and cpu_fraction >= cpu_saturated
    if target_rps is not None and target_rps > 0:
        # the rate the generator kept: requests taken on (by intended time) and dropped, less those still in
        # flight at the end (a backlog the loop never sent); answers that came back late are the endpoint's
        unsent = sum(e.count for e in run.errors if e.phase == MEASURED and e.kind == "abandoned")
        achieved = run.sent_rps(MEASURED) + (run.total(MEASURED).dropped - unsent) / max(run.duration_s(MEASURED),
                                                                                         1e-9)
        dropped = run.total(MEASURED).dropped
        if dropped and saturated:
            reasons.append(f"{dropped:,} sends dropped (max_in_flight reached) with the generator CPU at "
                           f"{cpu * 100:.0f} % of a core: answers were not read in time")
        if achieved < target_rps * (1 - rate_tolerance) and saturated:
            reasons.append(f"achieved {achieved:.1f} req/s < target {target_rps:g} req/s "
                           f"(-{(1 - achieved / target_rps) * 100:.1f} %) with the generator CPU at "
                           f"{cpu * 100:.0f} % of a core")
    elif saturated:
        reasons.append(f"generator CPU at {cpu * 100:.0f} % of a core: throughput may be the harness's")
    return bool(reasons), reasons


def apply_verdict(report: Report, *, target_rps: float | None, cpu_fraction: float | None,
                  connections: int | None = None, waited_at_cap: tuple[int, int] = (0, 0), **bounds: float) -> bool:
    """Judge the run and store the verdict, its reasons and the CPU figure in the report's metadata."""
    bound, reasons = generator_bound(report.run, target_rps=target_rps, cpu_fraction=cpu_fraction,
                                     connections=connections, waited_at_cap=waited_at_cap, **bounds)
    report.meta.generator_bound = bound
    report.meta.generator_bound_reasons = reasons
    report.meta.cpu_fraction = cpu_fraction
    return bound

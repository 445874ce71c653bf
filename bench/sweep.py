"""A capacity sweep's steps: each a real run through the session layer against the (shared) resolved target, its
report written, its measure taken and judged (the search strategy itself is bench.capacity, pure).

Used by `bench capacity` (bench.commands.capacity: flags, capacity.json, the verdict lines).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.scenario import Scenario

__all__ = ["PROBE_S", "Settings", "Step", "StepRunner", "Sweep", "clients_scenario", "default_objectives",
           "max_error_rate", "objectives_text", "parse_levels", "probe_scenario", "run_concurrency", "run_sweep",
           "slo_failures", "step_scenario"]

PROBE_S = 2.0  # closed loop, one client: the safe start rate is half of what it achieves
CAP_HEADROOM = 2.0  # a step's in-flight cap: this × rate × latency (Little's law, with room for a slower spell)
MAX_AUTO_CAP = 100_000  # ... at most this many (and within the open-file limit)
COOL_FACTOR = 1.5  # cool-down: the target is idle once one request comes back within this × the idle p99
COOL_MAX_S = 120.0  # ... waiting at most this long (and 3 × a step, at least 10 s)
COOL_PAUSE_S = 0.1  # between two cool-down requests


@dataclass(frozen=True)
class Settings:
    """The sweep's knobs: flags win over the scenario's optional ``[capacity]`` table."""

    start: float | None
    max_rate: float | None
    step_s: float
    warmup_s: float
    precision: float
    target_rps: float | None
    replicas: int | None


@dataclass
class Step:
    n: int
    target_rps: float
    verdict: str  # pass | fail | harness | interrupted | probe
    reasons: list[str]
    summary: dict[str, Any]
    achieved_rps: float
    report: str
    clients: int | None = None  # a concurrency step: closed loop with this many clients (target_rps unused)
    max_in_flight: int | None = None  # a rate step: its in-flight cap (the scenario's, else sized by the sweep)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        offered: dict[str, Any] = ({"clients": self.clients} if self.clients is not None
                                   else {"target_rps": round(self.target_rps, 3)})
        return {"step": self.n, **offered, "achieved_rps": round(self.achieved_rps, 3),
                "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"], "requests": s["requests"],
                "error_rate": s["error_rate"], "dropped": s["dropped"], "generator_bound": s["generator_bound"],
                "verdict": self.verdict, "reasons": self.reasons, "report": self.report,
                **({"max_in_flight": self.max_in_flight} if self.max_in_flight is not None else {})}


@dataclass
class Sweep:
    steps: list[Step] = field(default_factory=list)
    probe: Step | None = None
    objectives: Any = None  # SloObjectives
    objectives_source: str = ""
    rows: list[Any] = field(default_factory=list)  # CapacityStep per judged step, for the capacity report
    load_kind: str = "rate"  # rate (the search) | concurrency (--concurrency levels)
    ignored: list[str] = field(default_factory=list)  # SLO keys a rate sweep leaves out (min_rps, min_rows_per_s)
    cooldowns: list[dict[str, Any]] = field(default_factory=list)  # each wait for an idle target before a step


def run_sweep(search: Any, runner: StepRunner, sweep: Sweep, checkpoint: Callable[[], None]) -> None:
    from bench.capacity import judge_step

    for rate in search:
        step, measure = runner.step(rate)
        if step.verdict == "interrupted":
            _interrupted(search, runner, step, checkpoint)
            return
        objectives = _objectives_for(sweep, step, runner)
        verdict, reasons = judge_step(measure, slo_failures(objectives, runner.last_report),
                                      max_error_rate=max_error_rate(objectives))
        if verdict == "harness" and not runner.retried(rate):
            step.verdict, step.reasons = "harness", [*reasons, "repeating the step once to rule out a hiccup"]
            runner.print_step(step)
            runner.keep_row(step)
            step, measure = runner.step(rate, repeat=True)
            if step.verdict == "interrupted":
                _interrupted(search, runner, step, checkpoint)
                return
            objectives = _objectives_for(sweep, step, runner)
            verdict, reasons = judge_step(measure, slo_failures(objectives, runner.last_report),
                                          max_error_rate=max_error_rate(objectives))
        step.verdict, step.reasons = verdict, reasons
        if verdict == "pass":
            runner.passed(step)
        runner.print_step(step)
        runner.keep_row(step)
        search.record(rate, verdict)
        checkpoint()


def _interrupted(search: Any, runner: StepRunner, step: Step, checkpoint: Callable[[], None]) -> None:
    """A step cut short (Ctrl-C): printed and kept in capacity.arrow like any step, marked interrupted."""
    search.stop("interrupted")
    runner.print_step(step)
    runner.keep_row(step)
    checkpoint()


def run_concurrency(levels: list[int], runner: StepRunner, sweep: Sweep, checkpoint: Callable[[], None]) -> str:
    """A closed-loop step per level (perf_analyzer's concurrency range), every level run; the stop reason."""
    from bench.capacity import judge_step

    sweep.load_kind = "concurrency"
    for clients in levels:
        step, measure = runner.step_clients(clients)
        if step.verdict == "interrupted":
            runner.print_step(step)
            runner.keep_row(step)
            checkpoint()
            return "interrupted"
        objectives = _objectives_for(sweep, step, runner)
        step.verdict, step.reasons = judge_step(measure, slo_failures(objectives, runner.last_report),
                                                max_error_rate=max_error_rate(objectives))
        runner.print_step(step)
        runner.keep_row(step)
        checkpoint()
    return "swept"


def parse_levels(text: str) -> list[int]:
    """``1,2,4,8`` or a range ``START:END[:STEP]`` (perf_analyzer's --concurrency-range; STEP default 1) →
    ascending client counts. ValueError with the reason."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end, stride = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
            if stride < 1 or end < start:
                raise ValueError
            levels = list(range(start, end + 1, stride))
        else:
            levels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"expected client counts like 1,2,4,8 or a range START:END[:STEP], got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"client counts must be whole numbers >= 1, got {text!r}")
    if len(levels) > 64:
        raise ValueError(f"{len(levels)} levels: at most 64 steps per sweep")
    return sorted(set(levels))


class StepRunner:
    """Runs one step (a real `bench run` through the runner), writes its report, prints its row."""

    def __init__(self, base: Any, settings: Settings, out_dir: Path, console: Any, sweep: Sweep, *,
                 quiet: bool, preflight: bool) -> None:
        self.base = base  # Prepared pointing at the (shared) target
        self.sweep = sweep  # steps are added as soon as their report is written
        self.settings = settings
        self.out_dir = out_dir
        self.quiet = quiet
        self.console = console
        self.n = 0
        self.preflight = preflight  # the Wallaroo preflight runs before the first step only
        self.last_report: Any = None
        self._repeated: set[float] = set()
        self._header = True
        self.baseline_ms: float | None = None  # the lowest service p50 seen (probe or step): the unloaded latency
        self.idle_ms: float | None = None  # the lowest client p99 of the probe or a passing step: "idle" below
        self.latency_s = 0.0  # the highest service p50 seen (s): with the SLO's limits, sizes the in-flight cap
        self.scrape_warned = False  # a [server_metrics] URL that never answered was said (once per sweep)

    def retried(self, rate: float) -> bool:
        return rate in self._repeated

    def probe(self) -> Step:
        from bench.rundata import MEASURED

        sc = self.base.scenario
        probe = probe_scenario(sc)
        report, facts = self._run(probe, self.out_dir / "probe.arrow")
        step = self._step(0, 0.0, report, facts, self.out_dir / "probe.arrow")
        step.verdict = "probe"
        if not step.summary["ok"] or step.summary["rps"] is None:
            from bench.errors import RunInvalid

            kinds = ", ".join(f"{n:,} {k}" for k, n in step.summary["errors_by_kind"].items()) or "no answers"
            raise RunInvalid(f"probe: no request succeeded ({kinds}); is the target up?")
        step.achieved_rps = float(step.summary["rps"])
        self._observe(report)
        self.idle_ms = report.run.histogram("latency", MEASURED, "ok").percentiles_ms((99,)).get(99)
        return step

    def step(self, rate: float, *, repeat: bool = False) -> tuple[Step, Any]:
        if repeat:
            self._repeated.add(rate)
        if self.n:
            self.cool_down()
        self.n += 1
        user_cap = bool(self.base.scenario.load.max_in_flight)
        cap = self.base.scenario.load.max_in_flight if user_cap else self.in_flight_cap(rate)
        sc = step_scenario(self.base.scenario, rate, duration_s=self.settings.step_s, warmup_s=self.settings.warmup_s,
                           max_in_flight=None if user_cap else cap)
        path = self.out_dir / f"step-{self.n:02d}-{rate:.4g}.arrow"
        report, facts = self._run(sc, path)
        self._observe(report)
        measure = _measure(report, rate, baseline_ms=self.baseline_ms, max_in_flight=cap, cap_set=user_cap)
        step = self._step(self.n, rate, report, facts, path)
        step.achieved_rps = measure.achieved_rps
        step.max_in_flight = cap
        self.sweep.steps.append(step)
        return step, measure

    def passed(self, step: Step) -> None:
        """A passing step's p99 is a latency the idle target meets: the cool-down's bar is the lowest such."""
        p99 = step.summary["latency_ms"]["p99"]
        if p99 is not None and (self.idle_ms is None or p99 < self.idle_ms):
            self.idle_ms = float(p99)

    def _observe(self, report: Any) -> None:
        from bench.rundata import MEASURED

        service = report.run.histogram("service", MEASURED, "ok")
        if not service.total:
            return
        p50 = service.percentiles_ms((50,))[50]
        self.baseline_ms = p50 if self.baseline_ms is None else min(self.baseline_ms, p50)
        self.latency_s = max(self.latency_s, p50 / 1000)

    def in_flight_cap(self, rate: float) -> int:
        """The step's in-flight cap when the scenario sets none. Little's law: in flight = rate × latency, so
        the cap is CAP_HEADROOM × rate × the longest of the SLO's latency limits and the service p50s seen so
        far (1 s before any is known), at least 64 and within the open-file limit. A fixed default (the rate,
        i.e. 1 s of latency) dropped the sends of any endpoint slower than that and called it saturated."""
        limits = [o.limit / 1000 for o in getattr(self.sweep.objectives, "objectives", ())
                  if o.key.endswith("_ms") and not o.is_lower_bound]
        latency_s = max([self.latency_s, *limits]) or 1.0
        return max(64, min(_fd_room(), math.ceil(CAP_HEADROOM * rate * latency_s)))

    def cool_down(self) -> None:
        """Wait until the target is idle again before the next step: one request at a time until one comes back
        within COOL_FACTOR × the idle p99 (the probe's or a passing step's), for at most COOL_MAX_S. A server
        keeps working on what the last step left queued (requests the client gave up on included); a step
        started behind that backlog measures it, so a sweep's answer would depend on the order of its steps."""
        if self.idle_ms is None:
            return
        bar = max(COOL_FACTOR * self.idle_ms, self.idle_ms + 1.0)
        limit = min(COOL_MAX_S, max(10.0, 3 * (self.settings.step_s + self.settings.warmup_s)))
        t0 = time.monotonic()
        probes, last = 0, None
        while True:
            probes += 1
            last = self._one_request()
            waited = time.monotonic() - t0
            if last is not None and last <= bar:
                break
            if waited >= limit:
                self.console.print(f"cool-down: the target was still busy after {waited:,.1f} s ({probes} probes, "
                                   f"last {_ms_text(last)} > {bar:,.4g} ms): the next step may start behind its "
                                   "backlog", markup=False)
                break
            time.sleep(COOL_PAUSE_S)
        idle = last is not None and last <= bar
        self.sweep.cooldowns.append({"before_step": self.n + 1, "waited_s": round(waited, 3), "probes": probes,
                               "last_ms": last, "bar_ms": round(bar, 3), "idle": idle})
        if probes > 1 and idle and not self.quiet:
            self.console.print(f"cool-down: idle again after {waited:,.1f} s ({probes} probes, {last:,.4g} ms)",
                               markup=False)

    def _one_request(self) -> float | None:
        """One closed-loop request: its latency (ms), None when it failed (a timeout: still busy)."""
        from bench.rundata import MEASURED
        from bench.runner import RunControl
        from bench.session import run_report

        sc = self.base.scenario
        one = sc.revised({"load": {"concurrency": 1, "requests": 1, "duration": "0s"},
                          **dict.fromkeys(("engine.pacing",) if sc.engine.http2
                                          else ("engine.pacing", "engine.connections"))})
        report, facts = run_report(replace(self.base, scenario=one), RunControl(preflight=False, raw_path=None))
        if facts.interrupted:  # Ctrl-C during the request: the sweep stops as between two steps
            raise KeyboardInterrupt
        ok = report.run.histogram("latency", MEASURED, "ok")
        return ok.max_us / 1000.0 if ok.total else None

    def step_clients(self, clients: int) -> tuple[Step, Any]:
        """One closed-loop step with ``clients`` clients; judged like a rate step whose target is what it did."""
        self.n += 1
        sc = clients_scenario(self.base.scenario, clients, duration_s=self.settings.step_s,
                              warmup_s=self.settings.warmup_s)
        path = self.out_dir / f"step-{self.n:02d}-c{clients}.arrow"
        report, facts = self._run(sc, path)
        step = self._step(self.n, 0.0, report, facts, path)
        step.clients = clients
        self.sweep.steps.append(step)
        return step, _measure(report, step.achieved_rps, shifted=False)  # closed loop: no offered rate to fall short of

    def keep_row(self, step: Step) -> None:
        """The judged step as a capacity-report row (client and, when scraped, server percentiles)."""
        from bench.report.capacity_report import step_from_report

        if self.last_report is None:
            return
        kind = "concurrency" if step.clients is not None else "rate"
        offered = float(step.clients) if step.clients is not None else step.target_rps
        self.sweep.rows.append(step_from_report(step.n, offered, self.last_report, verdict=step.verdict,
                                                reasons=step.reasons, load_kind=kind,
                                                achieved_rps=step.achieved_rps, path=step.report))

    def _run(self, sc: Any, path: Path) -> tuple[Any, Any]:
        from bench.progress import ProgressView
        from bench.report.writer import write_report
        from bench.runner import RunControl
        from bench.session import run_report, stamp_checks

        view = ProgressView(sc.load.warmup_s + sc.load.duration_s, warmup_s=sc.load.warmup_s,
                            enabled=not self.quiet)
        from bench.checkpoint import checkpoint_path, discard
        from bench.errors import BenchError

        # a kill -9 mid-step leaves the step's checkpoint: `bench recover OUT/step-….arrow` (docs/durability.md)
        path.parent.mkdir(parents=True, exist_ok=True)
        ctl = RunControl(progress=view.update, message=view.message, preflight=self.preflight, raw_path=None,
                         checkpoint_path=checkpoint_path(path))
        self.preflight = False  # once per sweep
        from bench.session import add_scrapes, server_metrics

        try:
            with server_metrics(self.base) as scraper:
                report, facts = run_report(replace(self.base, scenario=sc), ctl)
        except BenchError:  # a step judged invalid: nothing to recover
            discard(path)
            raise
        finally:
            view.close()
        if scraper is not None:  # a failing [server_metrics] URL is said once per sweep, noted in every step
            add_scrapes(scraper, report, self.base.scrubber, warn=not self.scrape_warned)
            self.scrape_warned = self.scrape_warned or "warning" in report.meta.extra.get("server_metrics", {})
        stamp_checks(report)  # as bench run stores them: the accounting, and why a step failed outright
        write_report(path, report)
        discard(path)
        self.last_report = report
        return report, facts

    def _step(self, n: int, rate: float, report: Any, facts: Any, path: Path) -> Step:
        from bench.report.summary import summarize
        from bench.session import unreachable_reason

        summary = summarize(report)
        unreachable = unreachable_reason(summary)
        if unreachable:
            from bench.errors import RunInvalid

            raise RunInvalid(f"target unreachable: {unreachable} (report {path})")
        verdict = "interrupted" if facts.interrupted else ""
        return Step(n, rate, verdict, ["interrupted"] if verdict else [], summary, _achieved(report)[0], str(path))

    def print_step(self, step: Step) -> None:
        """One fixed-width line per step, as it finishes (the header before the first)."""
        from rich.markup import escape

        from bench.report.summary import num_text

        if self._header:
            self._header = False
            self.console.print(f"{'step':>4} {'target/s':>10} {'achieved':>10} {'p50 ms':>8} {'p99 ms':>8} "
                               f"{'errors':>7}  {'verdict':<8} why", style="bold")
        colour = {"pass": "green", "fail": "red"}.get(step.verdict, "yellow")
        s = step.summary
        offered = f"{step.clients} clients" if step.clients is not None else f"{step.target_rps:,.4g}"
        self.console.print(
            f"{step.n:>4} {offered:>10} {step.achieved_rps:>10,.1f} "
            f"{num_text(s['latency_ms']['p50'], '>8.3g'):>8} {num_text(s['latency_ms']['p99'], '>8.3g'):>8} "
            f"{num_text(s['error_rate'], '>7.2%'):>7}  "
            f"[{colour}]{step.verdict:<8}[/] "
            f"{escape('; '.join(step.reasons) or 'SLO met')}", soft_wrap=True)


def _measure(report: Any, rate: float, *, baseline_ms: float | None = None, max_in_flight: int = 0,
             cap_set: bool = False, shifted: bool = True) -> Any:
    from bench.capacity import StepMeasure
    from bench.results import UNANSWERED_NAMES
    from bench.rundata import MEASURED

    run = report.run
    achieved, window = _shifted(run) if shifted else (None, None)
    if achieved is None or window is None:
        achieved, window = _achieved(report)
    tot = run.total(MEASURED)
    service = run.histogram("service", MEASURED, "ok")
    pct = service.percentiles_ms((50, 90, 99, 99.9)) if service.total else {}
    service_ms = {f"p{str(p).replace('.', '')}_ms": v for p, v in pct.items()}
    if service.total:
        service_ms["max_ms"] = service.max_us / 1000.0
    loop = run.histogram("loop_lag", MEASURED, "all")
    answered_errors = sum(e.count for e in run.errors if e.phase == MEASURED and e.kind not in UNANSWERED_NAMES)
    return StepMeasure(target_rps=rate, achieved_rps=achieved, window_s=window, requests=tot.requests,
                       error_rate=tot.errors / tot.requests if tot.requests else 0.0, dropped=tot.dropped,
                       generator_bound=report.meta.generator_bound,
                       generator_bound_reasons=tuple(report.meta.generator_bound_reasons),
                       cpu_saturated=float(report.meta.cpu_fraction or 0.0) >= 0.9, service_ms=service_ms,
                       loop_lag_ms=loop.max_us / 1000.0 if loop.total else 0.0,
                       answer_error_rate=answered_errors / tot.requests if tot.requests else 0.0,
                       baseline_ms=baseline_ms, max_in_flight=max_in_flight, cap_set=cap_set,
                       latency_growth_ms=_growth(run) if shifted else None, latency_sd_ms=_spread_ms(run))


def _spread_ms(run: Any) -> float:
    from bench.rundata import MEASURED

    ok = run.histogram("latency", MEASURED, "ok")
    if not ok.total:
        return 0.0
    pct = ok.percentiles_ms((16, 84))
    return max(0.0, float(pct[84] - pct[16]) / 2)


def _latency_s(run: Any, pct: float) -> float:
    from bench.rundata import MEASURED

    ok = run.histogram("latency", MEASURED, "ok")
    return ok.percentiles_ms((pct,))[pct] / 1000 if ok.total else 0.0


def _shifted(run: Any) -> tuple[float | None, float | None]:
    """Answers per second over the measured window shifted by the median latency (bench.capacity.shifted_rate),
    from the per-second series: each second's answers are its completions less the errors that were no answer
    (timeouts, refused or broken connections, in flight at the end: ``UNANSWERED_NAMES``, in their share of all
    errors), as ``RunData.rps`` counts them."""
    from bench.capacity import shifted_rate
    from bench.results import UNANSWERED_NAMES
    from bench.rundata import MEASURED

    series = run.series
    if not len(series):
        return None, None
    errors = sum(e.count for e in run.errors)
    unanswered = sum(e.count for e in run.errors if e.kind in UNANSWERED_NAMES)
    share = unanswered / errors if errors else 0.0
    answers = [float(r) - share * float(e) for r, e in zip(series.requests, series.errors, strict=True)]
    phase = run.phase(MEASURED)
    spans = list(run.done_span.values())
    first = min((a for a, _ in spans), default=float(min(series.second)))
    last = max((b for _, b in spans), default=float(max(series.second)) + 1.0)
    got = shifted_rate([int(x) for x in series.second], answers, start_s=phase.start_s, end_s=phase.end_s,
                       shift_s=_latency_s(run, 50), early_s=_latency_s(run, 1), first_s=first, last_s=last)
    return (None, None) if got is None else got


def _growth(run: Any) -> tuple[float, float | None, float] | None:
    """p50 (ms) of the ok answers in the first, middle and last thirds of the shifted window (by done time)."""
    from bench.capacity import growth_seconds
    from bench.hdr import Histogram
    from bench.rundata import MEASURED

    phase, shift = run.phase(MEASURED), _latency_s(run, 50)
    thirds = growth_seconds(phase.start_s + shift, phase.end_s + shift)
    if thirds is None:
        return None
    at = {int(sec): i for i, sec in enumerate(run.series.second)}

    def p50(secs: list[int]) -> float | None:
        h = Histogram.merged(run.series.histogram(at[s]) for s in secs if s in at)
        return h.percentiles_ms((50,))[50] if h.total else None

    first, middle, last = (p50(t) for t in thirds)
    if first is None or last is None:
        return None
    return first, middle, last


def _ms_text(ms: float | None) -> str:
    return "no answer" if ms is None else f"{ms:,.4g} ms"


def _fd_room() -> int:
    """In-flight requests this process can open connections for (the hard open-file limit less a margin)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_AUTO_CAP if hard == resource.RLIM_INFINITY else max(64, min(MAX_AUTO_CAP, int(hard) - 256))


def _achieved(report: Any) -> tuple[float, float]:
    """(completions per second, window s) over the measured phase, counted by DONE time (``RunData.rps``).

    Requests are assigned to phases by intended time and drained after the end, so the measured phase's request
    count equals the target rate even when the endpoint fell behind; completions per second do not.
    """
    from bench.report.model import MEASURED

    run = report.run
    return float(run.rps(MEASURED)), float(run.duration_s(MEASURED))


def default_objectives(summary: Mapping[str, Any]) -> Any:
    """p99 ≤ 5 × this step's p50, errors ≤ 1 %; None when the step had no ok answer (no p50 to derive from)."""
    from bench.report.slo import slo_from_mapping

    p50 = summary["latency_ms"]["p50"]
    if p50 is None:
        return None
    return slo_from_mapping({"p99_ms": round(max(5 * float(p50), 1.0), 3), "error_rate": 0.01}, "default")


def _objectives_for(sweep: Sweep, step: Step, runner: StepRunner) -> Any:
    """The objectives to judge ``step`` by: the given ones, else the default derived from the lowest step with an
    ok answer (fixed from then on); a step before any ok answer is judged on errors alone — a latency limit
    derived from a p50 that was never measured would be made up."""
    if sweep.objectives is None:
        sweep.objectives = default_objectives(step.summary)
        if sweep.objectives is None:
            from bench.report.slo import slo_from_mapping

            return slo_from_mapping({"error_rate": 0.01}, "default")
        sweep.objectives_source = "default (5 × the p50 of the lowest step with an ok answer)"
        runner.console.print(f"SLO: {objectives_text(sweep.objectives)} ({sweep.objectives_source})")
    return sweep.objectives


def objectives_text(objectives: Any) -> str:
    return ", ".join(f"{o.key} {'≥' if o.is_lower_bound else '≤'} {o.limit:g}" for o in objectives.objectives)


def slo_failures(objectives: Any, report: Any) -> list[Any]:
    from bench.capacity import Failure
    from bench.report.slo import check_slo

    return [Failure(r.key, r.allowed, r.describe()) for r in check_slo(objectives, report).failures]


def max_error_rate(objectives: Any) -> float:
    limits = [o.limit for o in objectives.objectives if o.key == "error_rate"]
    return limits[0] if limits else 0.01


def step_scenario(sc: Scenario, rate: float, *, duration_s: float, warmup_s: float,
                  max_in_flight: int | None = None) -> Scenario:
    """The scenario with its load replaced by one open-loop step at ``rate`` (arrival process kept), parsed again
    from its document so the typed load and the stored scenario copy cannot disagree. ``max_in_flight``: the
    step's cap when the scenario sets none (the sweep sizes it, StepRunner.in_flight_cap)."""
    cap = {"max_in_flight": max_in_flight} if max_in_flight else {}
    return sc.revised({"load": {**_load_source(sc), **cap, "rate": rate, "duration": f"{duration_s:g}s",
                                "warmup": f"{warmup_s:g}s"}})


def probe_scenario(sc: Scenario) -> Scenario:
    """The probe: one closed-loop client for PROBE_S. The scenario's open-loop keys (arrival, max_in_flight,
    engine.pacing, and engine.connections over HTTP/1.1) are for the rate steps; a closed loop refuses them, so
    the probe leaves them out."""
    closed = {k: v for k, v in _load_source(sc).items() if k not in ("arrival", "max_in_flight")}
    drop = ("engine.pacing",) if sc.engine.http2 else ("engine.pacing", "engine.connections")
    return sc.revised({"load": {**closed, "concurrency": 1, "duration": f"{PROBE_S:g}s"}, **dict.fromkeys(drop)})


def clients_scenario(sc: Scenario, clients: int, *, duration_s: float, warmup_s: float) -> Scenario:
    """The scenario with its load replaced by one closed-loop step of ``clients`` clients."""
    load = replace(sc.load, concurrency=clients, rate=0.0, stages=(), duration_s=duration_s, warmup_s=warmup_s,
                   requests=0, processes=1)
    raw = _load_source(sc)
    raw.pop("max_in_flight", None)
    raw.pop("arrival", None)
    source = {**sc.source, "load": {**raw, "concurrency": clients, "duration": f"{duration_s:g}s",
                                    "warmup": f"{warmup_s:g}s"}}
    return replace(sc, load=load, source=source)


def _load_source(sc: Scenario) -> dict[str, Any]:
    raw = sc.source.get("load", {})
    keep = ("arrival", "seed", "drain", "max_in_flight")
    return {k: v for k, v in raw.items() if k in keep} if isinstance(raw, Mapping) else {}

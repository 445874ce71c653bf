"""`bench capacity SCENARIO.toml`: how much load the endpoint takes within an SLO, and how many replicas a target needs.

A sweep of open-loop steps (the strategy is bench.capacity.CapacitySearch), each a real run through the runner with
its own report in the output directory, plus ``capacity.json``. The embedded emulator, when the scenario asks for
it, is started once for the whole sweep. Exit codes: 0 found · 1 even the lowest step failed · 2 input error ·
3 harness-bound before any failure (or target unreachable) · 130 interrupted (what was measured is written).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["register"]

PROBE_S = 2.0  # closed loop, one client: the safe start rate is half of what it achieves


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "capacity", help="find the highest load that meets an SLO, and the replicas a target rate needs",
        description="Sweep open-loop constant-rate steps (grow ×2, then bisect) against the scenario's target. "
                    "Each step writes a report; capacity.json summarises the sweep.")
    p.add_argument("scenario", help="scenario TOML file ([load] is replaced by the steps; [slo] is the objective)")
    p.add_argument("--slo", help="objectives, e.g. p99_ms=50,error_rate=0.01 (default: the scenario's [slo], else "
                                 "p99 ≤ 5 × the p50 of the lowest step and errors ≤ 1 %%)")
    p.add_argument("--start", type=float, help="first step's rate in req/s (default: half of what one closed-loop "
                                               "client achieves in a 2 s probe)")
    p.add_argument("--max", type=float, dest="max_rate", help="never step above this rate (req/s)")
    p.add_argument("--step", help="measured duration of each step (default 10s)")
    p.add_argument("--warmup", help="warm-up before each step's measurement (default 2s)")
    p.add_argument("--precision", help="stop bisecting when the bracket is within this (default 5%%)")
    p.add_argument("--target-rps", type=float, help="plan replicas for this rate (needs the endpoint's replicas: "
                                                    "[capacity] replicas, --replicas, or the embedded emulator's)")
    p.add_argument("--replicas", type=int, help="replicas the endpoint had during the sweep")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a scenario key, e.g. --set emulator.replicas=2")
    p.add_argument("--out", "-o", help="output directory (default reports/<UTC time>-<name>-capacity)")
    p.add_argument("--json", action="store_true", help="print the capacity summary as one JSON object on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress line")
    p.add_argument("--no-preflight", action="store_true", help="skip the Wallaroo deployment status check")
    p.set_defaults(func=_main)


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

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"step": self.n, "target_rps": round(self.target_rps, 3), "achieved_rps": round(self.achieved_rps, 3),
                "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"], "requests": s["requests"],
                "error_rate": s["error_rate"], "dropped": s["dropped"], "generator_bound": s["generator_bound"],
                "verdict": self.verdict, "reasons": self.reasons, "report": self.report}


@dataclass
class Sweep:
    steps: list[Step] = field(default_factory=list)
    probe: Step | None = None
    objectives: Any = None  # SloObjectives
    objectives_source: str = ""


def _main(args: argparse.Namespace) -> int:
    from bench.capacity import CapacitySearch
    from bench.errors import InputError

    sc, table = _load(args)
    settings = _settings(args, table, sc.file)
    objectives, source = _objectives(args, sc)
    from bench.runner import prepare

    prepared = prepare(replace(sc, tables={**sc.tables, "slo": {}}))  # the sweep judges the SLO itself
    out_dir = _out_dir(args, sc)
    console = _console(args)
    sweep = Sweep(objectives=objectives, objectives_source=source)
    search: CapacitySearch | None = None

    def checkpoint() -> None:  # capacity.json after every step: a crash or kill -9 still leaves the steps so far
        _write_summary(out_dir, _result(args, sc, prepared, settings, sweep, search, out_dir, interrupted=False)[2])

    with _shared_target(prepared, console) as base:
        runner = _StepRunner(base, settings, out_dir, args, console, sweep)
        try:
            start = settings.start
            if start is None:
                sweep.probe = runner.probe()
                from bench.capacity import start_from_probe

                start = start_from_probe(sweep.probe.achieved_rps)
                p50 = sweep.probe.summary['latency_ms']['p50'] or 0
                console.print(f"probe: one client did {sweep.probe.achieved_rps:,.1f} req/s "
                              f"(p50 {p50:.3g} ms) → start at {start:,.4g} req/s")
                if settings.max_rate is not None:
                    start = min(start, settings.max_rate)
            try:
                search = CapacitySearch(start, max_rate=settings.max_rate, precision=settings.precision)
            except ValueError as exc:
                raise InputError(str(exc), key="--start") from None
            _sweep(search, runner, sweep, checkpoint)
        except KeyboardInterrupt:
            if search is not None:
                search.stop("interrupted")
            for step in sweep.steps:
                if not step.verdict:  # its report was written, the verdict not yet
                    step.verdict, step.reasons = "interrupted", ["interrupted before the verdict"]
            console.print("[yellow]interrupted[/]: writing what was measured")
    interrupted = search is None or search.stop_reason == "interrupted"
    return _finish(args, console, sc, prepared, settings, sweep, search, out_dir, interrupted=interrupted)


def _sweep(search: Any, runner: _StepRunner, sweep: Sweep, checkpoint: Callable[[], None]) -> None:
    from bench.capacity import judge_step

    for rate in search:
        step, measure = runner.step(rate)
        if step.verdict == "interrupted":
            search.stop("interrupted")
            runner.print_step(step)
            return
        if sweep.objectives is None:  # default: p99 ≤ 5 × the p50 of the lowest step, errors ≤ 1 %
            sweep.objectives = _default_objectives(step.summary)
            sweep.objectives_source = "default (5 × the lowest step's p50)"
            runner.console.print(f"SLO: {_objectives_text(sweep.objectives)} ({sweep.objectives_source})")
        verdict, reasons = judge_step(measure, _slo_failures(sweep.objectives, runner.last_report),
                                      max_error_rate=_max_error_rate(sweep.objectives))
        if verdict == "harness" and not runner.retried(rate):
            step.verdict, step.reasons = "harness", [*reasons, "repeating the step once to rule out a hiccup"]
            runner.print_step(step)
            step, measure = runner.step(rate, repeat=True)
            if step.verdict == "interrupted":
                search.stop("interrupted")
                return
            verdict, reasons = judge_step(measure, _slo_failures(sweep.objectives, runner.last_report),
                                          max_error_rate=_max_error_rate(sweep.objectives))
        step.verdict, step.reasons = verdict, reasons
        runner.print_step(step)
        search.record(rate, verdict)
        checkpoint()


class _StepRunner:
    """Runs one step (a real `bench run` through the runner), writes its report, prints its row."""

    def __init__(self, base: Any, settings: Settings, out_dir: Path, args: argparse.Namespace, console: Any,
                 sweep: Sweep) -> None:
        self.base = base  # Prepared pointing at the (shared) target
        self.sweep = sweep  # steps are added as soon as their report is written
        self.settings = settings
        self.out_dir = out_dir
        self.args = args
        self.console = console
        self.n = 0
        self.preflight = not args.no_preflight
        self.last_report: Any = None
        self._repeated: set[float] = set()
        self._header = True

    def retried(self, rate: float) -> bool:
        return rate in self._repeated

    def probe(self) -> Step:
        sc = self.base.scenario
        load = replace(sc.load, concurrency=1, rate=0.0, stages=(), duration_s=PROBE_S, warmup_s=0.0, requests=0,
                       processes=1)
        source = {**sc.source, "load": {"concurrency": 1, "duration": f"{PROBE_S:g}s"}}
        report, facts = self._run(replace(sc, load=load, source=source), self.out_dir / "probe.arrow")
        step = self._step(0, 0.0, report, facts, self.out_dir / "probe.arrow")
        step.verdict = "probe"
        step.achieved_rps = float(step.summary["rps"])
        if not step.summary["ok"]:
            from bench.errors import RunInvalid

            kinds = ", ".join(f"{n:,} {k}" for k, n in step.summary["errors_by_kind"].items()) or "no answers"
            raise RunInvalid(f"probe: no request succeeded ({kinds}); is the target up?")
        return step

    def step(self, rate: float, *, repeat: bool = False) -> tuple[Step, Any]:
        from bench.capacity import step_scenario

        if repeat:
            self._repeated.add(rate)
        self.n += 1
        sc = step_scenario(self.base.scenario, rate, duration_s=self.settings.step_s, warmup_s=self.settings.warmup_s)
        path = self.out_dir / f"step-{self.n:02d}-{rate:.4g}.arrow"
        report, facts = self._run(sc, path)
        step = self._step(self.n, rate, report, facts, path)
        self.sweep.steps.append(step)
        return step, _measure(report, rate)

    def _run(self, sc: Any, path: Path) -> tuple[Any, dict[str, Any]]:
        import anyio

        from bench.progress import ProgressView
        from bench.report.build import build_report
        from bench.report.writer import write_report
        from bench.run_command import run_unwrapped, use_uvloop
        from bench.runner import RunControl, execute

        prepared = replace(self.base, scenario=sc)
        view = ProgressView(sc.load.warmup_s + sc.load.duration_s, warmup_s=sc.load.warmup_s,
                            enabled=not self.args.quiet)
        ctl = RunControl(progress=view.update, message=view.message, preflight=self.preflight, raw_path=None)
        self.preflight = False  # once per sweep
        try:
            run, facts = run_unwrapped(lambda: anyio.run(execute, prepared, ctl, backend="asyncio",
                                                         backend_options={"use_uvloop": use_uvloop(sc)}))
        finally:
            view.close()
        if self.base.scenario.source.get("target", {}).get("url") == "embedded":
            facts["url"] = "embedded"
        report = build_report(sc, run, facts)
        write_report(path, report)
        self.last_report = report
        return report, facts

    def _step(self, n: int, rate: float, report: Any, facts: dict[str, Any], path: Path) -> Step:
        from bench.report.summary import summarize
        from bench.run_command import unreachable_reason

        summary = summarize(report)
        unreachable = unreachable_reason(summary)
        if unreachable:
            from bench.errors import RunInvalid

            raise RunInvalid(f"target unreachable: {unreachable} (report {path})")
        verdict = "interrupted" if facts.get("interrupted") else ""
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
        self.console.print(
            f"{step.n:>4} {step.target_rps:>10,.4g} {step.achieved_rps:>10,.1f} "
            f"{num_text(s['latency_ms']['p50'], '>8.3g'):>8} {num_text(s['latency_ms']['p99'], '>8.3g'):>8} "
            f"{num_text(s['error_rate'], '>7.2%'):>7}  "
            f"[{colour}]{step.verdict:<8}[/] "
            f"{escape('; '.join(step.reasons) or 'SLO met')}", soft_wrap=True)


def _measure(report: Any, rate: float) -> Any:
    from bench.capacity import StepMeasure
    from bench.report.model import MEASURED

    achieved, window = _achieved(report)
    tot = report.run.total(MEASURED)
    service = report.run.histogram("service", MEASURED, "ok")
    pct = service.percentiles_ms((50, 90, 99, 99.9)) if service.total else {}
    service_ms = {f"p{str(p).replace('.', '')}_ms": v for p, v in pct.items()}
    if service.total:
        service_ms["max_ms"] = service.max_us / 1000.0
    return StepMeasure(target_rps=rate, achieved_rps=achieved, window_s=window, requests=tot.requests,
                       error_rate=tot.errors / tot.requests if tot.requests else 0.0, dropped=tot.dropped,
                       generator_bound=report.meta.generator_bound,
                       generator_bound_reasons=tuple(report.meta.generator_bound_reasons),
                       cpu_saturated=float(report.meta.cpu_fraction or 0.0) >= 0.9, service_ms=service_ms)


def _achieved(report: Any) -> tuple[float, float]:
    """(completions per second, window s) over the whole seconds inside the measured phase, counted by DONE time.

    Requests are assigned to phases by intended time and drained after the end, so the measured phase's request
    count equals the target rate even when the endpoint fell behind; completions per second do not.
    """
    import numpy as np

    from bench.report.model import MEASURED

    run = report.run
    phase = run.phase(MEASURED)
    lo, hi = math.ceil(phase.start_s - 1e-6), math.floor(phase.end_s + 1e-6)
    if hi - lo < 1:
        return float(run.rps(MEASURED)), float(phase.duration_s)
    sel = (run.series.second >= lo) & (run.series.second < hi)
    return float(np.sum(run.series.requests[sel])) / (hi - lo), float(hi - lo)


# --- inputs ---------------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[Any, Mapping[str, Any]]:
    """The scenario with --set applied, and its optional [capacity] table (which bench.scenario does not know)."""
    from bench.errors import InputError
    from bench.scenario import apply_overrides, parse_scenario, read_scenario_file

    file = args.scenario
    path = Path(file)
    doc = apply_overrides(read_scenario_file(file), args.overrides, file)
    table = doc.pop("capacity", {})
    if not isinstance(table, Mapping):
        raise InputError("expected a table", file=file, key="capacity")
    load = doc.setdefault("load", {})
    if isinstance(load, dict) and not any(k in load for k in ("concurrency", "rate", "stages")):
        load["rate"] = 1.0  # placeholder: every step sets its own rate
    return parse_scenario(doc, file=file, base_dir=path.resolve().parent), table


_CAPACITY_KEYS = ("replicas", "target_rps", "start", "max", "step", "warmup", "precision")


def _settings(args: argparse.Namespace, table: Mapping[str, Any], file: str) -> Settings:
    from bench.capacity import parse_precision
    from bench.errors import InputError
    from bench.units import parse_duration

    for key in table:
        if key not in _CAPACITY_KEYS:
            raise InputError(f"unknown key (known: {', '.join(_CAPACITY_KEYS)})", file=file, key=f"capacity.{key}")

    def number(flag: float | None, key: str, integer: bool = False) -> float | None:
        value: Any = flag
        where = f"--{key.replace('_', '-')}"
        if flag is None:
            where, value = f"capacity.{key}", table.get(key)
            if value is None:
                return None
        bad = isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int))
        if bad or not math.isfinite(value) or value <= 0:
            kind = "a whole number" if integer else "a number"
            raise InputError(f"expected {kind} > 0, got {value!r}", file=None if flag is not None else file,
                             key=where)
        return float(value)

    def duration(flag: str | None, key: str, default: float) -> float:
        raw: object = flag if flag is not None else table.get(key, default)
        try:
            value = parse_duration(raw)
        except ValueError as exc:
            raise InputError(str(exc), file=None if flag is not None else file,
                             key=f"--{key}" if flag is not None else f"capacity.{key}") from None
        return value

    step_s = duration(args.step, "step", 10.0)
    if step_s <= 0:
        raise InputError("a step must last > 0 s", key="--step")
    precision_raw: str | float | None = args.precision if args.precision is not None else table.get("precision")
    replicas = number(args.replicas, "replicas", integer=True)
    start = number(args.start, "start")
    max_rate = number(args.max_rate, "max")
    if start is not None and max_rate is not None and start > max_rate:
        raise InputError(f"the start rate {start:g} is above --max {max_rate:g}", key="--start")
    return Settings(start=start, max_rate=max_rate, step_s=step_s, warmup_s=duration(args.warmup, "warmup", 2.0),
                    precision=parse_precision(precision_raw) if precision_raw is not None else 0.05,
                    target_rps=number(args.target_rps, "target_rps"),
                    replicas=int(replicas) if replicas is not None else None)


def _objectives(args: argparse.Namespace, sc: Any) -> tuple[Any, str]:
    from bench.report.slo import slo_from_mapping

    if args.slo:
        from bench.capacity import parse_slo_flag

        return slo_from_mapping(parse_slo_flag(args.slo), "--slo"), "--slo"
    if sc.tables["slo"]:
        return slo_from_mapping(sc.tables["slo"], sc.file), f"{sc.file} [slo]"
    return None, ""


def _default_objectives(summary: Mapping[str, Any]) -> Any:
    from bench.report.slo import slo_from_mapping

    p50 = float(summary["latency_ms"]["p50"] or 0.0)  # None: no ok request in the probe
    return slo_from_mapping({"p99_ms": round(max(5 * p50, 1.0), 3), "error_rate": 0.01}, "default")


def _objectives_text(objectives: Any) -> str:
    return ", ".join(f"{o.key} {'≥' if o.is_lower_bound else '≤'} {o.limit:g}" for o in objectives.objectives)


def _slo_failures(objectives: Any, report: Any) -> list[Any]:
    from bench.capacity import Failure
    from bench.report.slo import check_slo

    return [Failure(r.key, r.allowed, r.describe()) for r in check_slo(objectives, report).failures]


def _max_error_rate(objectives: Any) -> float:
    limits = [o.limit for o in objectives.objectives if o.key == "error_rate"]
    return limits[0] if limits else 0.01


def _out_dir(args: argparse.Namespace, sc: Any) -> Path:
    if args.out:
        return Path(args.out)
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path

    return default_report_path(sc.report.dir, f"{sc.name}-capacity", datetime.now(UTC)).with_suffix("")


def _console(args: argparse.Namespace) -> Any:
    from rich.console import Console

    return Console(stderr=bool(args.json), highlight=False)


@contextlib.contextmanager
def _shared_target(prepared: Any, console: Any) -> Iterator[Any]:
    """The Prepared every step reuses: for url = 'embedded', pointed at ONE emulator started for the sweep."""
    sc = prepared.scenario
    if not sc.target.embedded:
        yield prepared
        return
    from bench.emulator.embedded import EmbeddedEmulator
    from bench.runner import EMBEDDED_PLACEHOLDER, TOKEN_PATH

    with EmbeddedEmulator(prepared.emulator_config) as emu:
        console.print(f"embedded emulator at {emu.base_url} (shared by every step)")
        url = emu.base_url if sc.target.kind == "ubiops" else emu.wallaroo_url
        shared = replace(sc, target=replace(sc.target, url=url), tables={**sc.tables, "emulator": {}})
        out = replace(prepared, scenario=shared)
        if out.preflight_config is not None and out.preflight_config.api_url == EMBEDDED_PLACEHOLDER:
            out.preflight_config = replace(out.preflight_config, api_url=emu.base_url)
        if out.auth_config is not None and out.auth_config.uses_keycloak and out.auth_config.token_url is None:
            out.auth_config = out.auth_config.with_token_url(f"{emu.base_url}{TOKEN_PATH}")
        if out.ubiops_config is not None:
            out.ubiops_config = out.ubiops_config.with_endpoint(url, prepared.emulator_config.ubiops_token)
        yield out


# --- result ---------------------------------------------------------------------------------------------------


def _model_capacity(prepared: Any) -> float | None:
    """Ground truth of the embedded emulator's capacity model for the scenario's mean request size."""
    cfg = prepared.emulator_config
    if cfg is None or not prepared.bodies:
        return None
    rows = sum(b.rows for b in prepared.bodies) / len(prepared.bodies)
    mean_s = cfg.latency_ms / 1e3 + cfg.per_row_us / 1e6 * rows  # as ServiceModel.mean_service_s (jitter mean 1)
    return cfg.replicas / mean_s if mean_s > 0 else None


def _finish(args: argparse.Namespace, console: Any, sc: Any, prepared: Any, settings: Settings, sweep: Sweep,
            search: Any, out_dir: Path, *, interrupted: bool) -> int:
    """Write capacity.json, print the verdict lines (and the JSON with --json); the exit code."""
    import orjson

    code, lines, result = _result(args, sc, prepared, settings, sweep, search, out_dir, interrupted=interrupted)
    _write_summary(out_dir, result)
    for line in lines:
        console.print(line, soft_wrap=True)
    console.print(f"reports: {out_dir}/ (capacity.json)")
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    return code


def _write_summary(out_dir: Path, result: Mapping[str, Any]) -> None:
    import orjson

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".capacity.json.tmp"
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(out_dir / "capacity.json")


def _result(args: argparse.Namespace, sc: Any, prepared: Any, settings: Settings, sweep: Sweep, search: Any,
            out_dir: Path, *, interrupted: bool) -> tuple[int, list[str], dict[str, Any]]:
    """(exit code, verdict lines, the capacity.json document) of the sweep so far."""
    from bench.capacity import plan_replicas
    from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO

    capacity = search.last_pass if search is not None else None
    first_fail = search.first_fail if search is not None else None
    reason = "interrupted" if interrupted else (search.stop_reason if search is not None else None)
    reason = reason or "running"
    if interrupted:
        code = EXIT_INTERRUPTED
    elif reason == "lowest_failed":
        code = EXIT_SLO
    elif reason == "harness" and first_fail is None:
        code = EXIT_INVALID
    else:
        code = EXIT_OK
    replicas = settings.replicas  # --replicas, else the embedded emulator's, else [capacity] replicas
    if args.replicas is None and prepared.emulator_config is not None:
        replicas = prepared.emulator_config.replicas
    lines = [_headline(reason, capacity, first_fail, settings)]
    plan: dict[str, Any] | None = None
    if settings.target_rps is not None and capacity:
        if replicas is not None:
            rp = plan_replicas(settings.target_rps, capacity, replicas)
            plan = {"target_rps": rp.target_rps, "replicas": rp.replicas,
                    "per_replica_rps": round(rp.per_replica_rps, 3), "replicas_needed": rp.replicas_needed,
                    "utilisation": round(rp.utilisation, 4),
                    "assumption": "per-replica throughput is linear in replicas", "note": rp.note()}
            lines.append(rp.note())
        else:
            lines.append(f"target {settings.target_rps:,.4g} req/s is {settings.target_rps / capacity:.2f} × the "
                         "measured capacity; set [capacity] replicas = N (or --replicas) for a replica count")
    model = _model_capacity(prepared)
    if model is not None:
        lines.append(f"emulator model capacity (slots / mean service time): {model:,.1f} req/s"
                     + (f"; found {capacity / model:.0%} of it" if capacity else ""))
    result: dict[str, Any] = {
        "scenario": sc.name, "capacity_rps": capacity, "first_fail_rps": first_fail, "stop_reason": reason,
        "exit_code": code, "precision": settings.precision, "step_s": settings.step_s, "warmup_s": settings.warmup_s,
        "slo": _objectives_text(sweep.objectives) if sweep.objectives is not None else None,
        "slo_source": sweep.objectives_source, "replicas": replicas, "plan": plan, "model_capacity_rps": model,
        "probe": sweep.probe.to_dict() if sweep.probe is not None else None,
        "steps": [s.to_dict() for s in sweep.steps], "out_dir": str(out_dir), "message": lines[0],
    }
    return code, lines, result


def _headline(reason: str | None, capacity: float | None, first_fail: float | None, settings: Settings) -> str:
    cap = f"{capacity:,.4g} req/s" if capacity else "none"
    fail = f"{first_fail:,.4g} req/s" if first_fail else "none"
    if reason == "bracketed":
        return f"capacity: {cap} met the SLO; {fail} did not (within {settings.precision:.0%})"
    if reason == "lowest_failed":
        return f"capacity: none — even the lowest step ({fail}) failed the SLO"
    if reason == "max_rate":
        return f"capacity: ≥ {cap} (--max reached without a failure)"
    if reason == "harness":
        if first_fail is None:
            return (f"capacity: above {cap} — the load generator reached its limit before the endpoint failed "
                    "(use more processes or hosts)")
        return f"capacity: {cap} (first failure {fail}); bisection stopped at a generator-bound step"
    if reason == "interrupted":
        return f"interrupted: highest passing step so far {cap}, first failure {fail}"
    return f"capacity: {cap}; first failure {fail} (stopped: {reason})"

"""`bench capacity SCENARIO.toml`: how much load the endpoint takes within an SLO, and how many replicas a target needs.

A sweep of open-loop steps (the strategy is bench.capacity.CapacitySearch), each a real run through the runner with
its own report in the output directory, plus ``capacity.json``. The embedded emulator, when the scenario asks for
it, is started once for the whole sweep. Exit codes: 0 found · 1 even the lowest step failed · 2 input error ·
3 harness-bound before any failure (or target unreachable) · 130 interrupted (what was measured is written).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import sweep as sweep_steps
from bench.outpath import output_file
from bench.sweep import Settings, StepRunner, Sweep, run_sweep

__all__ = ["register"]


def register(sub: Any) -> None:
    from bench.commands.argtypes import not_empty

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
    p.add_argument("--concurrency", metavar="LEVELS",
                   help="instead of the rate search, a closed-loop step per client count: 1,2,4,8 or a range "
                        "START:END[:STEP] (like perf_analyzer's --concurrency-range); every level is run")
    p.add_argument("--html", metavar="PATH", help="also write the capacity curve (latency–throughput, knee, "
                                                  "highest load under the SLO) as a self-contained HTML page")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a scenario key, e.g. --set emulator.replicas=2")
    p.add_argument("--out", "-o", type=not_empty, help="output directory (default reports/<UTC time>-<name>-capacity)")
    p.add_argument("--json", action="store_true", help="print the capacity summary as one JSON object on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress line")
    p.add_argument("--no-preflight", action="store_true", help="skip the Wallaroo deployment status check")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from bench.capacity import CapacitySearch
    from bench.errors import InputError

    sc = _load(args)
    settings = _settings(args, sc.capacity)
    objectives, source = _objectives(args, sc)
    ignored: list[str] = []
    if args.concurrency is None:
        objectives, ignored = _rate_objectives(objectives)
    from bench.session import prepare, resolved_target

    prepared = prepare(replace(sc, slo=None))  # the sweep judges the SLO itself
    out_dir = _out_dir(args, sc)
    from bench.outpath import check_output_dir, check_report_path

    check_output_dir(out_dir)  # before any load: a bad --out must not cost the sweep
    if args.html:
        check_report_path(Path(args.html), flag="--html")  # nor a FIFO, device or directory as --html
    console = _console(args)
    sweep = Sweep(objectives=objectives, objectives_source=source, ignored=ignored)
    if ignored:
        console.print(f"SLO: {', '.join(ignored)} ignored ({source}): a rate sweep sets the rate itself, so a "
                      "throughput floor is not an objective here — the capacity found is the rate", markup=False)
    search: CapacitySearch | None = None

    def checkpoint() -> None:  # capacity.json after every step: a crash or kill -9 still leaves the steps so far
        _write_summary(out_dir, _result(args, sc, prepared, settings, sweep, search, out_dir, interrupted=False,
                                        running=True)[2])

    levels = _levels(args)

    def checkpoint_all() -> None:
        _write_capacity_report(out_dir, sc, sweep, "running")
        if levels is None:
            checkpoint()

    with resolved_target(prepared, lambda m: console.print(m, markup=False)) as base:
        runner = StepRunner(base, settings, out_dir, console, sweep, quiet=bool(args.quiet),
                            preflight=not args.no_preflight)
        if levels is not None:
            return _concurrency(args, console, sc, prepared, sweep, runner, levels, out_dir, checkpoint_all)
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
            run_sweep(search, runner, sweep, checkpoint_all)
        except KeyboardInterrupt:
            if search is not None:
                search.stop("interrupted")
            for step in sweep.steps:
                if not step.verdict:  # its report was written, the verdict not yet
                    step.verdict, step.reasons = "interrupted", ["interrupted before the verdict"]
            console.print("[yellow]interrupted[/]: writing what was measured")
    interrupted = search is None or search.stop_reason == "interrupted"
    return _finish(args, console, sc, prepared, settings, sweep, search, out_dir, interrupted=interrupted)


# --- inputs ---------------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Any:
    """The scenario with --set applied (its optional [capacity] table typed by the scenario reader)."""
    from bench.scenario import apply_overrides, parse_scenario, read_scenario_file

    file = args.scenario
    path = Path(file)
    doc = apply_overrides(read_scenario_file(file), args.overrides, file)
    load = doc.setdefault("load", {})
    if isinstance(load, dict) and not any(k in load for k in ("concurrency", "rate", "stages")):
        load["rate"] = 1.0  # placeholder: every step sets its own rate
    return parse_scenario(doc, file=file, base_dir=path.resolve().parent)


def _settings(args: argparse.Namespace, table: Any) -> Settings:
    """Flags win over the scenario's [capacity] table (a CapacityConfig, or None)."""
    from bench.capacity import parse_precision
    from bench.config.capacity import CapacityConfig
    from bench.errors import InputError
    from bench.units import parse_duration

    cfg: CapacityConfig = table or CapacityConfig()

    def number(flag: float | None, key: str, integer: bool = False) -> float | None:
        if flag is None:
            value = getattr(cfg, key)
            return None if value is None else float(value)
        bad = isinstance(flag, bool) or not isinstance(flag, int | float) or (integer and not isinstance(flag, int))
        if bad or not math.isfinite(flag) or flag <= 0:
            kind = "a whole number" if integer else "a number"
            raise InputError(f"expected {kind} > 0, got {flag!r}", key=f"--{key.replace('_', '-')}")
        return float(flag)

    def duration(flag: str | None, key: str, default: float) -> float:
        if flag is None:
            value = getattr(cfg, f"{key}_s")
            return default if value is None else float(value)
        try:
            return parse_duration(flag)
        except ValueError as exc:
            raise InputError(str(exc), key=f"--{key}") from None

    step_s = duration(args.step, "step", 10.0)
    if step_s <= 0:
        raise InputError("a step must last > 0 s", key="--step")
    replicas = number(args.replicas, "replicas", integer=True)
    start = number(args.start, "start")
    max_rate = number(args.max_rate, "max")
    if start is not None and max_rate is not None and start > max_rate:
        raise InputError(f"the start rate {start:g} is above --max {max_rate:g}", key="--start")
    precision = parse_precision(args.precision) if args.precision is not None else cfg.precision
    return Settings(start=start, max_rate=max_rate, step_s=step_s, warmup_s=duration(args.warmup, "warmup", 2.0),
                    precision=precision if precision is not None else 0.05,
                    target_rps=number(args.target_rps, "target_rps"),
                    replicas=int(replicas) if replicas is not None else None)


def _objectives(args: argparse.Namespace, sc: Any) -> tuple[Any, str]:
    from bench.report.slo import slo_from_mapping

    if args.slo:
        from bench.capacity import parse_slo_flag

        return slo_from_mapping(parse_slo_flag(args.slo), "--slo"), "--slo"
    if sc.slo is not None:
        return sc.slo, f"{sc.file} [slo]"
    return None, ""


def _rate_objectives(objectives: Any) -> tuple[Any, list[str]]:
    """The objectives without the throughput floors (min_rps, min_rows_per_s), and the keys left out. A rate
    step's throughput is the rate it was given (or short of it: then the step saturated, judged as such); a floor
    on it failed every step below the floor and made the sweep report "capacity: none"."""
    from bench.capacity import THROUGHPUT_KEYS

    if objectives is None:
        return None, []
    keep = tuple(o for o in objectives.objectives if o.key not in THROUGHPUT_KEYS)
    dropped = [o.key for o in objectives.objectives if o.key in THROUGHPUT_KEYS]
    if not dropped:
        return objectives, []
    return (replace(objectives, objectives=keep) if keep else None), dropped


def _out_dir(args: argparse.Namespace, sc: Any) -> Path:
    if args.out:
        return Path(args.out)
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path

    return default_report_path(sc.report.dir, f"{sc.name}-capacity", datetime.now(UTC)).with_suffix("")


def _console(args: argparse.Namespace) -> Any:
    from bench.report.console import make_console

    return make_console(stderr=bool(args.json), highlight=False)


# --- result ---------------------------------------------------------------------------------------------------


def _model_capacity(prepared: Any) -> float | None:
    """Ground truth of the embedded emulator's capacity model for the scenario's mean request size."""
    cfg = prepared.emulator_config
    if cfg is None or not prepared.bodies:
        return None
    bodies = prepared.bodies
    per_body = getattr(bodies, "rows", None)  # a LazyBodies knows its row counts: iterating it would encode all
    rows = sum(per_body if isinstance(per_body, list) else (b.rows for b in bodies)) / len(bodies)
    mean_s = cfg.latency_ms / 1e3 + cfg.per_row_us / 1e6 * rows  # as ServiceModel.mean_service_s (jitter mean 1)
    return cfg.replicas / mean_s if mean_s > 0 else None


def _finish(args: argparse.Namespace, console: Any, sc: Any, prepared: Any, settings: Settings, sweep: Sweep,
            search: Any, out_dir: Path, *, interrupted: bool) -> int:
    """Write capacity.json, print the verdict lines (and the JSON with --json); the exit code."""

    code, lines, result = _result(args, sc, prepared, settings, sweep, search, out_dir, interrupted=interrupted)
    _publish(args, console, sc, sweep, out_dir, result, lines)
    return code


def _publish(args: argparse.Namespace, console: Any, sc: Any, sweep: Sweep, out_dir: Path,
             result: Mapping[str, Any], lines: list[str]) -> None:
    """capacity.json and capacity.arrow (and --html), the verdict lines, and the JSON with --json."""
    import orjson

    _write_summary(out_dir, result)
    cap_path = _write_capacity_report(out_dir, sc, sweep, str(result["stop_reason"]), html=args.html,
                                      verdict=lines)
    for line in lines:
        console.print(line, soft_wrap=True)
    console.print(f"reports: {out_dir}/ (capacity.json, {cap_path.name})" + (f"; curve: {args.html}" if args.html
                                                                             else ""))
    _append_step_summary(cap_path)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode() + "\n")


def _append_step_summary(cap_path: Path) -> None:
    """The sweep's Markdown (as `bench report capacity.arrow` writes it) appended to $GITHUB_STEP_SUMMARY when
    set; a summary file that cannot be written is a warning (the sweep's reports stand)."""
    from bench.report.capacity_report import read_capacity_report
    from bench.report.capacity_views import capacity_markdown
    from bench.report.markdown import append_step_summary_or_warn

    append_step_summary_or_warn(lambda: capacity_markdown(read_capacity_report(cap_path)))


def _levels(args: argparse.Namespace) -> list[int] | None:
    if args.concurrency is None:
        return None
    from bench.errors import InputError

    try:
        return sweep_steps.parse_levels(args.concurrency)
    except ValueError as exc:
        raise InputError(str(exc), key="--concurrency") from None


def _write_capacity_report(out_dir: Path, sc: Any, sweep: Sweep, stop_reason: str, *,
                           html: str | None = None, verdict: Sequence[str] = ()) -> Path:
    """DIR/capacity.arrow: every judged step in one Arrow file (bench report draws its curve); --html too.
    ``verdict``: the lines the sweep printed (capacity, replica plan, model), kept for the Markdown and HTML."""
    from bench.report.capacity_report import read_capacity_report, write_capacity_report

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "capacity.arrow"
    slo = sweep_steps.objectives_text(sweep.objectives) if sweep.objectives is not None else ""
    write_capacity_report(path, sweep.rows, scenario_name=sc.name, load_kind=sweep.load_kind, slo=slo,
                          stop_reason=stop_reason, extra={"slo_source": sweep.objectives_source,
                                                          "verdict": list(verdict)})
    if html:
        from bench.report.capacity_views import capacity_html

        page = output_file(html, flag="--html")  # a link's target (bench.outpath); the temp file beside it
        tmp = page.with_name(f".{page.name}.tmp")
        tmp.write_text(capacity_html(read_capacity_report(path)), encoding="utf-8")
        tmp.replace(page)
    return path


def _concurrency(args: argparse.Namespace, console: Any, sc: Any, prepared: Any, sweep: Sweep, runner: StepRunner,
                 levels: list[int], out_dir: Path, checkpoint: Any) -> int:
    """--concurrency: every level run; capacity = completions/s of the highest client count that met the SLO."""

    from bench.capacity import highest_pass
    from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO

    try:
        reason = sweep_steps.run_concurrency(levels, runner, sweep, checkpoint)
    except KeyboardInterrupt:
        reason = "interrupted"
        console.print("[yellow]interrupted[/]: writing what was measured")
    rows = sweep.rows
    best_i = highest_pass([r.offered for r in rows], [r.verdict for r in rows]) if rows else None
    best = rows[best_i] if best_i is not None else None
    model = _model_capacity(prepared)
    if best is not None:
        head = (f"highest load under the SLO: {int(best.offered)} clients, {best.achieved_rps or 0:,.1f} req/s "
                f"(p99 {best.p99_ms or 0:.3g} ms)")
    else:
        head = "no concurrency level met the SLO"
    lines = [head]
    if model is not None:
        lines.append(f"emulator model capacity (slots / mean service time): {model:,.1f} req/s"
                     + (f"; the highest passing level did {(best.achieved_rps or 0) / model:.0%} of it"
                        if best is not None else ""))
    never_ok = _never_ok(sweep)
    if never_ok is not None and reason != "interrupted":
        head = f"run failed: no level had a successful answer ({never_ok})"
        lines = [head]
    code = (EXIT_INTERRUPTED if reason == "interrupted" else EXIT_OK if best is not None
            else EXIT_INVALID if never_ok is not None else EXIT_SLO)
    result: dict[str, Any] = {
        "scenario": sc.name, "load_kind": "concurrency", "levels": levels, "stop_reason": reason, "exit_code": code,
        "capacity_rps": best.achieved_rps if best is not None else None,
        "capacity_clients": int(best.offered) if best is not None else None, "model_capacity_rps": model,
        "slo": sweep_steps.objectives_text(sweep.objectives) if sweep.objectives is not None else None,
        "slo_source": sweep.objectives_source, "steps": [s.to_dict() for s in sweep.steps],
        "out_dir": str(out_dir), "message": head}
    _publish(args, console, sc, sweep, out_dir, result, lines)
    return code


def _write_summary(out_dir: Path, result: Mapping[str, Any]) -> None:
    import orjson

    out_dir.mkdir(parents=True, exist_ok=True)
    target = output_file(out_dir / "capacity.json", flag="--out")
    tmp = target.with_name(".capacity.json.tmp")
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(target)


def _result(args: argparse.Namespace, sc: Any, prepared: Any, settings: Settings, sweep: Sweep, search: Any,
            out_dir: Path, *, interrupted: bool, running: bool = False) -> tuple[int, list[str], dict[str, Any]]:
    """(exit code, verdict lines, the capacity.json document) of the sweep so far. ``running``: written mid-sweep,
    so the document claims no ending: ``stop_reason`` "running" and ``exit_code`` null until the sweep ends (a
    sweep killed outright leaves it so, never a finished-looking exit code 0)."""
    from bench.capacity import plan_replicas
    from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO

    offered = search.last_pass if search is not None else None
    capacity = _sustained(sweep, offered)
    first_fail = search.first_fail if search is not None else None
    reason = "interrupted" if interrupted else (search.stop_reason if search is not None else None)
    reason = "running" if running else reason or "running"
    never_ok = _never_ok(sweep)
    if interrupted:
        code = EXIT_INTERRUPTED
    elif never_ok is not None:
        code = EXIT_INVALID  # a target that never answered well is no capacity of 0, as bench run's exit 3
    elif reason == "lowest_failed":
        code = EXIT_SLO
    elif reason == "harness" and first_fail is None:
        code = EXIT_INVALID
    else:
        code = EXIT_OK
    replicas = settings.replicas  # --replicas, else the embedded emulator's, else [capacity] replicas
    if args.replicas is None and prepared.emulator_config is not None:
        replicas = prepared.emulator_config.replicas
    lines = [_headline(reason, capacity, offered, first_fail, settings)]
    if never_ok is not None and not interrupted:
        lines = [f"run failed: no step had a successful answer ({never_ok})"]
    # only a lower bound when the sweep stopped before any failure: --max reached, or the harness's limit
    lower_bound = reason in ("max_rate", "harness", "max_steps", "interrupted", "running") and first_fail is None
    plan: dict[str, Any] | None = None
    if settings.target_rps is not None and capacity:
        if replicas is not None:
            rp = plan_replicas(settings.target_rps, capacity, replicas, lower_bound=lower_bound)
            plan = {"target_rps": rp.target_rps, "replicas": rp.replicas,
                    "per_replica_rps": round(rp.per_replica_rps, 3), "replicas_needed": rp.replicas_needed,
                    "utilisation": round(rp.utilisation, 4), "upper_bound": lower_bound,
                    "assumption": "per-replica throughput is linear in replicas", "note": rp.note()}
            lines.append(rp.note())
        elif lower_bound:
            lines.append(f"target {settings.target_rps:,.4g} req/s is at most {settings.target_rps / capacity:.2f} "
                         "× the measured capacity (only a lower bound); set [capacity] replicas = N (or "
                         "--replicas) for a replica count")
        else:
            lines.append(f"target {settings.target_rps:,.4g} req/s is {settings.target_rps / capacity:.2f} × the "
                         "measured capacity; set [capacity] replicas = N (or --replicas) for a replica count")
    elif settings.target_rps is not None and not interrupted and never_ok is None:
        lines.append("no replica plan: no step met the SLO" if reason == "lowest_failed" else
                     "no replica plan: no step met the SLO before the sweep stopped")
    model = _model_capacity(prepared)
    if model is not None:
        lines.append(f"emulator model capacity (slots / mean service time): {model:,.1f} req/s"
                     + (f"; found {capacity / model:.0%} of it" if capacity else ""))
    result: dict[str, Any] = {
        "scenario": sc.name, "capacity_rps": capacity, "capacity_offered_rps": offered,
        "capacity_is_lower_bound": bool(capacity) and lower_bound, "first_fail_rps": first_fail,
        "stop_reason": reason, "slo_ignored": sweep.ignored, "cooldowns": sweep.cooldowns,
        "exit_code": None if running else code, "precision": settings.precision, "step_s": settings.step_s,
        "warmup_s": settings.warmup_s,
        "slo": sweep_steps.objectives_text(sweep.objectives) if sweep.objectives is not None else None,
        "slo_source": sweep.objectives_source, "replicas": replicas, "plan": plan, "model_capacity_rps": model,
        "probe": sweep.probe.to_dict() if sweep.probe is not None else None,
        "steps": [s.to_dict() for s in sweep.steps], "out_dir": str(out_dir), "message": lines[0],
    }
    return code, lines, result


def _never_ok(sweep: Sweep) -> str | None:
    """The first step's failure reason when no step of the sweep had a successful answer, else None."""
    steps = [s for s in sweep.steps if s.verdict != "probe"]
    if not steps or any(s.summary["ok"] for s in steps):
        return None
    return str(steps[0].summary.get("failed") or "no successful answer")


def _sustained(sweep: Sweep, offered: float | None) -> float | None:
    """The capacity: min(offered, achieved) of the passing step at the highest passing rate. A step may pass
    with its answers a little short of the rate (the 3 % saturation slack); the endpoint then did not sustain
    the offered rate, and a replica plan built on it would be short."""
    if offered is None:
        return None
    done = [s.achieved_rps for s in sweep.steps if s.verdict == "pass" and s.target_rps == offered]
    return min(offered, max(done)) if done else offered


def _headline(reason: str | None, capacity: float | None, offered: float | None, first_fail: float | None,
              settings: Settings) -> str:
    cap = f"{capacity:,.4g} req/s" if capacity else "none"
    if capacity and offered and capacity < 0.99 * offered:  # (a pass's answers may fall 3 % short)
        cap += f" (answered at the {offered:,.4g} req/s step)"
    fail = f"{first_fail:,.4g} req/s" if first_fail else "none"
    if reason == "bracketed":
        return f"capacity: {cap} met the SLO; {fail} did not (within {settings.precision:.0%})"
    if reason == "lowest_failed":
        return f"capacity: none — even the lowest step ({fail}) failed the SLO"
    if reason == "max_rate":
        return f"capacity: ≥ {cap} (--max reached without a failure)"
    if reason == "harness":
        if first_fail is None:
            if not capacity:
                return ("capacity: not measured — the load generator reached its limit at the first step, before "
                        "the endpoint failed (see the step's reasons: more processes or hosts, or a higher "
                        "load.max_in_flight)")
            return (f"capacity: above {cap} — the load generator reached its limit before the endpoint failed "
                    "(see the last step's reasons: more processes or hosts, or a higher load.max_in_flight)")
        return f"capacity: {cap} (first failure {fail}); bisection stopped at a generator-bound step"
    if reason == "interrupted":
        return f"interrupted: highest passing step so far {cap}, first failure {fail}"
    if reason == "running":
        return f"sweep running: highest passing step so far {cap}, first failure {fail}"
    return f"capacity: {cap}; first failure {fail} (stopped: {reason})"

"""`bench run`: wires scenario, runner, report and summary together, and maps outcomes to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO, BenchError, InputError
from bench.scenario import Scenario, apply_overrides, parse_scenario, read_scenario_file

__all__ = ["run_from_args", "scenario_from_args"]

_CONTENT_TYPES = {".json": "application/json", ".arrow": "application/vnd.apache.arrow.file",
                  ".parquet": "application/octet-stream", ".csv": "text/csv", ".txt": "text/plain"}


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """A scenario file with CLI flags and --set applied, or an ad-hoc scenario from --url/--body."""
    if args.scenario and args.url:
        raise InputError("give a scenario file or --url, not both", key="--url")
    if args.scenario:
        file = args.scenario
        doc = read_scenario_file(file)
        base_dir = Path(file).resolve().parent
    elif args.url:
        file = "<command line>"
        doc = _adhoc_doc(args)
        base_dir = Path.cwd()
    else:
        raise InputError("give a scenario file, or --url (with --body) for an ad-hoc run", key="scenario")
    doc = apply_overrides(doc, _flag_overrides(args, doc), file)
    doc = apply_overrides(doc, args.overrides, file)
    return parse_scenario(doc, file=file, base_dir=base_dir)


def _adhoc_doc(args: argparse.Namespace) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for h in args.header:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            raise InputError(f"expected 'Name: value', got {h!r}", key="--header")
        headers[key.strip()] = value.strip()
    target: dict[str, Any] = {"url": args.url}
    data: dict[str, Any] = {}
    if args.url == "embedded":
        target["kind"] = "wallaroo"
        if args.body:
            data["path"] = args.body
            data["rows_per_request"] = 10
            if args.body.endswith(".arrow"):
                target["format"] = "arrow"
    else:
        if not args.body:
            raise InputError("an ad-hoc run needs --body FILE (the request body)", key="--body")
        target["kind"] = "http"
        data["body"] = args.body
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = _guess_content_type(args.body)
    if args.method:
        target["method"] = args.method
    if headers:
        target["headers"] = headers
    load: dict[str, Any] = {"duration": "10s"}
    if args.concurrency is None and args.rate is None:
        load["concurrency"] = 8
    return {"name": "adhoc", "target": target, "data": data, "load": load}


def _guess_content_type(body: str) -> str:
    if body.endswith(".df.json"):
        return "application/json; format=pandas-records"
    return _CONTENT_TYPES.get(Path(body).suffix, "application/octet-stream")


def _flag_overrides(args: argparse.Namespace, doc: dict[str, Any]) -> list[str]:
    """CLI flags win over the scenario's keys (as `--set` strings)."""
    out: list[str] = []
    load = doc.setdefault("load", {})
    if args.concurrency is not None:
        for k in ("rate", "stages", "arrival"):
            load.pop(k, None)
        out.append(f"load.concurrency={args.concurrency}")
    if args.rate is not None:
        for k in ("concurrency", "stages"):
            load.pop(k, None)
        out.append(f"load.rate={args.rate}")
    if args.poisson:
        out.append('load.arrival="poisson"')
    for flag, key in (("duration", "load.duration"), ("warmup", "load.warmup")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={_toml_str(value)}")
    if args.requests is not None:
        out.append(f"load.requests={args.requests}")
    if args.engine:
        out.append(f'engine.kind="{args.engine}"')
    if args.http2:
        out.append("engine.http2=true")
    if args.connections is not None:
        out.append(f"engine.connections={args.connections}")
    if args.insecure:
        out.append("engine.insecure=true")
    if args.loop:
        out.append(f'engine.loop="{args.loop}"')
    if args.raw:
        out.append("report.raw=true")
    return out


def _toml_str(value: str) -> str:
    try:
        float(value)
        return value
    except ValueError:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _processes(args: argparse.Namespace, sc: Scenario) -> int:
    raw = args.processes
    if raw is None:
        return sc.load.processes
    if raw == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        raise InputError(f"expected a number or 'auto', got {raw!r}", key="--processes") from None
    if n < 1:
        raise InputError("must be >= 1", key="--processes")
    return n


def run_from_args(args: argparse.Namespace) -> int:
    sc = scenario_from_args(args)
    if args.worker:
        from bench.multiprocess import run_worker

        return run_worker(args, sc)
    if getattr(args, "locust_master", False):
        from bench.locust.master import run_master  # imports locust (gevent) only here

        return run_master(args, sc)
    processes = _processes(args, sc)
    if processes > 1:
        from bench.multiprocess import run_parent

        return run_parent(args, sc, processes)
    return run_single(args, sc)


def run_single(args: argparse.Namespace, sc: Scenario) -> int:
    import anyio

    from bench.progress import ProgressView
    from bench.runner import RunControl, execute, prepare

    prepared = prepare(sc)
    out_path = report_path(args, sc)
    view = ProgressView(sc.load.warmup_s + sc.load.duration_s, warmup_s=sc.load.warmup_s, enabled=not args.quiet)
    ctl = RunControl(progress=view.update, message=view.message, preflight=not args.no_preflight,
                     raw_path=out_path.with_suffix(".raw.tmp") if sc.report.raw else None)
    try:
        run, facts = run_unwrapped(lambda: anyio.run(execute, prepared, ctl, backend="asyncio",
                                                     backend_options={"use_uvloop": use_uvloop(sc)}))
    except BenchError as exc:
        secrets = ctl.secrets()
        if secrets:  # messages about token endpoints must not carry what was sent to them
            from bench.auth import redact

            exc.args = (redact(str(exc), secrets),)
        raise
    finally:
        view.close()
    from bench.report.build import build_report

    return finish_run(args, sc, prepared, build_report(sc, run, facts), facts, out_path)


T = TypeVar("T")


def run_unwrapped(fn: Callable[[], T]) -> T:
    """Task groups wrap errors in exception groups; surface a BenchError (or Ctrl-C) as itself."""
    try:
        return fn()
    except BaseExceptionGroup as group:
        inner = _first(group, (BenchError, KeyboardInterrupt))
        if inner is not None:
            raise inner from None
        raise


def _first(group: BaseExceptionGroup[BaseException], kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, kinds):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kinds)
            if found is not None:
                return found
    return None


def use_uvloop(sc: Scenario) -> bool:
    if sc.engine.loop == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if sc.engine.loop == "uvloop":
            raise InputError("uvloop is not installed", key="engine.loop") from None
        return False
    return True


def report_path(args: argparse.Namespace, sc: Scenario) -> Path:
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path

    if args.out:
        return Path(args.out)
    return default_report_path(sc.report.dir, sc.name, datetime.now(UTC))


_CONNECT_KINDS = ("connect_refused", "connect_timeout", "tls_error")


def unreachable_reason(summary: dict[str, Any]) -> str | None:
    """Why no request ever reached the target (every one failed to connect), or None."""
    by_kind: dict[str, int] = summary.get("errors_by_kind", {})
    if summary.get("ok", 0) or not by_kind:
        return None
    # 'abandoned' beside connect failures only: typically still connecting when the run ended
    if all(kind.split(":")[0] in (*_CONNECT_KINDS, "abandoned") for kind in by_kind) and any(
            kind.split(":")[0] in _CONNECT_KINDS for kind in by_kind):
        return ", ".join(f"{n:,} {kind}" for kind, n in by_kind.items())
    return None


def finish_run(args: argparse.Namespace, sc: Scenario, prepared: Any, report: Any, facts: dict[str, Any],
               out_path: Path) -> int:
    """Report file, summary, SLO gate → exit code. Workers of a multi-process run skip the SLO gate."""
    from bench.report.summary import render_summary, summarize
    from bench.report.writer import write_report

    slo_result = None
    if prepared.slo is not None and not args.worker:
        from bench.report.slo import check_slo

        slo_result = check_slo(prepared.slo, report)
        report.meta.extra["slo"] = slo_result.to_dict()
    written = write_report(out_path, report)
    if report.run.raw_path is not None:  # the recorder's streamed log now lives inside the report
        report.run.raw_path.unlink(missing_ok=True)
    summary = summarize(report)
    summary["report"] = str(written)
    if slo_result is not None:
        summary["slo"] = slo_result.to_dict()
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        from rich.console import Console

        console = Console()
        render_summary(report, console)
        if slo_result is not None:
            console.print(slo_result.render())
    if facts.get("interrupted"):
        return EXIT_INTERRUPTED
    unreachable = unreachable_reason(summary)
    if unreachable:
        print(f"bench: error: target unreachable: {unreachable}", file=sys.stderr)
        return EXIT_INVALID
    if slo_result is not None and not slo_result.passed:
        return EXIT_SLO
    if args.strict and summary.get("generator_bound"):
        return EXIT_INVALID
    return EXIT_OK

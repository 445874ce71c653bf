"""The one run path shared by `bench run`, `--processes N` and `bench capacity` (and, next, distributed workers).

Three steps, each written once:

1. **prepare** (``prepare``): validate and pre-encode everything that can fail on bad input, before any load;
2. **resolve** (``resolved_target``): start the embedded emulator when the scenario asks for it, and point every
   URL that names it (inference, ``[wallaroo] api_url = "embedded"``, the Keycloak token endpoint, the UbiOps
   endpoint) at it — the result is a ``Prepared`` the run core (``bench.runner``) can use as is; the runner never
   sees the emulator. The rewrite itself (``point_at``) is a pure function of an ``Endpoints`` record, which is
   what multi-process workers receive;
3. **run + finish** (``run_once`` / ``finish``): apply the load, then SLO gate, atomic report write, summary and
   exit code, from a small typed ``RunOptions`` record.

``run_scenario`` strings them together for `bench run`; ``bench.workers`` runs the same steps in N processes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO, BenchError, InputError
from bench.facts import RunFacts
from bench.run_loop import run_async, run_once, run_unwrapped, use_uvloop
from bench.runner import Endpoints, Prepared, RunControl, point_at
from bench.runner import prepare as _prepare_core
from bench.scenario import Scenario
from bench.tlstrust import tls_hint

__all__ = [
    "TOKEN_PATH",
    "Endpoints",
    "RunOptions",
    "failed_reason",
    "finish",
    "point_at",
    "prepare",
    "report_path",
    "resolved_target",
    "run_async",
    "run_once",
    "run_report",
    "run_scenario",
    "run_unwrapped",
    "server_metrics",
    "unreachable_reason",
    "use_uvloop",
]

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"  # the embedded emulator's Keycloak realm


@dataclass(frozen=True)
class RunOptions:
    """How a run is driven and reported (the command line's part; the scenario says what load to apply)."""

    out: Path | None = None  # report path (default: the scenario's report dir + UTC time + name)
    json: bool = False  # the summary as one JSON object on stdout
    quiet: bool = False  # no progress line
    strict: bool = False  # a generator-bound run exits 3
    preflight: bool = True  # the Wallaroo deployment status check, when [wallaroo] asks for it
    processes: int = 1  # load-generator processes on this host


def prepare(sc: Scenario) -> Prepared:
    """``bench.runner.prepare`` plus the embedded emulator's config (validated here: the runner never sees it)."""
    prepared = _prepare_core(sc)
    if sc.target.embedded:
        from bench.emulator.embedded import emulator_config_from_mapping

        cfg = emulator_config_from_mapping(sc.emulator, sc.file)
        from bench.auth import emulator_credentials

        # the embedded emulator must accept the scenario's credentials (they reach it on stdin, not argv)
        creds: dict[str, Any] = {}
        pf = prepared.preflight_config
        for auth, section in ((prepared.auth_config, "auth"), (pf.auth if pf else None, "wallaroo.auth")):
            if auth is not None and auth.uses_keycloak:
                more = emulator_credentials(auth, file=sc.file, section=section)
                users = tuple(creds.get("users", ())) + tuple(more.pop("users", ()))
                creds.update(more, **({"users": users} if users else {}))
        if creds:
            cfg = replace(cfg, **creds)
        if sc.engine.http2 and "http2" not in sc.emulator:  # an HTTP/2 run needs an emulator that speaks h2c
            cfg = replace(cfg, http2=True)
        prepared.emulator_config = cfg
    return prepared


@contextlib.contextmanager
def resolved_target(prepared: Prepared, message: Callable[[str], None]) -> Iterator[Prepared]:
    """Yields ``prepared`` ready for the runner: for url = 'embedded', pointed at ONE emulator started here and
    stopped on exit (every run, step or worker inside the block shares it)."""
    sc = prepared.scenario
    if not sc.target.embedded:
        if sc.emulator:
            message(f"{sc.file}: [emulator] ignored: target.url is not 'embedded'")
        yield prepared
        return
    from bench.emulator.embedded import EmbeddedEmulator

    cfg = prepared.emulator_config
    assert cfg is not None  # prepare() parsed it for url = "embedded"
    with EmbeddedEmulator(cfg) as emu:
        message(f"embedded emulator at {emu.base_url}")
        from bench.targets import target_for

        yield point_at(prepared, Endpoints(
            inference_url=target_for(sc.target.kind).emulator_url(emu.base_url, emu.wallaroo_url),
            api_url=emu.base_url, token_url=f"{emu.base_url}{TOKEN_PATH}", ubiops_token=cfg.ubiops_token))


@contextlib.contextmanager
def server_metrics(prepared: Prepared) -> Iterator[Any]:
    """The [server_metrics] scraper running for the block (None without the section): the embedded emulator's
    /metrics for url = "embedded"."""
    if prepared.scrape_config is None:
        yield None
        return
    from bench.scrape import scraping

    base = prepared.endpoints.api_url if prepared.endpoints is not None else None
    with scraping(prepared.scrape_config, base, prepared.verify_target) as scraper:
        yield scraper


def run_report(prepared: Prepared, ctl: RunControl, **kwargs: Any) -> tuple[Any, RunFacts]:
    """``run_once`` turned into a Report (not yet written): (report, facts)."""
    from bench.facts import build_report
    from bench.secrets import scrub_report

    with term_kept():
        run, facts = run_once(prepared, ctl, **kwargs)
    report = build_report(prepared.scenario, run, facts, prepared.target_config)
    prepared.scrubber.add(ctl.secrets())  # tokens issued during the run
    scrub_report(report, prepared.scrubber)
    return report, facts


@contextlib.contextmanager
def term_kept() -> Iterator[None]:
    """SIGTERM's handler as it was before the block: an event loop that handled it during the load resets it to
    the default on the way out, and a SIGTERM after that (the next `bench capacity` step, the summary) would end
    the process by the signal instead of as Ctrl-C (bench.cli makes it one)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def report_path(opts: RunOptions, sc: Scenario) -> Path:
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path

    if opts.out is not None:
        return Path(opts.out)
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
        reason = ", ".join(f"{n:,} {kind}" for kind, n in by_kind.items())
        hint = tls_hint(" ".join(str(e.get("sample", "")) for e in summary.get("top_errors", [])))
        if hint is not None:
            reason += f" ({hint})"
        return reason
    return None


def failed_reason(report: Any) -> str | None:
    """Why a finished run measured nothing to trust, or None: no successful answer after warm-up (naming the
    commonest error kind), or no request at all in the measured phase (everything fell in the warm-up)."""
    from bench.report.accounting import accounted_errors_by_kind, accounted_totals
    from bench.rundata import MEASURED, WARMUP

    run = report.run
    measured = accounted_totals(report)
    warm = run.total(WARMUP)
    if measured.requests == 0:
        if warm.requests:
            return (f"nothing measured after warm-up: all {warm.requests:,} requests fell in the warm-up (the run "
                    f"ended {run.phase(WARMUP).end_s:.3g} s in; shorten load.warmup or send more requests)")
        dropped = measured.dropped + warm.dropped
        return "no request was sent" + (f" ({dropped:,} dropped: max_in_flight reached)" if dropped else "")
    if measured.ok:
        return None
    by_kind = accounted_errors_by_kind(report, MEASURED)
    kind, n = max(by_kind.items(), key=lambda kv: (kv[1], kv[0])) if by_kind else ("unknown", 0)
    warm_ok = f" ({warm.ok:,} ok in the warm-up only)" if warm.ok else ""
    return (f"no successful answer in {measured.requests:,} measured requests{warm_ok}; commonest error: {kind} "
            f"({n:,}, {n / measured.requests:.0%})")


def stamp_checks(report: Any) -> str | None:
    """Store the run's own checks in its metadata before it is written: the accounting (sent = ok + errors + in
    flight at the end, and whether it held) and, for a failed run, why (returned; None when it did not fail)."""
    from bench.report.accounting import request_accounting

    accounting = request_accounting(report.run)
    if accounting is not None:
        report.meta.extra["accounting"] = accounting
    failed = failed_reason(report)
    if failed:
        report.meta.extra["failed"] = failed
    return failed


def finish(opts: RunOptions, prepared: Prepared, report: Any, facts: RunFacts, out_path: Path) -> int:
    """SLO gate, atomic report write, summary → exit code (0 ok · 1 SLO failed · 3 unreachable, failed run (no
    successful answer / nothing measured) or --strict and generator-bound · 130 interrupted)."""
    from bench.report.summary import render_summary, summarize
    from bench.report.writer import write_report

    failed = stamp_checks(report)
    accounting = report.meta.extra.get("accounting")
    slo_result = None
    if prepared.slo is not None:
        from bench.report.slo import check_slo

        slo_result = check_slo(prepared.slo, report)
        report.meta.extra["slo"] = slo_result.to_dict()
    from bench.secrets import scrub_report

    scrub_report(report, prepared.scrubber)  # every byte stored or printed below comes from the scrubbed report
    written = write_report(out_path, report)
    from bench.checkpoint import discard

    discard(out_path)  # the report supersedes the run's checkpoint (and its workers' parts)
    if report.run.raw_path is not None:  # the recorder's streamed log now lives inside the report
        report.run.raw_path.unlink(missing_ok=True)
    summary = summarize(report)
    summary["report"] = str(written)
    if slo_result is not None:
        summary["slo"] = slo_result.to_dict()
    if opts.json:
        import orjson

        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        from bench.report.console import make_console

        console = make_console()
        render_summary(report, console)
        if slo_result is not None:
            console.print(slo_result.render())
    _append_step_summary(report, opts)
    from bench.targets import target_for

    note = target_for(prepared.scenario.target.kind).end_note(report.meta.extra)
    if note and not opts.quiet:
        print(note, file=sys.stderr)
    if facts.interrupted:
        return EXIT_INTERRUPTED
    unreachable = unreachable_reason(summary)
    if unreachable:
        print(f"bench: error: target unreachable: {unreachable}", file=sys.stderr)
        return EXIT_INVALID
    if failed:
        print(f"bench: error: run failed: {failed}", file=sys.stderr)
        return EXIT_INVALID
    if accounting is not None and not accounting["holds"]:
        from bench.report.accounting import accounting_text

        print(f"bench: warning: {accounting_text(accounting)}", file=sys.stderr)
    if slo_result is not None and not slo_result.passed:
        return EXIT_SLO
    if opts.strict and summary.get("generator_bound"):
        return EXIT_INVALID
    return EXIT_OK


def _append_step_summary(report: Any, opts: RunOptions) -> None:
    """The run's Markdown appended to $GITHUB_STEP_SUMMARY when set (as report/compare/capacity do), on every
    exit path that wrote a report (a failed gate most of all); only here, in the process that wrote the final
    report, never in --processes or Locust workers. A summary file that cannot be written is a warning: the run
    and its report stand."""
    from bench.report.markdown import append_step_summary_or_warn, report_markdown

    written = append_step_summary_or_warn(lambda: report_markdown(report))
    if written is not None and not opts.quiet:
        print(f"appended to $GITHUB_STEP_SUMMARY ({written})", file=sys.stderr)


def run_scenario(sc: Scenario, opts: RunOptions) -> int:
    """`bench run`: prepare, resolve, run in one or ``opts.processes`` processes, finish → exit code."""
    from bench.outpath import check_report_path

    out_path = report_path(opts, sc)
    try:
        check_report_path(out_path)  # a bad --out must not cost the whole run
    except InputError as exc:
        if opts.out is not None:
            raise
        raise InputError(exc.problem, file=sc.file, key="report.dir") from None  # the scenario's [report] dir
    prepared = prepare(sc)  # validates everything once, before the target is touched
    from bench.checkpoint import recover_leftover

    # a killed earlier run with the same --out: said even with --quiet (a notice, not progress)
    recover_leftover(out_path, lambda m: print(m, file=sys.stderr))
    with given_up_hint(out_path) as term_is_ctrl_c:
        if opts.processes > 1:
            return _run_processes(prepared, opts, out_path, term_is_ctrl_c)
        return _run_single(prepared, opts, out_path, term_is_ctrl_c)


def _run_processes(prepared: Prepared, opts: RunOptions, out_path: Path, term_is_ctrl_c: Callable[[], None]) -> int:
    from bench.checkpoint import discard
    from bench.workers import run_processes

    try:
        with resolved_target(prepared, _stderr_message(opts)) as target, server_metrics(target) as scraper:
            report, facts = run_processes(target, opts, out_path)
    except BenchError:  # a run judged invalid before any worker measured anything: nothing to recover
        discard(out_path)
        raise
    term_is_ctrl_c()
    if scraper is not None:  # the parent scrapes: the server's totals are not per worker
        add_scrapes(scraper, report, target.scrubber)
    code = finish(opts, target, report, facts, out_path)
    lost = report.meta.extra.get("workers_lost")
    if lost and code == EXIT_OK:  # as a Locust master does for a lost worker: the report stands, the run does not
        print(f"bench: error: the report is partial: {report.meta.extra.get('partial_reason')}", file=sys.stderr)
        return EXIT_INVALID
    return code


def _run_single(prepared: Prepared, opts: RunOptions, out_path: Path, term_is_ctrl_c: Callable[[], None]) -> int:
    from bench.checkpoint import checkpoint_path, discard
    from bench.progress import ProgressView

    sc = prepared.scenario
    view = ProgressView(sc.load.warmup_s + sc.load.duration_s, warmup_s=sc.load.warmup_s, enabled=not opts.quiet)
    ctl = RunControl(progress=view.update, message=lambda m: view.message(prepared.scrubber.text(m)),
                     preflight=opts.preflight, checkpoint_path=checkpoint_path(out_path),
                     raw_path=out_path.with_suffix(".raw.tmp") if sc.report.raw else None)
    try:
        with resolved_target(prepared, view.message) as target, server_metrics(target) as scraper:
            report, facts = run_report(target, ctl)
            term_is_ctrl_c()  # the event loop's handler is gone: a SIGTERM now must not kill the write silently
    except BenchError:  # a run judged invalid: nothing to recover (a third Ctrl-C keeps its checkpoint)
        discard(out_path)
        if ctl.raw_path is not None:
            ctl.raw_path.unlink(missing_ok=True)
        raise
    finally:
        view.close()
    if scraper is not None:
        add_scrapes(scraper, report, target.scrubber)
    return finish(opts, target, report, facts, out_path)


def add_scrapes(scraper: Any, report: Any, scrubber: Any, *, warn: bool = True) -> None:
    """The server's metrics into ``report``; when no scrape succeeded, one warning line on stderr (``warn``)."""
    warning = scraper.add_to(report)
    if warning and warn:
        print(f"bench: warning: {scrubber.text(warning)}", file=sys.stderr)


@contextlib.contextmanager
def given_up_hint(out_path: Path) -> Iterator[Callable[[], None]]:
    """SIGTERM is Ctrl-C for the block (``term_is_ctrl_c`` re-arms it after an event loop reset it). A run given
    up by a signal says what became of its measurements instead of a bare "interrupted": the report's path when
    this run wrote it (a signal while the summary is printed), else the `bench recover` command for the
    checkpoint it left (a third Ctrl-C, or one while the report is written)."""
    import shlex
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    before = _file_id(out_path)  # an earlier run's report there is not this run's

    def term_is_ctrl_c() -> None:
        if main:
            signal.signal(signal.SIGTERM, signal.default_int_handler)

    term_is_ctrl_c()
    try:
        yield term_is_ctrl_c
    except KeyboardInterrupt as exc:
        from bench.checkpoint import checkpoint_path

        written = _file_id(out_path)
        if written is not None and written != before:  # the report is written; only its summary was cut short
            raise KeyboardInterrupt(f"interrupted; the report was written: {out_path}") from exc
        ckpt = checkpoint_path(out_path)
        if ckpt.exists():
            again = f" --out {shlex.quote(str(out_path))}" if out_path.exists() else ""
            raise KeyboardInterrupt(f"interrupted before the report was written; nothing measured is lost: "
                                    f"bench recover {shlex.quote(str(out_path))}{again}") from exc
        raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, mtime) of ``path``, None when absent: a report is renamed into place, so a new one differs."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _stderr_message(opts: RunOptions) -> Callable[[str], None]:
    def message(text: str) -> None:
        if not opts.quiet:
            print(text, file=sys.stderr)

    return message

"""The end-of-run summary: a plain dict (for --json) and a compact rich table. Measured phase only."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.report.accounting import (
    accounted_errors_by_kind,
    accounted_totals,
    accounting_text,
    request_accounting,
    top_errors,
)
from bench.report.model import MEASURED, WARMUP, Histogram, Report
from bench.report.server_metrics import handler_gap, server_latency
from bench.report.verdict import NOT_JUDGED, judged
from bench.results import RESENT_GOAWAY, RESENT_REFUSED_STREAM, RESENT_STALE_CONNECTION, UNANSWERED_NAMES

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["MISSING", "OTHER_COLUMNS", "OTHER_TITLE", "SERVER_LABEL", "fell_behind_text", "num_text", "other_label",
           "other_rows", "outside_handler_text", "rate_text", "render_summary", "resent_notes", "server_notes",
           "summarize"]

_PCTS = ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999"))
MISSING = "—"  # what every view prints for a figure that was not measured (never 0)


SERVER_LABEL = "server handler (bucket res.)"

# Target-specific histograms (``summary['other_ms']``): the same labels in the terminal, HTML and Markdown.
OTHER_TITLE = "target-specific timings (ms, all answers)"
_OTHER_LABELS = {"server": "server-reported (per answer)", "batch_e2e": "batch: created → result collected",
                 "queue": "batch: queued (created → started)", "processing": "batch: processing (started → done)",
                 "batch_create": "batch: create call", "batch_poll_interval": "batch: poll interval",
                 "rate_limit_pause": "rate-limit pause"}


def other_label(name: str) -> str:
    return _OTHER_LABELS.get(name, name.replace("_", " "))


OTHER_COLUMNS = ("p50", "p90", "p99", "p99.9", "max")


def other_rows(s: dict[str, Any]) -> list[list[str]]:
    """``summarize``'s target-specific timings as table rows of text (label, then ``OTHER_COLUMNS``), for the HTML
    and Markdown views (each escapes the label its own way)."""
    return [[other_label(name), *(num_text(v[k]) for k in ("p50", "p90", "p99", "p999", "max"))]
            for name, v in s["other_ms"].items()]


def outside_handler_text(s: dict[str, Any]) -> str:
    """One sentence naming the client - server gap (from ``summarize``'s output): the server's percentiles with
    the bucket each is known to lie in, its request count to the scrape interval, and the gap as the range the
    bucket allows, never a negative network time."""
    gap = s["outside_handler_ms"] or {}
    srv = s["server_ms"] or {}
    bounds = srv.get("bounds_ms", {})

    def b(k: str) -> str:
        lo, hi = (bounds.get(k) or [None, None])[:2]
        return "" if lo is None else f" (bucket {lo:g}–{'∞' if hi is None else f'{hi:g}'} ms)"

    def g(k: str) -> str:
        one = gap.get(k)
        if not one:
            return MISSING
        if one["status"] == "not_comparable":
            return f"{MISSING} (client {k} below the server's bucket: not the same requests)"
        if one["status"] == "within_bucket":
            return f"0–{one['high_ms']:.3f} ms (within bucket resolution)"
        return f"{one['low_ms']:.3f}–{one['high_ms']:.3f} ms"

    cb = srv.get("count_bounds")
    count = ("" if srv.get("count") is None else f" ≈{srv['count']:,} requests" +
             (f" ({cb[0]:,}–{cb[1]:,} to the scrape interval)" if cb else " (to the scrape interval)") + ";")
    part = srv.get("partial")
    partial = (f" PARTIAL: the scrapes cover {part['covers_s']:.1f} of the phase's {part['phase_s']:.1f} s;"
               if part else "")
    errors = ("; they include the server's error answers (its histogram has no status label to keep the 2xx "
              "ones), the client's only ok ones" if srv.get("answers") != "2xx" and s.get("errors") else "")
    return (f"server {srv.get('metric', '')}:{partial}{count} p50 {num_text(srv.get('p50'))} ms{b('p50')}, p99 "
            f"{num_text(srv.get('p99'))} ms{b('p99')}; client service − server: p50 {g('p50')}, p99 {g('p99')} = "
            f"network + queueing outside the handler (server figures at bucket resolution{errors})")


def server_notes(s: dict[str, Any]) -> list[str]:
    """Lines every view prints under the server figures (from ``summarize``'s ``server_scrape``): failed scrapes,
    slow ones, and the scraper's warning (no scrape succeeded; the latency histogram was never found)."""
    info = s.get("server_scrape") or {}
    notes = []
    errors, warning = info.get("scrape_errors") or 0, info.get("warning")
    if errors and info.get("scrapes"):  # with none, the warning says it
        notes.append(f"{errors:,} scrape{'s' if errors != 1 else ''} of the server's metrics failed (first: "
                     f"{info.get('first_error') or MISSING})")
    slow = info.get("slow_scrapes")
    if slow:
        interval = info.get("interval_s")
        notes.append(f"{slow:,} scrape{'s' if slow != 1 else ''} took more than half the "
                     f"{'' if interval is None else f'{interval:g} s '}scrape interval (slowest "
                     f"{info.get('slowest_scrape_s', 0):.2f} s): the server's counts are placed at the answer's "
                     "arrival, its count bounds widened back to the request")
    if warning:
        notes.append(str(warning))
    return notes


_RESENT_WHY = {  # run counter -> why those requests went out twice (docs/exit-codes.md, "Re-sent requests")
    RESENT_STALE_CONNECTION: "on a fresh connection: the server had closed the kept-alive connection they were "
                             "written to, before any byte of their answers",
    RESENT_GOAWAY: "on a new connection: the server's HTTP/2 GOAWAY said it had not processed their streams",
    RESENT_REFUSED_STREAM: "on a new connection: the server refused their HTTP/2 streams (REFUSED_STREAM)",
}


def _resent(report: Report) -> dict[str, int]:
    """Requests a lean engine sent a second time, by reason (run counters; {} when none or not counted)."""
    return {k.removeprefix("resent_"): n for k in _RESENT_WHY if (n := report.run.counters.get(k, 0)) > 0}


def resent_notes(s: dict[str, Any]) -> list[str]:
    """One line per reason requests were re-sent (from ``summarize``'s ``resent``): each is one request in the
    counts, measured from its intended send time, though the server saw it twice (at most once processed)."""
    out = []
    for reason, n in s["resent"].items():
        why = _RESENT_WHY.get(f"resent_{reason}", reason.replace("_", " "))
        out.append(f"re-sent {n:,} request{'s' if n != 1 else ''} {why} (each counted once, latency from its "
                   "first intended send)")
    return out


BEHIND_RATIO = 0.97  # answers per second below this share of the requests sent per second: the endpoint fell behind
_BEHIND_SLACK = 10  # ... by at least this many answers over the window (a few in flight at its edges are not that)


def fell_behind_text(s: dict[str, Any]) -> str | None:
    """One line when answers came back markedly slower than requests were sent in the measured window (an open
    loop above the endpoint's capacity), else None: then req/s (answers per second) is below the load applied,
    and the latency figures include the endpoint's growing queue."""
    rps, sent, d = s["rps"], s.get("sent_rps"), s["duration_s"]
    if s.get("load_mode") == "closed":  # its sends wait for answers: it cannot outrun the endpoint (a closed loop
        return None  # of 250-item UbiOps batches counts its sends in whole batches, which read as "fell behind")
    if rps is None or not sent or rps >= BEHIND_RATIO * sent or (sent - rps) * d < _BEHIND_SLACK:
        return None
    lost = {k: n for k, n in s["errors_by_kind"].items() if k in UNANSWERED_NAMES and k != "abandoned"}
    if sum(lost.values()) >= (sent - rps) * d / 2:  # mostly requests that got no answer, not a growing queue
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(lost.items(), key=lambda kv: -kv[1]))
        return (f"answers fell short of sends: {sent:,.1f} req/s sent, {rps:,.1f} answers/s came back; "
                f"{sum(lost.values()):,} requests got no answer ({kinds})")
    return (f"the endpoint fell behind: {sent:,.1f} req/s sent, {rps:,.1f} answers/s came back (its queue grew; "
            "the latency figures include the wait)")


def rate_text(rate: float | None) -> str:
    """An error rate as "1.23 %", or "—" when no request was recorded."""
    return num_text(None if rate is None else rate * 100, ".2f", " %")


def num_text(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
    """``value`` formatted, or "—" when it was not measured (None)."""
    return MISSING if value is None else f"{value:{fmt}}{suffix}"


def _views(h: Histogram) -> dict[str, float | None]:
    """p50 … max in ms; every value None when the histogram holds no sample (missing is not zero)."""
    if not h.total:
        return {name: None for name in (*(n for _, n in _PCTS), "max")}
    pct = h.percentiles_ms([p for p, _ in _PCTS])
    out: dict[str, float | None] = {name: round(pct[p], 3) for p, name in _PCTS}
    out["max"] = round(h.max_us / 1000.0, 3)
    return out


def summarize(report: Report) -> dict[str, Any]:
    """requests, errors, rps, rows_per_s, latency_ms, service_ms, errors_by_kind, top_errors (kind, count, one
    scrubbed sample), server_ms / outside_handler_ms (None without server metrics), generator_bound, report, ...

    ``requests`` counts every request of the measured phase (ok + errors): the recorded ones (the sum of the
    measured latency histograms' counts) plus those still in flight at the end, which are errors of kind
    ``abandoned`` (see bench.report.accounting). Latency views are over ok requests; a view with no sample holds
    None in every field (shown as "—"), and so does ``error_rate`` when nothing was recorded.
    """
    run = report.run
    tot = accounted_totals(report)
    service = _views(run.histogram("service", MEASURED, "ok"))
    timed = run.duration_s(MEASURED) > 0  # a measured window of 0 s (nothing measured): no rate, not a rate of 0
    out = {
        "requests": tot.requests,
        "errors": tot.errors,
        "rps": round(run.rps(MEASURED), 3) if timed else None,  # answers per second (RunData.rps)
        "sent_rps": round(run.sent_rps(MEASURED), 3) if timed else None,  # requests taken on per second
        "load_mode": report.meta.load.get("mode"),  # open / closed (None: not recorded)
        "rows_per_s": round(run.rows_per_s(MEASURED), 3) if timed and report.meta.rows_counted else None,
        "latency_ms": _views(run.histogram("latency", MEASURED, "ok")),
        "service_ms": service,
        "errors_by_kind": accounted_errors_by_kind(report),
        "top_errors": [e.to_dict() for e in top_errors(report)],
        "generator_bound": report.meta.generator_bound if judged(report.meta) else None,  # None: not judged
        "generator_bound_reasons": list(report.meta.generator_bound_reasons),
        "report": str(report.path) if report.path is not None else None,
        "ok": tot.ok,
        "error_rate": round(tot.errors / tot.requests, 6) if tot.requests else None,
        "dropped": tot.dropped,
        "duration_s": round(run.duration_s(MEASURED), 3),
        "warmup_requests": run.total(WARMUP).requests,
        "schedule_lag_p99_ms": _views(run.histogram("schedule_lag", MEASURED))["p99"],
        "partial": run.partial,
        "partial_reason": _partial_reason(report) if run.partial else None,  # "interrupted", "a worker was lost: ..."
        "failed": _failed(report),  # why the run is invalid (no successful answer, ...), else None
        "accounting": request_accounting(run),  # sent = ok + errors + in flight at end, both phases (or None)
        "resent": _resent(report),  # reason -> requests sent a second time (stale_connection, goaway, ...)
        "other_ms": {name: _views(run.histogram(name, MEASURED)) for name in _other_metrics(report)},
        **_server(report, service),
    }
    out["resent_notes"] = resent_notes(out)  # the same lines as the views print
    return out


def _partial_reason(report: Report) -> str:
    """Why the run is partial: what the run recorded (a distributed run that lost a worker), else interrupted."""
    reason = report.meta.extra.get("partial_reason")
    return reason if isinstance(reason, str) and reason else "interrupted"


def _failed(report: Report) -> str | None:
    failed = report.meta.extra.get("failed")
    return failed if isinstance(failed, str) and failed else None


def _server(report: Report, service: dict[str, float | None]) -> dict[str, Any]:
    """``server_ms`` (the server's request-duration percentiles, bucket resolution; ``count`` to the scrape
    interval, ``count_bounds`` [inner, outer]; ``answers`` "2xx" or "all"; ``partial`` {covers_s, phase_s} when
    the scrapes do not bracket the phase) and ``outside_handler_ms`` (client service time minus server time:
    network + queueing outside the handler, per percentile ``{low_ms, high_ms, status}`` from ``handler_gap``);
    None without them. ``server_scrape``: ``extra.server_metrics`` (scrapes, failures, warning), None without
    ``[server_metrics]``."""
    info = report.meta.extra.get("server_metrics")
    scrape = dict(info) if isinstance(info, dict) else None
    srv = server_latency(report)
    if srv is None:
        return {"server_ms": None, "outside_handler_ms": None, "server_scrape": scrape}
    ms = srv.ms()
    gap = {k: handler_gap(service[k], srv.bounds_ms.get(k) if ms[k] is not None else None) for k in ("p50", "p99")}
    return {"server_ms": {**{k: None if v is None else round(v, 3) for k, v in ms.items()}, "count": srv.count,
                          "count_bounds": None if srv.count_bounds is None else list(srv.count_bounds),
                          "metric": srv.metric, "resolution": "bucket", "answers": srv.answers,
                          "partial": {"covers_s": srv.covers_s, "phase_s": srv.phase_s} if srv.partial else None,
                          "bounds_ms": {k: [lo, None if math.isinf(hi) else hi] for k, (lo, hi) in
                                        srv.bounds_ms.items()}},
            "outside_handler_ms": gap, "server_scrape": scrape}


_CORE_METRICS = frozenset({"latency", "service", "schedule_lag", "loop_lag"})


def _other_metrics(report: Report) -> list[str]:
    """Target-specific histograms with data (server time, UbiOps batch_e2e / queue / processing, ...)."""
    names = {k.metric for k, h in report.run.histograms.items() if k.metric not in _CORE_METRICS and h.total}
    return sorted(names)


def render_summary(report: Report, console: Console) -> None:
    """Print the summary as a compact table (measured phase)."""
    from rich.markup import escape
    from rich.table import Table

    s = summarize(report)
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_row("requests", f"{s['requests']:,}", "errors", f"{s['errors']:,} ({rate_text(s['error_rate'])})")
    head.add_row("req/s", num_text(s["rps"], ",.1f"), "rows/s", num_text(s["rows_per_s"], ",.1f"))
    head.add_row("measured", f"{s['duration_s']:.1f} s", "dropped", f"{s['dropped']:,}")
    if s["failed"]:
        console.print(f"[bold red]run failed[/]: {escape(s['failed'])}")
    console.print(head)
    behind = fell_behind_text(s)
    if behind:
        console.print(behind, style="yellow", markup=False, highlight=False)
    lat = Table(title="latency (ms, ok requests)", title_justify="left")
    lat.add_column("view")
    for name in ("p50", "p90", "p99", "p99.9", "max"):
        lat.add_column(name, justify="right")
    for label, v in (("from intended time", s["latency_ms"]), ("service (sent→done)", s["service_ms"])):
        lat.add_row(label, *(num_text(v[k]) for k in ("p50", "p90", "p99", "p999", "max")))
    if s["server_ms"] is not None:
        lat.add_row(SERVER_LABEL, *(num_text(s["server_ms"].get(k)) for k in ("p50", "p90", "p99", "p999", "max")))
    console.print(lat)
    if s["other_ms"]:  # every answer, not only the ok ones: a table of their own, as in Markdown and HTML
        other = Table(title=OTHER_TITLE, title_justify="left")
        for name in ("timing", *OTHER_COLUMNS):
            other.add_column(name, justify="left" if name == "timing" else "right")
        for label, *figures in other_rows(s):
            other.add_row(label, *figures)
        console.print(other)
    if s["server_ms"] is not None:
        console.print(outside_handler_text(s), markup=False, soft_wrap=True)
    for note in server_notes(s):
        console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    if s["top_errors"]:
        more = len(s["errors_by_kind"]) - len(s["top_errors"])
        err = Table(title="errors by kind" + (f" (top {len(s['top_errors'])}, {more} more)" if more > 0 else ""),
                    title_justify="left")
        err.add_column("kind")
        err.add_column("count", justify="right")
        err.add_column("sample of the reason", overflow="fold")
        for e in s["top_errors"]:
            err.add_row(escape(e["kind"]), f"{e['count']:,}", escape(e["sample"]) or MISSING)
        console.print(err)
    if s["accounting"] is not None:
        console.print("accounting: " + accounting_text(s["accounting"]), markup=False, highlight=False)
    for note in s["resent_notes"]:
        console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    if s["generator_bound"]:
        console.print("[bold red]generator-bound[/]: the numbers may describe the harness, not the endpoint")
        for r in s["generator_bound_reasons"]:
            console.print(f"  - {r}")
    elif s["generator_bound"] is None:
        console.print(f"generator-bound: {NOT_JUDGED}", markup=False, highlight=False)
    else:
        console.print("generator-bound: no")
    if s["partial"]:
        console.print(f"[yellow]partial run[/] ({escape(s['partial_reason'] or 'interrupted')})")
    if s["report"]:
        console.print(f"report: {s['report']}")

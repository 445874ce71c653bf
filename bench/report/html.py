"""A self-contained HTML page of one run: inline SVG plots drawn here, inline CSS, no script, no fetches.

Plots: the HdrHistogram-style percentile distribution (x = 1/(1-p) on a log scale) of both latency views,
per-second latency percentiles, throughput, and errors by kind over time. Every text from the run is
escaped. Each plotted line carries ``class="series"`` and ``data-points`` so tests can check it rendered.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.report.markdown import stored_slo
from bench.report.model import MEASURED, WARMUP, Histogram, Report
from bench.report.summary import (
    OTHER_COLUMNS,
    OTHER_TITLE,
    SERVER_LABEL,
    fell_behind_text,
    num_text,
    other_rows,
    outside_handler_text,
    rate_text,
    server_notes,
    summarize,
)
from bench.report.verdict import NOT_JUDGED, judged

__all__ = ["Line", "line_chart", "percentile_curve", "render_html"]

_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")
_MAX_DOTS = 240  # per line: beyond this only the polyline is drawn (dots carry hover titles)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    unit: str = ""
    x_names: Sequence[str] | None = None  # hover text of each x (defaults to the number)
    dashed: bool = False


def _nice_step(span: float, target: int = 5) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def line_chart(title: str, lines: Sequence[Line], *, x_label: str, y_label: str,
               x_ticks: Sequence[tuple[float, str]] | None = None, shade: tuple[float, float] | None = None,
               shade_label: str = "", width: int = 880, height: int = 300,
               marks: Sequence[tuple[float, str]] = (), y_max: float | None = None) -> str:
    """An SVG line chart (linear y from 0). ``x_ticks`` overrides the numeric x ticks (e.g. percentiles);
    ``marks`` are labelled vertical lines (class ``mark``, e.g. a capacity knee); ``y_max`` clips the y axis
    (higher points are drawn on the top edge)."""
    left, right, top, bottom = 64, 34, 30, 46
    pw, ph = width - left - right, height - top - bottom
    xs_all = [x for ln in lines for x in ln.xs]
    ys_all = [y for ln in lines for y in ln.ys if math.isfinite(y)]
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">',
             f'<text class="title" x="{left}" y="20">{_e(title)}</text>']
    if not xs_all or not ys_all:
        parts.append(f'<text class="empty" x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">'
                     "no data</text></svg>")
        return "".join(parts)
    x0, x1 = min(xs_all), max(xs_all)
    if shade is not None:
        x0 = min(x0, shade[0])
    if x_ticks:
        x0, x1 = min(x0, *(t for t, _ in x_ticks)), max(x1, *(t for t, _ in x_ticks))
    if x1 <= x0:
        x1 = x0 + 1
    ymax = max(ys_all) if y_max is None else min(max(ys_all), y_max)
    step = _nice_step(ymax if ymax > 0 else 1.0)
    y1 = step * max(1, math.ceil(ymax / step - 1e-9))
    if ymax >= y1:
        y1 += step

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (min(max(y, 0.0), y1) / y1) * ph

    if shade is not None:
        a, b = max(shade[0], x0), min(shade[1], x1)
        if b > a:
            parts.append(f'<rect class="shade" x="{sx(a):.1f}" y="{top}" width="{sx(b) - sx(a):.1f}" '
                         f'height="{ph}"><title>{_e(shade_label)}</title></rect>')
            parts.append(f'<text class="shade-label" x="{sx(a) + 4:.1f}" y="{top + ph - 6}">{_e(shade_label)}</text>')
    y = 0.0
    while y <= y1 + 1e-9:
        parts.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
        y += step
    ticks = list(x_ticks) if x_ticks else []
    if not ticks:
        xstep = _nice_step(x1 - x0, 8)
        t = math.ceil(x0 / xstep) * xstep
        while t <= x1 + 1e-9:
            ticks.append((t, _fmt(t)))
            t += xstep
    for t, label in ticks:
        parts.append(f'<line class="grid v" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + ph}"/>'
                     f'<text class="tick" x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">'
                     f'{_e(label)}</text>')
    parts.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    parts.append(f'<text class="axis" x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">'
                 f'{_e(x_label)}</text>')
    parts.append(f'<text class="axis" transform="translate(14 {top + ph / 2}) rotate(-90)" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    for ln in lines:
        pts = [(sx(x), sy(y)) for x, y in zip(ln.xs, ln.ys, strict=True) if math.isfinite(y)]
        if not pts:
            continue
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        parts.append(f'<g class="line"><polyline class="series" data-name="{_e(ln.name)}" '
                     f'data-points="{len(pts)}" fill="none" stroke="{ln.color}" stroke-width="2"'
                     f'{dash} '
                     f'points="{coords}"/>')
        if len(pts) <= _MAX_DOTS:
            names = ln.x_names if ln.x_names is not None else [_fmt(x) for x in ln.xs]
            for (a, b), xn, yv in zip(pts, names, ln.ys, strict=False):
                parts.append(f'<circle class="dot" cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{ln.color}">'
                             f'<title>{_e(ln.name)} @ {_e(xn)}: {_fmt(yv)} {_e(ln.unit)}</title></circle>')
        parts.append("</g>")
    for k, (mx, label) in enumerate(marks):
        if x0 <= mx <= x1:
            parts.append(f'<g class="mark" data-name="{_e(label)}"><line x1="{sx(mx):.1f}" x2="{sx(mx):.1f}" '
                         f'y1="{top}" y2="{top + ph}" stroke="#111827" stroke-dasharray="3 3"/><text '
                         f'x="{sx(mx) + 4:.1f}" y="{top + 12 + 13 * k}">{_e(label)}</text></g>')
    lx = width - right - sum(24 + 6.5 * len(ln.name) for ln in lines)  # legend: title row, right-aligned
    for ln in lines:
        parts.append(f'<rect x="{lx:.1f}" y="{14}" width="12" height="4" fill="{ln.color}"/>'
                     f'<text class="legend" x="{lx + 16:.1f}" y="{19}">{_e(ln.name)}</text>')
        lx += 24 + 6.5 * len(ln.name)
    parts.append("</svg>")
    return "".join(parts)


def percentile_curve(h: Histogram, points: int = 160) -> tuple[list[float], list[float], list[str]]:
    """(x = log10(1/(1-p)), latency ms, 'p %' names) from 0 up to the resolution the count supports."""
    if not h.total:
        return [], [], []
    xmax = max(1.0, min(6.0, math.log10(max(h.total, 2))))
    xs = [float(x) for x in np.linspace(0.0, xmax, points)]
    ps = [100.0 * (1.0 - 10.0 ** (-x)) for x in xs]
    got = h.percentiles_ms(ps)
    ys = [got[p] for p in ps]
    xs.append(xmax)
    ys.append(h.max_us / 1000.0)
    ps.append(100.0)
    return xs, ys, [f"p{p:.4g}" for p in ps]


def _pct_ticks(xmax: float) -> list[tuple[float, str]]:
    ticks = [(0.0, "0 %"), (math.log10(2), "50 %")]
    labels = ("90 %", "99 %", "99.9 %", "99.99 %", "99.999 %", "99.9999 %")
    for i, label in enumerate(labels, start=1):
        if i <= math.ceil(xmax - 1e-9):
            ticks.append((float(i), label))
    return ticks


def _errors_by_kind_series(report: Report) -> dict[str, dict[int, int]] | None:
    """kind[:status] -> second -> count, from the raw log when the report has one; else None."""
    if report.path is None:
        return None
    try:
        from bench.report.reader import iter_raw

        out: dict[str, dict[int, int]] = {}
        for b in iter_raw(report.path):
            names = b.column("name").to_pylist()
            statuses = b.column("status").to_pylist()
            done = b.column("done_ns").to_pylist()
            for name, status, d in zip(names, statuses, done, strict=True):
                if name == "ok" or d is None:
                    continue
                key = f"{name}:{status}" if status else str(name)
                per = out.setdefault(key, {})
                sec = int(d // 1_000_000_000)
                per[sec] = per.get(sec, 0) + 1
        return out
    except Exception:  # a report without raw rows, or one we cannot stream: fall back to totals
        return None


def _kv_table(rows: Sequence[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _grid_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="grid"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _json_text(value: Any) -> str:
    return _e(json.dumps(value, sort_keys=True, default=str)) if isinstance(value, Mapping | list) else _e(value)


_CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--ok:#15803d;--bad:#b91c1c;--warn:#b45309}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:960px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
.sub{color:var(--muted);margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .v{font-size:20px;font-weight:600}.card .k{color:var(--muted);font-size:12px;text-transform:uppercase}
.panel{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin:10px 0}
table{border-collapse:collapse;width:100%;background:#fff}
table.grid th,table.grid td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:right}
table.grid th:first-child,table.grid td:first-child{text-align:left}
table.grid thead th{color:var(--muted);font-weight:600;font-size:12px}
table.kv th{text-align:left;color:var(--muted);font-weight:500;width:190px;padding:4px 8px;vertical-align:top}
table.kv td{padding:4px 8px;word-break:break-word}
.badge{display:inline-block;border-radius:999px;padding:2px 10px;font-weight:600;font-size:12px;color:#fff}
.badge.ok{background:var(--ok)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}
ul.reasons{margin:6px 0 0 18px;padding:0}
code.detail{display:block;text-align:left;font-size:12px;word-break:break-word}
pre{background:#f1f5f9;border-radius:6px;padding:10px;overflow:auto;font-size:12px;max-height:360px}
svg.chart{display:block;font:11px system-ui,sans-serif}
svg .title{font-size:13px;font-weight:600;fill:var(--fg)}
svg .grid{stroke:#eef0f3;stroke-width:1}svg .frame{fill:none;stroke:#cbd5e1}
svg .tick,svg .legend{fill:#4b5563}svg .axis{fill:var(--muted)}svg .empty{fill:var(--muted);font-size:14px}
svg .shade{fill:#f1f5f9}svg .shade-label{fill:var(--muted);font-size:10px}
svg .dot{opacity:.0}svg .dot:hover{opacity:1}svg .line:hover .dot{opacity:.9}
footer{color:var(--muted);font-size:12px;margin-top:32px}
"""


def render_html(report: Report) -> str:
    """The whole page as one string."""
    s = summarize(report)
    run, meta = report.run, report.meta
    series = run.series
    warm = run.phase(WARMUP)
    meas = run.phase(MEASURED)
    shade = (warm.start_s, warm.end_s) if warm.duration_s > 0 else None

    out: list[str] = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>bench report: {_e(meta.scenario_name)}</title>", f"<style>{_CSS}</style>",
                      "</head><body><main>", f"<h1>bench report: {_e(meta.scenario_name)}</h1>",
                      f'<p class="sub">{_e(meta.start_utc)} → {_e(meta.end_utc)} · host {_e(meta.host)} · '
                      f"bench {_e(meta.bench_version)}</p>"]

    # verdict badges
    badges: list[str] = []
    if s["failed"]:
        badges.append('<span class="badge bad">run failed</span>')
    if run.partial:
        badges.append('<span class="badge warn">partial run (interrupted)</span>')
    badges.append('<span class="badge bad">generator-bound</span>' if meta.generator_bound
                  else '<span class="badge ok">not generator-bound</span>' if judged(meta)
                  else f'<span class="badge warn">generator-bound: {_e(NOT_JUDGED)}</span>')
    slo = stored_slo(report)
    if slo is not None:
        badges.append(f'<span class="badge {"ok" if slo.passed else "bad"}">SLO '
                      f'{"passed" if slo.passed else "failed"}</span>')
    out.append('<div class="verdicts">' + " ".join(badges) + "</div>")
    if s["failed"]:
        out.append(f'<p class="failed"><b>Run failed:</b> {_e(s["failed"])}</p>')

    cards = [("requests", f"{s['requests']:,}"), ("errors", f"{s['errors']:,} ({rate_text(s['error_rate'])})"),
             ("req/s", num_text(s["rps"], ",.1f")), ("rows/s", num_text(s["rows_per_s"], ",.1f")),
             ("p50 latency", num_text(s['latency_ms']['p50'], ".2f", " ms")),
             ("p99 latency", num_text(s['latency_ms']['p99'], ".2f", " ms")),
             ("measured", f"{s['duration_s']:.1f} s"), ("dropped", f"{s['dropped']:,}")]
    out.append('<div class="cards">' + "".join(f'<div class="card"><div class="k">{_e(k)}</div>'
                                                 f'<div class="v">{_e(v)}</div></div>' for k, v in cards) + "</div>")
    behind = fell_behind_text(s)
    if behind:
        out.append(f'<p class="behind">{_e(behind[0].upper() + behind[1:])}.</p>')
    out += [f'<p class="behind">{_e(note[0].upper() + note[1:])}.</p>' for note in s["resent_notes"]]

    # latency tables + distribution
    out.append("<h2>Latency</h2>")
    rows = [[_e(label), *(num_text(s[key][k]) for k in ("p50", "p90", "p99", "p999", "max"))]
            for label, key in (("from intended time", "latency_ms"), ("service (sent → done)", "service_ms"))]
    if s["server_ms"] is not None:
        rows.append([f'<span class="server">{_e(SERVER_LABEL)}</span>',
                     *(num_text(s["server_ms"].get(k)) for k in ("p50", "p90", "p99", "p999", "max"))])
    out.append(_grid_table(["view (ms, ok requests)", "p50", "p90", "p99", "p99.9", "max"], rows))
    if s["server_ms"] is not None:
        out.append(f'<p class="server-gap">{_e(outside_handler_text(s))}</p>')
    out += [f'<p class="server-note">{_e(note)}</p>' for note in server_notes(s)]
    if s["other_ms"]:
        out.append('<div class="other-timings">' + _grid_table(
            [OTHER_TITLE, *OTHER_COLUMNS], [[_e(label), *figures] for label, *figures in other_rows(s)]) + "</div>")
    lines = []
    xmax = 1.0
    for i, (name, metric) in enumerate((("from intended time", "latency"), ("service time", "service"))):
        xs, ys, names = percentile_curve(run.histogram(metric, MEASURED, "ok"))
        if xs:
            xmax = max(xmax, xs[-1])
            lines.append(Line(name, xs, ys, _COLORS[i], "ms", names, dashed=i == 1))
    out.append('<div class="panel">' + line_chart(
        "Latency by percentile (measured phase, ok requests)", lines, x_label="percentile (log scale of 1/(1−p))",
        y_label="latency (ms)", x_ticks=_pct_ticks(xmax)) + "</div>")

    # over time
    out.append("<h2>Over time</h2>")
    secs = [float(x) + 0.5 for x in series.second]  # second i covers [i, i+1): plot at its middle
    end_s = max((p.end_s for p in run.phases), default=0.0)
    active = np.clip(np.minimum(series.second.astype(np.float64) + 1, end_s) - series.second, 0.25, 1.0)

    def rate(col: Any) -> list[float]:
        """Counts per second of sending (the run's last second is usually partial)."""
        return [float(v) for v in np.asarray(col, dtype=np.float64) / active]

    pct = series.latency_percentiles_ms()
    has = [series.histogram(i).total > 0 for i in range(len(series))] if len(series) else []
    lat_lines = [Line(k.removesuffix("_ms"), [x for x, h in zip(secs, has, strict=True) if h],
                      [float(v) for v, h in zip(pct[k], has, strict=True) if h], _COLORS[j], "ms")
                 for j, k in enumerate(("p50_ms", "p90_ms", "p99_ms", "max_ms"))]
    out.append('<div class="panel">' + line_chart(
        "Latency from intended time per second (ok requests)", lat_lines, x_label="second of the run",
        y_label="latency (ms)", shade=shade, shade_label="warm-up") + "</div>")
    thr = [Line("requests/s", secs, rate(series.requests), _COLORS[0], "req/s"),
           Line("errors/s", secs, rate(series.errors), _COLORS[1], "err/s")]
    if int(series.dropped.sum()) if len(series) else 0:
        thr.append(Line("dropped/s", secs, rate(series.dropped), _COLORS[4], "/s"))
    out.append('<div class="panel">' + line_chart("Throughput per second (by completion time)", thr,
                                                  x_label="second of the run", y_label="per second", shade=shade,
                                                  shade_label="warm-up") + "</div>")
    if report.meta.rows_counted:  # (else rows were not counted: no chart of made-up rows)
        rows_line = [Line("rows/s", secs, rate(series.rows), _COLORS[2], "rows/s")]
        out.append('<div class="panel">' + line_chart("Rows per second (ok requests)", rows_line,
                                                      x_label="second of the run", y_label="rows per second",
                                                      shade=shade, shade_label="warm-up") + "</div>")

    # errors
    out.append("<h2>Errors</h2>")
    by_kind_time = _errors_by_kind_series(report) if run.errors else {}
    if by_kind_time:
        all_secs = sorted({sec for per in by_kind_time.values() for sec in per})
        err_lines = [Line(k, [float(x) + 0.5 for x in all_secs], [float(per.get(x, 0)) for x in all_secs],
                          _COLORS[j % len(_COLORS)], "errors")
                     for j, (k, per) in enumerate(sorted(by_kind_time.items()))]
        title = "Errors by kind per second"
    else:
        err_lines = [Line("all kinds", secs, rate(series.errors), _COLORS[1], "errors")]
        title = ("Errors per second (all kinds; per-kind timing needs report.raw = true)" if run.errors
                 else "Errors per second (none)")
    out.append('<div class="panel">' + line_chart(title, err_lines, x_label="second of the run",
                                                  y_label="errors per second", shade=shade,
                                                  shade_label="warm-up") + "</div>")
    kinds = s["errors_by_kind"]
    if kinds:
        samples = {e["kind"]: e["sample"] for e in s["top_errors"]}
        out.append(_grid_table(["kind (measured phase)", "count", "sample of the reason"],
                               [[_e(k), f"{n:,}", f'<code class="detail">{_e(samples.get(k, ""))}</code>']
                                for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])]))
    if run.error_samples:
        out.append(_grid_table(["kind", "status", "count", "detail"], [
            [_e(e.kind), _e(e.status), f"{e.count:,}", f'<code class="detail">{_e(e.detail)}</code>']
            for e in run.error_samples]))

    # verdicts
    out.append("<h2>Verdicts</h2>")
    gb = ('<span class="badge bad">generator-bound</span><ul class="reasons">'
          + "".join(f"<li>{_e(r)}</li>" for r in meta.generator_bound_reasons) + "</ul>"
          if meta.generator_bound else '<span class="badge ok">no</span>' if judged(meta)
          else f'<span class="badge warn">{_e(NOT_JUDGED)}</span>')
    vrows = [("generator-bound", gb),
             ("generator CPU", _e(f"{meta.cpu_fraction * 100:.0f} % of a core") if meta.cpu_fraction is not None
              else "—"),
             ("schedule lag p99", _e(num_text(s['schedule_lag_p99_ms'], ".3f", " ms"))),
             ("partial", '<span class="badge warn">yes (interrupted)</span>' if run.partial else "no")]
    if slo is not None:
        vrows.append(("SLO", (f'<span class="badge {"ok" if slo.passed else "bad"}">'
                              f'{"passed" if slo.passed else "failed"}</span><ul class="reasons">'
                              + "".join(f"<li>{'✔' if r.passed else '✘'} {_e(r.describe())}</li>"
                                        for r in slo.results) + "</ul>")))
    out.append(_kv_table(vrows))

    # metadata
    out.append("<h2>Run</h2>")
    mrows = [("scenario", _e(meta.scenario_name)), ("start (UTC)", _e(meta.start_utc)),
             ("end (UTC)", _e(meta.end_utc)), ("host", _e(meta.host)),
             ("phases", _e(", ".join(f"{p.name} {p.start_s:.2f}–{p.end_s:.2f} s" for p in run.phases))),
             ("measured window", _e(f"{meas.duration_s:.2f} s"))]
    mrows += [(f"load.{k}", _json_text(v)) for k, v in meta.load.items() if v not in (None, "", 0, [], {})]
    mrows += [(f"target.{k}", _json_text(v)) for k, v in meta.target.items() if v not in (None, "", [], {})]
    mrows += [("bench", _e(meta.bench_version)), ("python", _e(meta.python_version)),
              ("libraries", _e(", ".join(f"{k} {v}" for k, v in sorted(meta.libraries.items())))),
              ("schema version", _e(meta.schema_version))]
    out.append(_kv_table(mrows))
    if meta.scenario_text:
        out.append(f"<details><summary>scenario (secrets redacted)</summary><pre>{_e(meta.scenario_text)}</pre>"
                   "</details>")
    out.append("<footer>Generated by bench. Latency is measured from each request's intended send time "
               "(no coordinated omission); service time from the actual send.</footer>")
    out.append("</main></body></html>")
    return "\n".join(out)

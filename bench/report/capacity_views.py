"""Views of a capacity report: a terminal table, Markdown, and a self-contained HTML page whose inline SVG draws
the latency–throughput curve (client and, when scraped, server p50/p99), achieved vs offered load and the
error rate, with the knee and the highest load that met the SLO marked. No script, no fetches."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from bench.report.capacity_report import CapacityReport, CapacityStep
from bench.report.html import _COLORS, _CSS, Line, _grid_table, line_chart
from bench.report.markdown import _table, cell
from bench.report.summary import MISSING, num_text

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["capacity_html", "capacity_markdown", "render_capacity"]

_HEAD = ("step", "offered", "achieved req/s", "p50 ms", "p99 ms", "server p50 ms", "server p99 ms", "errors",
         "verdict", "why")


def _offered_unit(cap: CapacityReport) -> str:
    kind = cap.info.get("load_kind") or (cap.steps[0].load_kind if cap.steps else "rate")
    return "clients" if kind == "concurrency" else "req/s"


def _cells(s: CapacityStep, server: bool) -> list[str]:
    row = [str(s.step), f"{s.offered:,.4g}", num_text(s.achieved_rps, ",.1f"), num_text(s.p50_ms, ",.4g"),
           num_text(s.p99_ms, ",.4g")]
    if server:
        row += [num_text(s.server_p50_ms, ",.4g"), num_text(s.server_p99_ms, ",.4g")]
    return [*row, num_text(None if s.error_rate is None else s.error_rate * 100, ".2f", " %"), s.verdict,
            _why(s)]


def _why(s: CapacityStep) -> str:
    """The step's reasons as stored (a fail's broken objectives, saturation, errors, harness), '; '-joined."""
    return "; ".join(s.reasons) or ("SLO met" if s.verdict == "pass" else MISSING)


def _head(server: bool) -> list[str]:
    return [h for h in _HEAD if server or not h.startswith("server")]


def _by_offered(cap: CapacityReport) -> list[CapacityStep]:
    return sorted(cap.steps, key=lambda s: (s.offered, s.step))


def _findings(cap: CapacityReport) -> list[str]:
    unit = _offered_unit(cap)
    knee, best = cap.knee, cap.best
    out = [f"knee: {knee.offered:,.4g} {unit} offered, {num_text(knee.achieved_rps, ',.1f')} req/s achieved, "
           f"p99 {num_text(knee.p99_ms, '.3g')} ms (step {knee.step}; most ok req/s per ms of p99)" if knee else
           "knee: not reached (latency still rising slower than throughput at the highest load, or < 3 steps)",
           f"highest load that met the SLO: {best.offered:,.4g} {unit} ({num_text(best.achieved_rps, ',.1f')} "
           f"req/s achieved, step {best.step})" if best else "highest load that met the SLO: none"]
    if cap.info.get("slo"):
        out.append(f"SLO: {cap.info['slo']}")
    verdict = cap.info.get("verdict")  # what the sweep printed: its capacity, the replica plan, the model's
    if isinstance(verdict, list):
        out += [str(line) for line in verdict]
    return out


def render_capacity(cap: CapacityReport, console: Console) -> None:
    """Every step as a table (by offered load), then the knee and the highest load under the SLO."""
    from rich.markup import escape
    from rich.table import Table

    server = cap.has_server
    t = Table(title=f"capacity: {escape(str(cap.info.get('scenario_name', '')))} ({_offered_unit(cap)} offered)",
              title_justify="left")
    for h in _head(server):
        t.add_column(h, justify="left" if h in ("verdict", "why") else "right")
    for s in _by_offered(cap):
        colour = {"pass": "green", "fail": "red"}.get(s.verdict, "yellow")
        *nums, verdict, why = _cells(s, server)
        t.add_row(*nums, f"[{colour}]{escape(verdict)}[/]", escape(why))
    console.print(t)
    for line in _findings(cap):
        console.print(escape(line))


def capacity_markdown(cap: CapacityReport) -> str:
    server = cap.has_server
    lines = [f"### bench capacity: {cell(cap.info.get('scenario_name', ''))}", ""]
    lines += [f"- {cell(x)}" for x in _findings(cap)]
    lines += ["", *_table(_head(server), [[cell(c) for c in _cells(s, server)] for s in _by_offered(cap)],
                          "right"), ""]
    return "\n".join(lines)


def _line(name: str, steps: list[CapacityStep], x: str, y: str, color: str, unit: str,
          dashed: bool = False) -> Line | None:
    pts = [(getattr(s, x), getattr(s, y)) for s in steps if getattr(s, x) is not None and getattr(s, y) is not None]
    if not pts:
        return None
    return Line(name, [float(a) for a, _ in pts], [float(b) for _, b in pts], color, unit,
                [f"step {s.step}" for s in steps if getattr(s, x) is not None and getattr(s, y) is not None],
                dashed=dashed)


def _latency_cap(steps: list[CapacityStep], *keep: CapacityStep | None) -> float | None:
    """A y limit that keeps the curve up to the knee / highest pass readable: 4× the highest p99 up to them,
    when overloaded steps go far beyond it (their values stay in the table); None when nothing needs clipping."""
    upto = max((s.offered for s in keep if s is not None), default=None)
    if upto is None:
        return None
    base = max((s.p99_ms for s in steps if s.offered <= upto and s.p99_ms is not None), default=None)
    top = max((s.p99_ms for s in steps if s.p99_ms is not None), default=None)
    if base is None or top is None or top <= 6 * base:
        return None
    return 4 * base


def capacity_html(cap: CapacityReport) -> str:
    """The capacity page as one string."""
    e = html.escape
    steps = _by_offered(cap)
    unit = _offered_unit(cap)
    knee, best = cap.knee, cap.best
    name = str(cap.info.get("scenario_name", ""))
    lat = [ln for ln in (
        _line("p50", steps, "achieved_rps", "p50_ms", _COLORS[0], "ms"),
        _line("p99", steps, "achieved_rps", "p99_ms", _COLORS[1], "ms"),
        _line("server p50", steps, "achieved_rps", "server_p50_ms", _COLORS[2], "ms", dashed=True),
        _line("server p99", steps, "achieved_rps", "server_p99_ms", _COLORS[3], "ms", dashed=True)) if ln]
    y_cap = _latency_cap(steps, knee, best)
    marks_x = [(s.achieved_rps, label) for s, label in ((knee, "knee"), (best, "highest under SLO"))
               if s is not None and s.achieved_rps is not None]
    marks_o = [(s.offered, label) for s, label in ((knee, "knee"), (best, "highest under SLO")) if s is not None]
    thr = [ln for ln in (_line("achieved", steps, "offered", "achieved_rps", _COLORS[0], "req/s"),) if ln]
    if unit == "req/s" and steps:
        xs = [s.offered for s in steps]
        thr.append(Line("offered (ideal)", xs, xs, _COLORS[6], "req/s", dashed=True))
    err = [Line("error rate", [s.offered for s in steps if s.error_rate is not None],
                [s.error_rate * 100 for s in steps if s.error_rate is not None], _COLORS[1], "%")]
    server = cap.has_server
    cards = [(k, v) for k, v in (
        ("steps", str(len(steps))),
        ("knee", f"{knee.offered:,.4g} {unit}" if knee else MISSING),
        ("highest under SLO", f"{best.offered:,.4g} {unit}" if best else MISSING),
        ("best achieved", num_text(max((s.achieved_rps for s in steps if s.achieved_rps is not None), default=None),
                                   ",.1f", " req/s")))]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>bench capacity: {e(name)}</title>", f"<style>{_CSS}</style>", "</head><body><main>",
           f"<h1>bench capacity: {e(name)}</h1>",
           '<div class="cards">' + "".join(f'<div class="card"><div class="k">{e(k)}</div><div class="v">{e(v)}'
                                           "</div></div>" for k, v in cards) + "</div>",
           '<ul class="reasons">' + "".join(f"<li>{e(x)}</li>" for x in _findings(cap)) + "</ul>",
           "<h2>Latency vs throughput</h2>",
           '<div class="panel">' + line_chart(
               "Latency vs achieved throughput" + (" (y axis clipped: see the table)" if y_cap is not None else ""),
               lat, x_label="achieved req/s",
               y_label="latency (ms)", marks=marks_x, y_max=y_cap) + "</div>",
           "<h2>Achieved vs offered</h2>",
           '<div class="panel">' + line_chart(f"Achieved throughput vs offered load ({unit})", thr,
                                               x_label=f"offered ({unit})", y_label="achieved req/s",
                                               marks=marks_o) + "</div>",
           '<div class="panel">' + line_chart("Errors vs offered load", err, x_label=f"offered ({unit})",
                                               y_label="error rate (%)", marks=marks_o) + "</div>",
           "<h2>Steps</h2>",
           _grid_table(_head(server), [[e(c) for c in _cells(s, server)] for s in steps])]
    if server:
        out.append("<p>Server percentiles are at histogram-bucket resolution; the client − server gap is network "
                   "+ queueing outside the handler.</p>")
    out += ["<footer>Generated by bench. Client latency is from each request's intended send time; the knee is "
            "the step with the most ok req/s per ms of p99.</footer>", "</main></body></html>"]
    return "\n".join(out)

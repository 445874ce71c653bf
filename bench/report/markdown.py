"""Markdown views: a run report for a CI step summary, a comparison for a PR comment.

GitHub renders HTML inside Markdown, so every text that came from a run (scenario names, error details) is
HTML-escaped and table cells have their pipes and newlines neutralised.
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.report.compare import Comparison, MetricDelta, format_change
from bench.report.model import Report
from bench.report.slo import SloResult
from bench.report.summary import (
    MISSING,
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

__all__ = ["append_step_summary", "cell", "comparison_markdown", "report_markdown", "stored_slo"]


def cell(value: object) -> str:
    """Safe text for a Markdown table cell."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ").replace("`", "\\`")


def _table(head: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    spec = [("---:" if i and align == "right" else "---") for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(spec) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def stored_slo(report: Report) -> SloResult | None:
    """The SLO result `bench run` stored in the report's metadata (extra['slo']), if any."""
    data = report.meta.extra.get("slo")
    if not isinstance(data, Mapping):
        return None
    try:
        return SloResult.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None


def _load_text(load: Mapping[str, Any]) -> str:
    mode = load.get("mode", "")
    parts = [str(mode)] if mode else []
    for key, fmt in (("concurrency", "concurrency {}"), ("rate", "{} req/s"), ("arrival", "{} arrivals"),
                     ("duration_s", "{} s"), ("warmup_s", "warm-up {} s"), ("processes", "{} processes")):
        v = load.get(key)
        if v and not (key == "processes" and v == 1) and not (key == "arrival" and mode == "closed"):
            parts.append(fmt.format(v))
    return ", ".join(parts)


def report_markdown(report: Report) -> str:
    """The run in a few tables: headline numbers, both latency views, errors, verdicts."""
    s = summarize(report)
    meta = report.meta
    lines = [f"### bench run: {cell(meta.scenario_name)}", ""]
    if s["partial"]:
        lines += ["> **Partial run** (interrupted): the figures cover only the part that ran.", ""]
    if s["failed"]:
        lines += [f"> **Run failed:** {cell(s['failed'])}", ""]
    lines += _table(["requests", "errors", "req/s", "rows/s", "measured", "dropped"],
                    [[f"{s['requests']:,}", f"{s['errors']:,} ({rate_text(s['error_rate'])})",
                      num_text(s["rps"], ",.1f"), num_text(s["rows_per_s"], ",.1f"), f"{s['duration_s']:.1f} s",
                      f"{s['dropped']:,}"]], "right")
    behind = fell_behind_text(s)
    if behind:
        lines += ["", f"> {cell(behind[0].upper() + behind[1:])}."]
    lines += [line for note in s["resent_notes"] for line in ("", f"> {cell(note[0].upper() + note[1:])}.")]
    lines += ["", "**Latency (ms, ok requests)**", ""]
    rows = [[label, *(num_text(s[key][k]) for k in ("p50", "p90", "p99", "p999", "max"))]
            for label, key in (("from intended time", "latency_ms"), ("service (sent→done)", "service_ms"))]
    if s["server_ms"] is not None:
        rows.append([SERVER_LABEL, *(num_text(s["server_ms"].get(k)) for k in ("p50", "p90", "p99", "p999", "max"))])
    lines += _table(["view", "p50", "p90", "p99", "p99.9", "max"], rows, "right")
    if s["server_ms"] is not None:
        lines += ["", cell(outside_handler_text(s))]
    lines += [line for note in server_notes(s) for line in ("", f"> {cell(note)}")]
    if s["other_ms"]:
        lines += ["", f"**{OTHER_TITLE[0].upper()}{OTHER_TITLE[1:]}**", ""]
        lines += _table(["timing", *OTHER_COLUMNS], [[cell(label), *figures] for label, *figures in other_rows(s)],
                        "right")
    if s["errors_by_kind"]:
        lines += ["", "**Errors by kind**", ""]
        samples = {e["kind"]: e["sample"] for e in s["top_errors"]}
        lines += _table(["kind", "count", "sample of the reason"],
                        [[cell(k), f"{n:,}", cell(samples.get(k, "")) or MISSING]
                         for k, n in sorted(s["errors_by_kind"].items(), key=lambda kv: -kv[1])], "right")
    lines += [""]
    slo = stored_slo(report)
    if slo is not None:
        lines.append(f"**SLO: {'passed' if slo.passed else 'FAILED'}**")
        lines += [f"- {'✅' if r.passed else '❌'} {cell(r.describe())}" for r in slo.results]
        lines.append("")
    if meta.generator_bound:
        lines.append("**Generator-bound**: the numbers may describe the harness, not the endpoint.")
        lines += [f"- {cell(r)}" for r in meta.generator_bound_reasons]
    elif judged(meta):
        lines.append("Generator-bound: no.")
    else:
        lines.append(f"Generator-bound: {NOT_JUDGED}.")
    host = meta.target.get("host")  # a Host header: the route measured, the URL only the address
    details = [f"target {cell(meta.target.get('kind', ''))} {cell(meta.target.get('url', ''))}".strip()
               + (f" (Host {cell(str(host))})" if host else ""),
               f"load {cell(_load_text(meta.load))}", f"bench {cell(meta.bench_version)}",
               f"host {cell(meta.host)}", f"start {cell(meta.start_utc)}"]
    lines += ["", "<sub>" + " · ".join(d for d in details if d.split(" ", 1)[-1]) + "</sub>", ""]
    return "\n".join(lines)


def _row(m: MetricDelta) -> list[str]:
    def num(v: float | None) -> str:
        if v is None:
            return MISSING
        if m.metric.absolute:
            return f"{v * 100:.2f} %"
        return f"{v:,.3f}" if v < 1000 else f"{v:,.1f}"

    limit = "—" if m.threshold is None else (f"{m.threshold * 100:g} pp" if m.metric.absolute
                                             else f"{m.threshold * 100:g} %")
    noise = "not judged" if m.significant is None else ("significant" if m.significant else "within noise")
    verdict = ("❌ regression" if m.regression else "⚠️ over limit, noise" if m.beyond_threshold
               else "no samples, not judged" if m.missing else "ok")
    return [cell(m.metric.label), num(m.base), num(m.new), format_change(m), limit, noise, verdict]


def comparison_markdown(cmp: Comparison, base_name: str, new_name: str) -> str:
    """A PR-comment-ready comparison: verdict first, then every metric."""
    head = (f"### bench compare: ❌ {cell(cmp.verdict())}" if cmp.regressed
            else "### bench compare: ✅ no regression")
    lines = [head, "", f"base `{cell(base_name)}` → new `{cell(new_name)}`", ""]
    lines += [f"> ⚠️ **warning:** {cell(w)}" for w in cmp.warnings]
    lines += [""] if cmp.warnings else []
    lines += _table(["metric", "base", "new", "change", "allowed", "noise", "verdict"],
                    [_row(m) for m in cmp.metrics], "right")
    lines += ["", f"<sub>noise: moving-block bootstrap over per-second windows ({cmp.base_windows} base, "
              f"{cmp.new_windows} new), {cmp.confidence * 100:g} % one-sided; a regression is worse than allowed "
              "and significant.</sub>"]
    lines += [f"> {cell(n)}" for n in cmp.notes]
    lines.append("")
    return "\n".join(lines)


def append_step_summary(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when it is set (GitHub Actions); returns the file written, if any."""
    target = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def append_step_summary_or_warn(make_text: Callable[[], str]) -> Path | None:
    """``append_step_summary`` for a command whose own result stands whatever happens to the summary: the text is
    made only when $GITHUB_STEP_SUMMARY is set, and a file that cannot be written is a warning on stderr."""
    if not os.environ.get("GITHUB_STEP_SUMMARY"):
        return None
    try:
        return append_step_summary(make_text())
    except OSError as exc:
        print(f"bench: warning: cannot append to $GITHUB_STEP_SUMMARY: {exc.strerror or exc}", file=sys.stderr)
        return None

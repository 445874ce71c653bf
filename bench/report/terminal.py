"""Terminal views (rich): a stored report with its metadata and SLO result, and a comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.report.compare import Comparison, format_change
from bench.report.markdown import stored_slo
from bench.report.model import Report
from bench.report.summary import MISSING, render_summary

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["render_comparison", "render_report"]


def render_report(report: Report, console: Console) -> None:
    """Header (scenario, time, host, load) + the end-of-run summary + the stored SLO result."""
    from rich.markup import escape

    meta = report.meta
    load = ", ".join(f"{k}={v}" for k, v in meta.load.items() if v not in (None, "", 0, [], {}))
    console.print(f"[bold]{escape(meta.scenario_name)}[/]  {escape(meta.start_utc)}  host {escape(meta.host)}  "
                  f"bench {escape(meta.bench_version)}")
    if load:
        console.print(f"load: {escape(load)}")
    render_summary(report, console)
    slo = stored_slo(report)
    if slo is not None:
        style = "green" if slo.passed else "bold red"
        first, *rest = slo.render().splitlines()
        console.print(f"[{style}]{escape(first)}[/]")
        for line in rest:
            console.print(escape(line))


def render_comparison(cmp: Comparison, console: Console, base_name: str, new_name: str) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{escape(base_name)} → {escape(new_name)}", title_justify="left", box=box.SIMPLE_HEAD)
    for col, just in (("metric", "left"), ("base", "right"), ("new", "right"), ("change", "right"),
                      ("allowed", "right"), ("noise", "left"), ("verdict", "left")):
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for m in cmp.metrics:
        def num(v: float | None, absolute: bool = m.metric.absolute) -> str:
            if v is None:
                return MISSING
            return f"{v * 100:.2f} %" if absolute else (f"{v:,.3f}" if v < 1000 else f"{v:,.1f}")

        allowed = "—" if m.threshold is None else (f"{m.threshold * 100:g} pp" if m.metric.absolute
                                                   else f"{m.threshold * 100:g} %")
        noise = "n/a" if m.significant is None else ("signif." if m.significant else "noise")
        verdict = ("[bold red]REGRESSION[/]" if m.regression else "[yellow]noise[/]" if m.beyond_threshold
                   else "no samples" if m.missing else "ok")
        t.add_row(m.key, num(m.base), num(m.new), format_change(m), allowed, noise, verdict)
    console.print(t)
    for w in cmp.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}")
    for n in cmp.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    console.print(f"[bold red]{escape(cmp.verdict())}[/]" if cmp.regressed else "[green]no regression[/]")

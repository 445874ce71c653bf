"""`bench report RUN.arrow [--html PATH] [--markdown PATH]`: look at a stored run (or a capacity report)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "write_view"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="show a run or capacity report; write HTML / Markdown views",
                              description="Print a stored run as tables; optionally write a self-contained HTML "
                              "page (plots, no network) and Markdown (also appended to $GITHUB_STEP_SUMMARY "
                              "when that variable is set).")
    p.add_argument("report", metavar="RUN.arrow")
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML page with plots")
    p.add_argument("--markdown", metavar="PATH", help="write Markdown (e.g. for a CI step summary)")
    p.add_argument("--json", action="store_true",
                   help="print the run's summary as JSON (the object `bench run --json` prints) instead of tables; "
                   "a capacity report prints its steps and findings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.outpath import output_file, refuse_overwriting_inputs
    from bench.report.capacity_report import is_capacity_report
    from bench.report.console import make_console
    from bench.report.markdown import append_step_summary_or_warn, report_markdown
    from bench.report.reader import read_report
    from bench.report.terminal import render_report

    for flag, path in (("--html", args.html), ("--markdown", args.markdown)):
        refuse_overwriting_inputs(path, [args.report], flag=flag)
        if path:
            output_file(path, flag=flag, stream=True)  # a directory or socket refused before the report is read
    console = make_console(stderr=args.json)  # with --json, stdout holds the JSON alone
    if is_capacity_report(args.report):
        return _capacity(args, console)
    report = read_report(Path(args.report))
    if args.json:
        _print_json(_summary(report))
    else:
        render_report(report, console)
    md = report_markdown(report)
    for flag, path, text in (("--html", args.html, None), ("--markdown", args.markdown, md)):
        if not path:
            continue
        if text is None:
            from bench.report.html import render_html

            text = render_html(report)
        write_view(path, text, flag)
        console.print(f"{flag[2:]}: {path}")
    written = append_step_summary_or_warn(lambda: md)  # an unwritable summary is a warning: the report stands
    if written is not None:
        console.print(f"appended to $GITHUB_STEP_SUMMARY ({written})")
    return 0


def _capacity(args: argparse.Namespace, console: Any) -> int:
    """A capacity report: the steps as a table; HTML draws the latency–throughput curve."""
    from bench.report.capacity_report import read_capacity_report
    from bench.report.capacity_views import capacity_html, capacity_markdown, render_capacity
    from bench.report.markdown import append_step_summary_or_warn

    cap = read_capacity_report(args.report)
    if args.json:
        from dataclasses import asdict

        _print_json({**cap.info, "steps": [asdict(s) for s in cap.steps]})
    else:
        render_capacity(cap, console)
    md = capacity_markdown(cap)
    for flag, path, render in (("--html", args.html, capacity_html), ("--markdown", args.markdown, None)):
        if path:
            write_view(path, render(cap) if render is not None else md, flag)
            console.print(f"{flag[2:]}: {path}")
    append_step_summary_or_warn(lambda: md)
    return 0


def write_view(path: str, text: str, flag: str) -> None:
    """Write a rendered view (HTML, Markdown), creating its folder; a failure is an InputError naming ``flag``.
    Written in place (through a symlink, or into a FIFO or /dev/stdout); a directory is refused (bench.outpath)."""
    from bench.errors import InputError
    from bench.outpath import output_file

    target = output_file(path, flag=flag, stream=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", file=path, key=flag) from None


def _summary(report: Any) -> dict[str, Any]:
    """What `bench run --json` printed for this run: the summary, its report path and the stored SLO result."""
    from bench.report.markdown import stored_slo
    from bench.report.summary import summarize

    out = summarize(report)
    slo = stored_slo(report)
    if slo is not None:
        out["slo"] = slo.to_dict()
    return out


def _print_json(doc: Any) -> None:
    import sys

    import orjson

    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
                                  default=str).decode() + "\n")

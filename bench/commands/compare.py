"""`bench compare BASE.arrow NEW.arrow`: deltas and a noise-aware regression verdict (exit 1 on regression)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="compare two runs; exit 1 on a significant regression",
                              description="Side-by-side deltas of two reports. A metric regresses when it is "
                              "worse than allowed AND the change is significant against the per-second noise "
                              "(moving-block bootstrap). Runs of different tests (scenario, load or target "
                              "differ) are refused unless --force, and so is a failed base run. A new run with no "
                              "successful answer is a regression whatever the thresholds. Exit 0: no regression, "
                              "1: regression, 2: bad input or not the same test.")
    p.add_argument("base", metavar="BASE.arrow")
    p.add_argument("new", metavar="NEW.arrow")
    p.add_argument("--max-regression", metavar="LIMITS", default=None,
                   help="allowed worsening per metric, merged over the defaults p50=10%%,p99=10%%,rps=5%%,"
                   "error_rate=0.5pp; metrics: p50 p90 p99 p999 max, service_p50 … service_max, rps, "
                   "rows_per_s, error_rate; 'off' disables one")
    p.add_argument("--markdown", metavar="PATH", help="write the comparison as Markdown (PR comment)")
    p.add_argument("--force", action="store_true", help="compare runs of different tests (another scenario name, "
                   "load mode, concurrency, rate, stages, arrival, rows_per_request, processes, max_in_flight or "
                   "target URL/Host) instead of refusing them (exit 2); the differences are printed as warnings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.commands.report import write_view
    from bench.errors import EXIT_OK, EXIT_SLO, InputError
    from bench.outpath import output_file, refuse_overwriting_inputs
    from bench.report.compare import compare_reports, differences, failed_run, parse_thresholds
    from bench.report.console import make_console
    from bench.report.markdown import append_step_summary_or_warn, comparison_markdown
    from bench.report.reader import read_report
    from bench.report.terminal import render_comparison

    refuse_overwriting_inputs(args.markdown, [args.base, args.new], flag="--markdown")
    if args.markdown:
        output_file(args.markdown, flag="--markdown", stream=True)  # a directory refused before reading reports
    thresholds = parse_thresholds(args.max_regression)
    base, new = read_report(Path(args.base)), read_report(Path(args.new))
    differ = differences(base, new)
    if differ and not args.force:  # a regression gate must not pass or fail a run against another test
        raise InputError(f"not the same test as {args.base}: " + "; ".join(differ) + " (--force compares anyway)",
                         file=args.new)
    base_failed = failed_run(base)
    if base_failed and not args.force:  # every change would read as an improvement over nothing
        raise InputError(f"the base run failed ({base_failed}): it is no baseline (--force compares anyway)",
                         file=args.base)
    cmp = compare_reports(base, new, thresholds)
    if base_failed:
        cmp.warnings.append(f"the base run failed ({base_failed})")
    console = make_console()
    render_comparison(cmp, console, args.base, args.new)
    md = comparison_markdown(cmp, Path(args.base).name, Path(args.new).name)
    if args.markdown:
        write_view(args.markdown, md, "--markdown")
    append_step_summary_or_warn(lambda: md)  # a warning, never exit 1: that means "regression" to a CI gate
    return EXIT_SLO if cmp.regressed else EXIT_OK

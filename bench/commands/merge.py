"""`bench merge A.arrow B.arrow … -o ALL.arrow`: exact merge of reports made at the same time."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("merge", help="merge reports from runs made at the same time (hosts/processes)",
                              description="Exactly merge histograms, per-second series (aligned by wall-clock "
                              "second), counters and errors of several reports into one.")
    p.add_argument("reports", nargs="+", metavar="REPORT.arrow")
    p.add_argument("-o", "--out", required=True, metavar="ALL.arrow", help="merged report to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.report.merge import merge_reports
    from bench.report.reader import read_report
    from bench.report.writer import write_report

    reports = [read_report(Path(p)) for p in args.reports]
    merged = merge_reports(reports)
    out = write_report(Path(args.out), merged)
    s = merged.run.total("measured")
    print(f"merged {len(reports)} reports: {s.requests:,} measured requests, {s.errors:,} errors -> {out}")
    return 0

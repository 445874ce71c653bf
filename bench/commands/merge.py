"""`bench merge A.arrow B.arrow … -o ALL.arrow`: exact merge of reports made at the same time."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    from bench.commands.argtypes import not_empty

    p = subparsers.add_parser("merge", help="merge reports from runs made at the same time (hosts/processes)",
                              description="Exactly merge histograms, per-second series (aligned by wall-clock "
                              "second), counters and errors of several reports into one. Refuses (exit 2) "
                              "reports of different scenarios, load modes or target kinds (runs against other URLs "
                              "merge: the merged report names the first's), the same run twice, or runs not "
                              "made at the same time (each run's measured window must share at least half of the "
                              "shorter with the others'), unless --force.")
    p.add_argument("reports", nargs="+", metavar="REPORT.arrow")
    p.add_argument("-o", "--out", required=True, type=not_empty, metavar="ALL.arrow", help="merged report to write")
    p.add_argument("--force", action="store_true", help="merge reports that do not belong together (different "
                   "scenarios, load modes or target kinds, one run given twice, or runs not made at the same time); "
                   "the reason is printed and kept in the merged report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from bench.outpath import check_report_path, refuse_overwriting_inputs
    from bench.report.merge import merge_problems, merge_reports
    from bench.report.reader import read_report
    from bench.report.writer import write_report

    refuse_overwriting_inputs(args.out, args.reports, flag="--out")
    reports = [read_report(Path(p)) for p in args.reports]
    merged = merge_reports(reports, force=args.force)
    # a directory or an unwritable place: one line, exit 2 (not a traceback); missing folders are created, once
    # the inputs are known to merge
    check_report_path(Path(args.out))
    for problem in merge_problems(reports) if args.force else []:
        print(f"bench merge: warning: merging anyway (--force): {problem}", file=sys.stderr)
    out = write_report(Path(args.out), merged)
    s = merged.run.total("measured")
    print(f"merged {len(reports)} reports: {s.requests:,} measured requests, {s.errors:,} errors -> {out}")
    return 0

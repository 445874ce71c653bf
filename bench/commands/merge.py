"""`bench merge A.arrow B.arrow … -o ALL.arrow`: exact merge of reports made at the same time."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("merge", help="merge reports from runs made at the same time (hosts/processes)",
                              description="Exactly merge histograms, per-second series (aligned by wall-clock "
                              "second), counters and errors of several reports into one. Refuses (exit 2) "
                              "reports of different scenarios, load modes or targets, or the same run twice, "
                              "unless --force.")
    p.add_argument("reports", nargs="+", metavar="REPORT.arrow")
    p.add_argument("-o", "--out", required=True, metavar="ALL.arrow", help="merged report to write")
    p.add_argument("--force", action="store_true", help="merge reports that do not belong together (different "
                   "scenarios, load modes or targets, or one run given twice); the reason is printed and kept "
                   "in the merged report")
    p.set_defaults(func=run)


def _refuse_out_among_inputs(out: Path, inputs: list[Path]) -> None:
    """Writing the merge over one of its parts would replace that run's report with the merge: refused."""
    from bench.errors import InputError

    if not out.exists():
        return
    for p in inputs:
        if p.exists() and os.path.samefile(p, out):
            raise InputError(f"{out} is also one of the reports to merge; writing there would replace that run's "
                             "report: give another path", key="--out")


def run(args: argparse.Namespace) -> int:
    import sys

    from bench.outpath import check_report_path
    from bench.report.merge import merge_problems, merge_reports
    from bench.report.reader import read_report
    from bench.report.writer import write_report

    check_report_path(Path(args.out))  # a directory or an unwritable place: one line, exit 2 (not a traceback)
    _refuse_out_among_inputs(Path(args.out), [Path(p) for p in args.reports])
    reports = [read_report(Path(p)) for p in args.reports]
    merged = merge_reports(reports, force=args.force)
    for problem in merge_problems(reports) if args.force else []:
        print(f"bench merge: warning: merging anyway (--force): {problem}", file=sys.stderr)
    out = write_report(Path(args.out), merged)
    s = merged.run.total("measured")
    print(f"merged {len(reports)} reports: {s.requests:,} measured requests, {s.errors:,} errors -> {out}")
    return 0

"""`bench recover FILE`: turn the checkpoint of a killed run (``kill -9``, OOM, power loss) into a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    from bench.commands.argtypes import not_empty

    p: argparse.ArgumentParser = sub.add_parser(
        "recover", help="turn a killed run's checkpoint into a report (marked partial)",
        description="FILE is the killed run's --out report path, or its checkpoint (.NAME.arrow.checkpoint).")
    p.add_argument("file", help="the report path the killed run was writing, or its checkpoint file")
    p.add_argument("--out", "-o", type=not_empty, help="where to write the recovered report (default: the run's "
                   "report path)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from bench.checkpoint import checkpoint_path, recover_to, report_path_for
    from bench.errors import EXIT_OK, InputError
    from bench.outpath import check_report_path

    given = Path(args.file)
    if given.name.endswith(".checkpoint"):
        ckpt, default_out = given, report_path_for(given)
    else:
        ckpt, default_out = checkpoint_path(given), given
    if not ckpt.exists():
        raise InputError(f"no checkpoint found (looked for {ckpt})", file=str(given))
    out = Path(args.out) if args.out else default_out
    if out.exists() and not args.out:
        raise InputError(f"{out} already exists; choose where to write with --out", key="--out")
    check_report_path(out)
    report = recover_to(ckpt, out)
    total = report.run.total()
    print(f"recovered {report.meta.extra['recovered']['seconds']:.1f} s of {report.meta.scenario_name!r}: "
          f"{total.requests:,} requests, {total.ok:,} ok, {total.errors:,} errors (partial) → {out}")
    return EXIT_OK

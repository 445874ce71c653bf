"""`bench data`: make datasets. ``bench data ccfraud --rows N --seed S --out PATH`` writes the synthetic
credit-card set (targets.md §4) as pandas-records JSON, Arrow IPC or Parquet, chosen by the extension."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


MAX_ROWS = 1_000_000  # about 1 GB of memory at the peak while generating (4 s); 1e11 rows asked for 21 TiB


def _rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_ROWS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_ROWS:,}, got {value:,}")
    return value


def register(subparsers: Any) -> None:
    from bench.commands.argtypes import not_empty, seed

    parser = subparsers.add_parser("data", help="generate datasets (synthetic ccfraud)",
                                   description="Generate datasets for load tests.")
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET")
    cc = kinds.add_parser("ccfraud", help="synthetic credit-card fraud rows: tensor = 29 float32 features",
                          description="Synthetic, seeded stand-in for the platforms' ccfraud tutorial data: one "
                          "column `tensor` of 29 standardised float32 features with heavy tails, ~0.2 % "
                          "fraud-like rows. Output format follows --out: .df.json/.json (pandas-records), "
                          ".arrow/.feather (Arrow IPC file), .arrows (IPC stream), .parquet.")
    cc.add_argument("--rows", type=_rows, default=1001, help="number of rows, 1 to "
                    f"{MAX_ROWS:,} (default 1001, like the tutorials)")
    cc.add_argument("--seed", type=seed, default=42, help="random seed (default 42)")
    cc.add_argument("--out", required=True, type=not_empty, help="output file; its extension picks the format")
    cc.set_defaults(func=_ccfraud)
    parser.set_defaults(func=lambda args: parser.error("give a DATASET: ccfraud"))  # one line, exit 2


def _ccfraud(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.data import generate_ccfraud, write_dataset
    from bench.errors import InputError
    from bench.outpath import output_file

    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError("directory does not exist", file=str(out.parent), key="--out")
    output_file(out, flag="--out")  # a FIFO or device is refused (bench.outpath); a symlink is written through
    table = generate_ccfraud(args.rows, args.seed)
    write_dataset(table, out)
    print(f"wrote {table.num_rows} rows (seed {args.seed}) to {out} ({out.stat().st_size:,} bytes)")
    return 0

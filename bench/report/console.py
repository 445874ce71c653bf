"""The rich Console every command prints with: as wide as the terminal, and wide enough when piped.

Piped output (CI logs, `| tee`) has no terminal width; rich then falls back to 80 columns, which ellipsised the
compare table's verdict ("REGRESSI…") and broke the summary's lines. CI is the main reader of piped output, so
without a terminal the width is $COLUMNS when set, else ``PIPE_WIDTH``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["PIPE_WIDTH", "make_console", "pipe_width"]

PIPE_WIDTH = 160


def pipe_width(is_terminal: bool, environ: Mapping[str, str]) -> int | None:
    """The width to force, or None to let rich decide (a terminal, or $COLUMNS set: rich honours it)."""
    if is_terminal:
        return None
    columns = environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=highlight)
    width = pipe_width(console.is_terminal, os.environ)
    if width is not None:
        console.width = width
    return console

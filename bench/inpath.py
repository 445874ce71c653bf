"""Check a user-given input path (scenario, data set, body, report, checkpoint, token, CA bundle) BEFORE reading
it: a FIFO whose writer never closes blocks the read forever, and a device such as /dev/zero never ends, so the
read grew memory until the machine gave out. Only a regular file (a symlink to one included) is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.errors import InputError

__all__ = ["input_file", "input_problem", "node_kind", "read_input"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def node_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, for a message: 'a FIFO', 'a character device', ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def input_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file ('file not found', 'is a character device, not a file', ...),
    or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "file not found"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"is {node_kind(mode)}, not a file"


def input_file(path: str | Path, *, file: str | None = None, key: str | None = None) -> Path:
    """``path`` when it is a regular file, else InputError: on ``path`` itself, or (``key`` given) on ``file``'s
    ``key`` with the path in the message."""
    problem = input_problem(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}" if key else problem, file=file if key else str(path), key=key)
    return Path(path)


def read_input(path: str | Path, *, file: str | None = None, key: str | None = None) -> bytes:
    """The bytes of a checked input file (``input_file``); a read that fails is one line too."""
    p = input_file(path, file=file, key=key)
    try:
        return p.read_bytes()
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
        raise InputError(f"{path}: {problem}" if key else problem, file=file if key else str(path),
                         key=key) from None

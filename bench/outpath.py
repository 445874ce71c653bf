"""Check where results will go BEFORE any load is sent: a report path that turns out to be a directory, or a
directory bench cannot write, must not cost the whole run (exit 2, one line naming the flag and the problem).

Every writer of a user-given path goes through ``output_file``: an existing path that is not a regular file
(a FIFO, a device such as /dev/null, a socket, a directory) is refused, because the reports' atomic rename would
*replace* that node (as root, ``-o /dev/null`` destroyed /dev/null). A symlink is written through: its target
gets the file and the link stays, as with shell redirection, ``cp`` or ``curl -o`` (``reports/latest.arrow ->
run-42.arrow`` keeps working).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.errors import InputError
from bench.inpath import node_kind as _kind

__all__ = ["check_output_dir", "check_report_path", "output_file", "refuse_overwriting_inputs"]

def output_file(path: str | Path, *, flag: str | None = None, stream: bool = False) -> Path:
    """The regular file that writing ``path`` must replace or create: ``path`` itself, or the file a symlink there
    leads to (so a temp-and-rename replaces the target, never the link). An existing node that is not a regular
    file is refused (InputError naming ``flag``): renaming over it would destroy it, and writing into it (a FIFO,
    /dev/stdout) is not a report. ``stream``: a text view written in place (HTML, Markdown) may also go into a
    FIFO or a character device (``--markdown /dev/stdout``), as the shell's ``>`` would."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new file (a dangling link: its target is created, as
        return real  # `>` does); a parent in the way is the caller's to report
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}", key=flag) from None
    if stat.S_ISREG(mode) or (stream and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))):
        return real
    kind = _kind(mode)
    via = f" (a link to {real})" if real != path.absolute() else ""
    raise InputError(f"{path}{via} is {kind}, not a file", key=flag)


def _probe(directory: Path, flag: str, shown: Path) -> None:
    """Create and remove a file in ``directory``: the only honest test of 'writable' (permissions, read-only
    mounts, full disks, root squash)."""
    probe = directory / f".bench-probe-{os.getpid()}.tmp"
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        raise InputError(f"{shown}: cannot write in {directory}: {exc.strerror or exc}", key=flag) from None
    probe.unlink(missing_ok=True)


def check_report_path(path: Path, *, flag: str = "--out") -> None:
    """``path`` can take a report file: not a directory, parent directory present (missing ones are created, as
    for --html/--markdown and `bench data --out`) and writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file; give a report file path (e.g. "
                         f"{path / 'report.arrow'})", key=flag)
    real = output_file(path, flag=flag)
    parent = real.parent
    if not parent.exists():
        _make_parent(real, flag)
    elif not parent.is_dir():
        raise InputError(f"{path}: {parent} is not a directory", key=flag)
    if real.exists() and not os.access(real, os.W_OK):
        raise InputError(f"{path} exists and is not writable", key=flag)
    _probe(parent, flag, path)


def refuse_overwriting_inputs(out: str | Path | None, inputs: list[str], *, flag: str) -> None:
    """An output that is one of the command's input reports would replace a run's report (`bench merge a b -o b`,
    `bench report r.arrow --html r.arrow`): refused, one line naming ``flag``."""
    if not out or not Path(out).exists():
        return
    for p in inputs:
        if Path(p).exists() and os.path.samefile(p, out):
            raise InputError(f"{out} is also an input report; writing there would replace that run's report: "
                             "give another path", key=flag)


def check_output_dir(path: Path, *, flag: str = "--out") -> None:
    """``path`` can be (or become) a directory of reports bench writes into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is {'a file' if path.is_file() else _kind(path.stat().st_mode)}, not a directory",
                         key=flag)
    parent = path.parent
    if not path.exists() and not parent.is_dir():
        _make_parent(path, flag)
    _probe(path if path.is_dir() else parent, flag, path)


def _make_parent(path: Path, flag: str) -> None:
    """The missing directories ``path`` goes in, made (what users expect of an output path); a place where they
    cannot be made (a file in the way, permissions, a read-only mount) is one line naming ``flag``."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create {parent}: {exc.strerror or exc}", key=flag) from None

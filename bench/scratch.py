"""Scratch directories that a killed process does not leave behind for good.

Why: a process killed with SIGKILL (a CI job's timeout that kills the whole process tree, an OOM kill, ``kill -9``)
cannot remove its temporary directory. Each such kill left a ``bench-*`` directory in the temp folder for good,
with whatever part reports and raw request logs it held, and those can be large. The directory's name carries its
owner's pid and pid namespace; the next bench process that makes one of the same kind removes those whose owner is
gone. A pid from another namespace (a container sharing /tmp) is never
judged, so a live run's directory is never taken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["scratch_dir"]


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A ``TemporaryDirectory`` named ``bench-<kind>-<ns>-<pid>-…``, after removing that kind's orphans."""
    prefix = f"bench-{kind}-{_namespace()}-"
    _remove_orphans(Path(tempfile.gettempdir()), prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def _namespace() -> str:
    """This process's pid namespace (its inode on Linux), so pids are only compared within one namespace."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _remove_orphans(base: Path, prefix: str) -> None:
    if os.name != "posix":
        return  # os.kill(pid, 0) is a liveness test only on POSIX (on Windows it sends Ctrl-C)
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for path in base.glob(f"{prefix}*-*"):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                if path.lstat().st_uid != uid:
                    continue
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process (PermissionError), or unknowable: keep its directory
    return True

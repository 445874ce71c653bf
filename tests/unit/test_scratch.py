"""Scratch directories: a SIGKILLed owner's directory is removed by the next bench process that makes one of its
kind; a live owner's, another kind's and another pid namespace's are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import scratch


@pytest.fixture
def tmpdir_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _killed_owner(base: Path, kind: str) -> Path:
    """A real process that made a scratch directory (with a file in it), then was SIGKILLed."""
    code = ("import sys; from bench.scratch import scratch_dir; d = scratch_dir(sys.argv[1]); "
            "open(d.name + '/part-0.arrow', 'wb').write(b'x' * 1000); print(d.name, flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": str(base)})
    try:
        assert proc.stdout is not None
        made = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert made.parent == base and (made / "part-0.arrow").exists()  # SIGKILL left it behind
    return made


@pytest.mark.skipif(os.name != "posix", reason="the orphan sweep is POSIX-only")
def test_a_killed_owners_directory_is_removed_by_the_next_of_its_kind(tmpdir_base: Path) -> None:
    orphan = _killed_owner(tmpdir_base, "workers")
    other_kind = _killed_owner(tmpdir_base, "locust-child")
    with scratch.scratch_dir("workers") as mine:
        assert Path(mine).name.startswith(f"bench-workers-{scratch._namespace()}-{os.getpid()}-")
        assert not orphan.exists()
        assert other_kind.exists()  # swept only by its own kind
        with scratch.scratch_dir("workers") as second:  # a live owner's directory is kept
            assert Path(mine).exists() and Path(second).exists()
    assert not Path(mine).exists()


@pytest.mark.skipif(os.name != "posix", reason="the orphan sweep is POSIX-only")
def test_directories_the_sweep_cannot_judge_are_kept(tmpdir_base: Path) -> None:
    ns = scratch._namespace()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(proc.stdout)  # exited: no such process (unless its pid was reused at once, which keeps the dir)
    foreign_ns = tmpdir_base / f"bench-workers-{ns}9-{dead}-abc"  # another pid namespace: its pids mean nothing here
    not_a_pid = tmpdir_base / f"bench-workers-{ns}-x{dead}-abc"
    dead_here = tmpdir_base / f"bench-workers-{ns}-{dead}-abc"
    for path in (foreign_ns, not_a_pid, dead_here):
        path.mkdir()
    with scratch.scratch_dir("workers"):
        assert foreign_ns.exists() and not_a_pid.exists()
        assert not dead_here.exists() or scratch._alive(dead)

"""Output paths that are not regular files, through the real CLI: a FIFO or a device given as an output is refused
before anything is written (exit 2, one line naming the flag, the path and what it is) and stays as it was — the
reports' atomic rename used to replace it (as root, `-o /dev/null` destroyed /dev/null). A symlink is written
through: the link stays and its target gets the report. Every node here is made under tmp_path (never /dev)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.reader import read_report

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def _device(path: Path) -> Path:
    """A character device node of our own (1,3: what /dev/null is); a FIFO where mknod is not allowed (not root).
    Either is what an atomic rename destroys; writing into the device is harmless."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        os.mkfifo(path)
    return path


def _same_node(path: Path, before: os.stat_result) -> bool:
    now = path.lstat()
    return stat.S_IFMT(now.st_mode) == stat.S_IFMT(before.st_mode) and now.st_ino == before.st_ino


def _refused(proc: subprocess.CompletedProcess[str], flag: str, path: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert flag in lines[0] and str(path) in lines[0] and ", not a file" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "embedded emulator" not in proc.stderr  # before any load


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_devices_and_fifos_are_refused_and_symlinks_written_through(tmp_path: Path) -> None:
    target = tmp_path / "real.arrow"
    link = tmp_path / "latest.arrow"
    target.write_bytes(b"an older report")
    link.symlink_to(target.name)
    proc = bench("run", "--url", "embedded", "-c", "1", "-n", "3", "-d", "5s", "--warmup", "0s", "-q",
                 "-o", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == target.name  # the link stays ...
    assert read_report(target).run.total().requests == 3  # ... and its target holds the report
    fifo, dev = tmp_path / "fifo", _device(tmp_path / "dev.arrow")  # an extension bench data accepts
    os.mkfifo(fifo)
    dev_link = tmp_path / "dev-link"
    dev_link.symlink_to(dev)
    (tmp_path / ".x.arrow.checkpoint").write_text("{}\n")  # recover checks -o before it reads this
    nodes = {p: p.lstat() for p in (fifo, dev, dev_link)}
    cases = [
        (["run", "--url", "embedded", "-c", "1", "-n", "3", "-q", "-o", str(fifo)], "--out", fifo),
        (["run", "--url", "embedded", "-c", "1", "-n", "3", "-q", "-o", str(dev_link)], "--out", dev_link),
        (["merge", str(target), "-o", str(fifo)], "--out", fifo),
        (["recover", str(tmp_path / "x.arrow"), "-o", str(dev)], "--out", dev),
        (["data", "ccfraud", "--rows", "5", "--out", str(dev)], "--out", dev),
        (["capacity", "scenarios/capacity.toml", "-q", "--out", str(tmp_path / "cap"), "--html", str(dev)],
         "--html", dev),
    ]
    for args, flag, path in cases:
        _refused(bench(*args), flag, path)
    report = tmp_path / "ok.arrow"  # a text view is written into the node in place (as `>` does): never replaced
    assert bench("run", "--url", "embedded", "-c", "1", "-n", "3", "-q", "-o", str(report)).returncode == 0
    for args in (["report", str(report), "--html", str(dev)], ["report", str(report), "--markdown", str(dev_link)],
                 ["compare", str(report), str(report), "--markdown", str(dev)]):
        proc = bench(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    for path, before in nodes.items():
        assert _same_node(path, before), f"{path} was replaced"
    assert dev_link.is_symlink() and os.readlink(dev_link) == str(dev)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_capacity_out_that_is_a_node_is_refused(tmp_path: Path, kind: str) -> None:
    node = tmp_path / "node"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        _device(node)
    proc = bench("capacity", "scenarios/capacity.toml", "-q", "--out", str(node))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--out" in lines[0], proc.stderr
    assert "not a directory" in lines[0] and ("FIFO" in lines[0] or "device" in lines[0]), lines[0]

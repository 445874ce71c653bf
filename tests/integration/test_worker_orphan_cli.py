"""A `--processes` worker whose parent is gone does not stay behind: the real worker entry point
(`python -m bench.workers PART PARENT_PID`, what `bench run --processes` starts), orphaned on purpose."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ORPHAN_MAKER = """
import os, subprocess, sys
proc = subprocess.Popen([sys.executable, "-m", "bench.workers", sys.argv[1], str(os.getpid())], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
proc.stdin.write(sys.stdin.buffer.read())
proc.stdin.close()
print(proc.pid, flush=True)
"""


def test_a_worker_whose_parent_is_gone_stops(tmp_path: Path) -> None:
    """A worker whose parent died without its PR_SET_PDEATHSIG signal acting (seen: a parent killed while its
    workers started up left one that waited for the start instant, then loaded the target) stops by itself.
    Its parent here is a script that hands it a share starting 60 s ahead and exits at once."""
    from bench.runner import Endpoints
    from bench.workers import Share

    body = tmp_path / "body.json"
    body.write_text("{}")
    url = f"http://127.0.0.1:{_free_port()}/"  # never reached: the load would start in 60 s
    doc = {"target": {"kind": "http", "url": url}, "data": {"body": str(body)},
           "load": {"concurrency": 1, "duration": "5s"}}
    share = Share(doc=doc, file="test", base_dir=str(tmp_path), endpoints=Endpoints(url), worker=(0, 1),
                  start_at_wall=time.time() + 60)
    maker = subprocess.run([sys.executable, "-c", _ORPHAN_MAKER, str(tmp_path / "part.arrow")], cwd=ROOT,
                           input=share.to_json(), capture_output=True, timeout=30)
    assert maker.returncode == 0, maker.stderr
    pid = int(maker.stdout.split()[0])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)  # polling a condition under a deadline (nothing to wait on for a non-child)
        assert not _alive(pid), "the orphaned worker is still running"
    finally:
        if _alive(pid):
            os.kill(pid, 9)
    assert not (tmp_path / "part.arrow").exists()  # nobody would merge it


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

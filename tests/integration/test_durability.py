"""Nothing lost, through the real CLI with real processes on loopback:

* a bad ``--out`` is refused before any load (exit 2, one line naming --out) — run, --processes, capacity;
* ``kill -9`` of a single-process run leaves a checkpoint that ``bench recover`` (or the next run with the same
  --out) turns into a valid report marked partial;
* ``--processes``: SIGTERM to the parent is Ctrl-C (workers stopped, merged partial report, exit 130, no temp
  parts left); SIGKILL of the parent takes the workers with it (PR_SET_PDEATHSIG) and they leave no temp parts.

Every wait is on a condition with a deadline; every process started here is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.locust_cluster import ROOT, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process-death signals are Linux-only")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    return env


def bench(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_env(tmp))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie — exited, not yet reaped by its parent — counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: no psutil needed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, cwd: Path, tmp: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(tmp))
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def _read_meta(path: Path) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path)) as f:
        table = pyarrow.ipc.open_file(f).read_all()
    meta: dict[str, object] = json.loads(table.schema.metadata[b"bench.report"])
    totals = [r for r in table.to_pylist() if r["section"] == "total"]
    meta["_totals"] = totals
    return meta


# -- --out checked before any load --------------------------------------------------------------------------

BAD_OUTS = {
    "a directory": lambda tmp: str(tmp),
    "parent missing": lambda tmp: str(tmp / "missing" / "r.arrow"),
    "unwritable": lambda tmp: "/proc/bench-report.arrow",  # root can write anywhere chmod allows; not in /proc
}


@pytest.mark.parametrize("case", sorted(BAD_OUTS))
@pytest.mark.parametrize("how", ["run", "processes"])
def test_bad_out_is_refused_before_any_load(tmp_path: Path, case: str, how: str) -> None:
    out = BAD_OUTS[case](tmp_path)
    extra = ["--processes", "2"] if how == "processes" else []
    started = time.monotonic()
    proc = bench("run", "--url", "embedded", "-c", "2", "-d", "30s", "-q", "--out", out, *extra,
                 cwd=tmp_path, tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "embedded emulator" not in proc.stderr  # nothing was started
    assert time.monotonic() - started < 25  # not after a 30 s run


def test_capacity_bad_out_is_refused_before_any_load(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = bench("capacity", str(ROOT / "scenarios" / "capacity.toml"), "--out", str(tmp_path / "file"),
                 "--quiet", cwd=tmp_path, tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--out" in proc.stderr, proc.stderr


# -- kill -9 of a single-process run ------------------------------------------------------------------------

def _killed_run(spawn: Callable[..., subprocess.Popen[str]], tmp: Path, out: Path) -> None:
    proc = spawn("run", "--url", "embedded", "-c", "4", "-d", "60s", "-q", "--out", str(out), cwd=tmp, tmp=tmp)
    ckpt = out.with_name(f".{out.name}.checkpoint")

    def ticks() -> int:
        return ckpt.read_bytes().count(b"\n") if ckpt.exists() else 0

    wait_for(lambda: ticks() >= 4 or proc.poll() is not None, 60, "3 checkpoint ticks")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # no report: the run never got to write one
    assert ckpt.exists()


def test_kill_9_leaves_a_recoverable_checkpoint(spawn: Callable[..., subprocess.Popen[str]],
                                                tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    _killed_run(spawn, tmp_path, out)
    rec = bench("recover", str(out), cwd=tmp_path, tmp=tmp_path)
    assert rec.returncode == 0, rec.stderr
    assert out.exists() and not out.with_name(f".{out.name}.checkpoint").exists()
    meta = _read_meta(out)
    assert meta["partial"] is True
    measured = [t for t in meta["_totals"] if t["phase"] == "measured"]  # type: ignore[union-attr]
    assert measured and measured[0]["requests"] > 0 and measured[0]["ok"] > 0
    assert meta["extra"]["recovered"]["seconds"] >= 2.5  # type: ignore[index]
    # the recovered report reads like any other
    shown = bench("report", str(out), cwd=tmp_path, tmp=tmp_path)
    assert shown.returncode == 0 and "partial" in shown.stdout, shown.stderr


def test_next_run_with_the_same_out_recovers_the_leftover(spawn: Callable[..., subprocess.Popen[str]],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    _killed_run(spawn, tmp_path, out)
    again = bench("run", "--url", "embedded", "-c", "2", "-d", "1s", "--out", str(out), cwd=tmp_path,
                  tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    recovered = tmp_path / "r.recovered.arrow"
    assert "recovered" in again.stderr and recovered.exists()
    assert _read_meta(recovered)["partial"] is True
    assert _read_meta(out)["partial"] is False


# -- --processes: the parent's death and SIGTERM --------------------------------------------------------------

@pytest.fixture
def counting_server() -> Iterator[tuple[int, list[int]]]:
    """A loopback HTTP server answering 200 to every POST; (port, [requests served]). Always stopped."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                served[0] += 1
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], served
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _loading_workers(spawn: Callable[..., subprocess.Popen[str]], tmp: Path, out: Path,
                     server: tuple[int, list[int]]) -> tuple[subprocess.Popen[str], list[int]]:
    """A `--processes 2` run against the counting server, once both workers are loading it."""
    port, served = server
    body = tmp / "body.json"
    body.write_text('{"x": 1}')
    proc = spawn("run", "--url", f"http://127.0.0.1:{port}/x", "--body", str(body), "-c", "4", "-d", "60s", "-q",
                 "--processes", "2", "--out", str(out), cwd=tmp, tmp=tmp)

    def workers() -> list[int]:
        out = []
        for pid in children(proc.pid):
            try:
                if b"bench.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                continue
        return out

    wait_for(lambda: len(workers()) == 2 or proc.poll() is not None, 60, "2 worker processes")
    assert proc.poll() is None, proc.communicate()
    pids = workers()
    seen = served[0]
    wait_for(lambda: served[0] >= seen + 50 or proc.poll() is not None, 60, "the workers' load to reach the server")
    assert proc.poll() is None, proc.communicate()
    return proc, pids


def test_sigterm_to_the_parent_is_ctrl_c(spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path,
                                         counting_server: tuple[int, list[int]]) -> None:
    out = tmp_path / "p.arrow"
    proc, workers = _loading_workers(spawn, tmp_path, out, counting_server)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not [w for w in workers if alive(w)]
    meta = _read_meta(out)
    assert meta["partial"] is True
    assert meta["load"]["processes"] == 2  # type: ignore[index]
    measured = [t for t in meta["_totals"] if t["phase"] == "measured"]  # type: ignore[union-attr]
    assert measured[0]["ok"] > 0
    assert not list(tmp_path.glob("bench-workers-*")), "temp parts left behind"
    # the load stopped with the run: nothing reaches the server any more
    after = counting_server[1][0]
    assert not [w for w in workers if alive(w)] and counting_server[1][0] == after


def test_sigkill_of_the_parent_takes_the_workers_with_it(spawn: Callable[..., subprocess.Popen[str]],
                                                         tmp_path: Path,
                                                         counting_server: tuple[int, list[int]]) -> None:
    out = tmp_path / "p.arrow"
    proc, workers = _loading_workers(spawn, tmp_path, out, counting_server)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not [p for p in workers if alive(p)], 45, "the workers to exit with their parent")
    try:
        wait_for(lambda: not list(tmp_path.glob("bench-workers-*")), 15, "the workers' temp parts to be removed")
    except AssertionError:
        left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
        raise AssertionError(f"left behind: {left}; parent stderr: {proc.communicate()[1][-2000:]}") from None
    assert not out.exists()
    served = counting_server[1][0]  # the load stopped: the endpoint is no longer hammered
    assert not [p for p in workers if alive(p)] and counting_server[1][0] == served

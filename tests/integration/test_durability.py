"""Nothing lost, through the real CLI with real processes on loopback:

* a bad ``--out`` is refused before any load (exit 2, one line naming --out) — run, --processes, capacity;
* ``kill -9`` of a single-process run leaves a checkpoint that ``bench recover`` (or the next run with the same
  --out) turns into a valid report marked partial;
* ``--processes``: SIGTERM to the parent is Ctrl-C (workers stopped, merged partial report, exit 130, no temp
  parts or checkpoints left); SIGKILL of the parent takes the workers with it (PR_SET_PDEATHSIG), they leave no
  temp parts, and their checkpoints merge into one partial report whose accounting adds up (``bench recover``,
  or the next run with the same --out; a part of another run is never merged in);
* ``bench capacity``: a kill -9 mid-sweep keeps the finished steps and leaves the current one recoverable.

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

from tests.integration.locust_cluster import ROOT, alive, children, serving, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process-death signals are Linux-only")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    return env


def bench(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_env(tmp))


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    yield from spawned()


def spawned() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`bench ARGS…` as a process of its own (extra environment allowed); killed at the end, pass or fail."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, cwd: Path, tmp: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**_env(tmp), **(env or {})})
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def _checkpoint_lines(path: Path) -> list[dict[str, object]]:
    """The complete JSON lines of a checkpoint (a line being written is skipped)."""
    out = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline may be mid-write
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _measured_ok(path: Path) -> int:
    """ok requests so far in a checkpoint (its last complete line's totals, both phases)."""
    lines = _checkpoint_lines(path)
    if len(lines) < 2:
        return 0
    totals = lines[-1].get("totals", {})
    return sum(int(t["ok"]) for t in totals.values())  # type: ignore[union-attr]


def _assert_accounting(meta: dict[str, object]) -> dict[str, int]:
    """sent = ok + errors + in flight at end, stored in the report and agreeing with its own totals rows."""
    acc: dict[str, int] = meta["extra"]["accounting"]  # type: ignore[index]
    assert acc["holds"] is True, acc
    assert acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"], acc
    assert acc["sent"] > 0 and acc["ok"] > 0, acc
    rows = meta["_totals"]
    assert sum(int(t["ok"]) for t in rows) == acc["ok"]  # type: ignore[attr-defined]
    assert sum(int(t["errors"]) for t in rows) == acc["errors"] + acc["in_flight_at_end"]  # type: ignore[attr-defined]
    return acc


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

def _file(path: Path) -> Path:
    path.write_text("x")
    return path


BAD_OUTS = {
    "a directory": lambda tmp: str(tmp),
    "a file in the way": lambda tmp: str(_file(tmp / "afile") / "sub" / "r.arrow"),  # its parent cannot be made
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
    assert meta["extra"]["recovered"]["seconds"] >= 2.0  # three ticks, a second apart  # type: ignore[index]
    _assert_accounting(meta)
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

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as srv:
        yield srv.server_address[1], served


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
    assert not list(tmp_path.glob(".p.arrow*checkpoint")), "checkpoints left behind a written report"
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


# -- --processes: kill -9 of the parent is recoverable -------------------------------------------------------

def _killed_processes_run(spawn: Callable[..., subprocess.Popen[str]], tmp: Path, out: Path) -> list[int]:
    """A `--processes 2` run against the embedded emulator, SIGKILLed once both workers' checkpoints hold ok
    requests; returns the worker pids (gone when this returns)."""
    proc = spawn("run", "--url", "embedded", "-c", "4", "-d", "60s", "-q", "--processes", "2", "--out", str(out),
                 cwd=tmp, tmp=tmp)
    parts = [out.with_name(f".{out.name}.w{i}.checkpoint") for i in range(2)]
    wait_for(lambda: all(_measured_ok(p) > 0 for p in parts) or proc.poll() is not None, 90,
             "both workers' checkpoints to hold measurements")
    assert proc.poll() is None, proc.communicate()
    workers = [pid for pid in children(proc.pid)
               if b"bench.workers" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not [p for p in workers if alive(p)], 45, "the workers to exit with their parent")
    assert not out.exists()
    return workers


def test_sigkill_of_the_parent_of_a_processes_run_is_recoverable(spawn: Callable[..., subprocess.Popen[str]],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "p.arrow"
    _killed_processes_run(spawn, tmp_path, out)
    rec = bench("recover", str(out), cwd=tmp_path, tmp=tmp_path)
    assert rec.returncode == 0, rec.stderr
    assert "partial" in rec.stdout
    meta = _read_meta(out)
    assert meta["partial"] is True
    assert meta["load"]["processes"] == 2  # type: ignore[index]
    recovered = meta["extra"]["recovered"]  # type: ignore[index]
    assert recovered["workers"] == 2 and "skipped" not in recovered, recovered
    acc = _assert_accounting(meta)
    assert acc["ok"] > 0
    assert not list(tmp_path.glob(".p.arrow*")), "checkpoints left after recovery"
    shown = bench("report", str(out), cwd=tmp_path, tmp=tmp_path)
    assert shown.returncode == 0 and "partial" in shown.stdout and "processes=2" in shown.stdout, shown.stderr


def test_next_processes_run_recovers_only_its_own_parts(spawn: Callable[..., subprocess.Popen[str]],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "p.arrow"
    _killed_processes_run(spawn, tmp_path, out)
    # worker 1's part now claims another run: it must not be merged in
    stale = tmp_path / ".p.arrow.w1.checkpoint"
    head, rest = stale.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header["run_id"] = "0" * 32
    stale.write_bytes(json.dumps(header).encode() + b"\n" + rest)
    w0_ok = _measured_ok(tmp_path / ".p.arrow.w0.checkpoint")
    again = bench("run", "--url", "embedded", "-c", "2", "-d", "1s", "--processes", "2", "--out", str(out),
                  cwd=tmp_path, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "recovered" in again.stderr, again.stderr
    recovered = _read_meta(tmp_path / "p.recovered.arrow")
    assert recovered["partial"] is True
    assert recovered["extra"]["recovered"]["workers"] == 1  # type: ignore[index]
    assert recovered["extra"]["recovered"]["skipped"] == [".p.arrow.w1.checkpoint"]  # type: ignore[index]
    acc = _assert_accounting(recovered)
    assert acc["ok"] == w0_ok  # worker 0's drained share exactly, nothing of the other run
    fresh = _read_meta(out)
    assert fresh["partial"] is False and fresh["load"]["processes"] == 2  # type: ignore[index]
    # the normal end removed the new run's checkpoints (the new run's w1 replaced the stale one)
    assert not list(tmp_path.glob(".p.arrow*checkpoint")), list(tmp_path.glob(".p.arrow*"))


def test_a_second_sigterm_takes_the_killed_workers_shares_from_their_checkpoints(
        spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path) -> None:
    """The second stop kills workers still draining (3 s answers): their shares come from their checkpoints."""
    out = tmp_path / "p.arrow"
    proc = spawn("run", "--url", "embedded", "-c", "4", "-d", "60s", "-q", "--processes", "2",
                 "--set", "emulator.latency_ms=3000", "--out", str(out), cwd=tmp_path, tmp=tmp_path)
    parts = [out.with_name(f".{out.name}.w{i}.checkpoint") for i in range(2)]
    wait_for(lambda: all(_measured_ok(p) > 0 for p in parts) or proc.poll() is not None, 90,
             "both workers' checkpoints to hold answers")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # like Ctrl-C: forwarded; each worker writes its "stopping" line, drains
    wait_for(lambda: all(any(ln.get("stopping") for ln in _checkpoint_lines(p)) for p in parts)
             or proc.poll() is not None, 30, "both workers to begin stopping")
    proc.send_signal(signal.SIGTERM)  # a second one: the workers are killed mid-drain
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    meta = _read_meta(out)
    assert meta["partial"] is True and meta["load"]["processes"] == 2  # type: ignore[index]
    assert meta["extra"]["from_checkpoints"] == [0, 1], meta["extra"]  # type: ignore[index]
    acc = _assert_accounting(meta)
    assert acc["in_flight_at_end"] > 0  # the answers the kill cut off: sent, never answered
    assert not list(tmp_path.glob(".p.arrow*checkpoint")) and not list(tmp_path.glob("bench-workers-*"))


# -- bench capacity: kill -9 mid-sweep --------------------------------------------------------------------------

def test_kill_9_of_capacity_keeps_the_finished_steps(spawn: Callable[..., subprocess.Popen[str]],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "cap"
    proc = spawn("capacity", str(ROOT / "scenarios" / "capacity.toml"), "--out", str(out), "--start", "50",
                 "--step", "3s", "--warmup", "0s", "--quiet", cwd=tmp_path, tmp=tmp_path)

    def finished_steps() -> list[dict[str, object]]:
        try:
            steps: list[dict[str, object]] = json.loads((out / "capacity.json").read_text())["steps"]
        except (FileNotFoundError, ValueError, KeyError):
            return []
        return steps

    def current() -> list[Path]:  # the step being measured, with a checkpoint holding measurements
        return [p for p in out.glob(".step-*.arrow.checkpoint") if _measured_ok(p) > 0] if out.exists() else []

    wait_for(lambda: (len(finished_steps()) >= 1 and bool(current())) or proc.poll() is not None, 90,
             "a finished step and a step in progress")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    steps = finished_steps()
    assert steps and all((out / Path(str(st["report"])).name).exists() for st in steps), steps
    # the step being measured at the kill: a checkpoint and no report (a finished step removes its checkpoint
    # right after writing its report)
    [step_report] = [r for r in (out / p.name[1:-len(".checkpoint")] for p in out.glob(".step-*.arrow.checkpoint"))
                     if not r.exists()]
    rec = bench("recover", str(step_report), cwd=tmp_path, tmp=tmp_path)
    assert rec.returncode == 0, rec.stderr
    meta = _read_meta(step_report)
    assert meta["partial"] is True
    _assert_accounting(meta)

"""A second Ctrl-C (or SIGTERM) during the drain skips the rest of it and still writes the partial report.

The drain is what is slow against a target that stopped answering, so that is when people press Ctrl-C twice:
the requests still out must count as ``abandoned`` and the report be written at once (exit 130), not the run
given up with only its checkpoint left behind. Driven through the real CLI against a loopback server that
accepts and never answers; each signal waits for the checkpoint to show the state it needs (no sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fault_servers import FaultServer
from tests.integration.locust_cluster import ROOT, alive, children, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals to a child process, Linux /proc")

DRAIN = "60s"  # far longer than any test waits: only skipping the drain ends these runs in time


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback TCP server that accepts, reads and never answers; its port. Always stopped."""
    with FaultServer("silent") as srv:
        yield srv.port


def _lines(path: Path) -> list[dict[str, object]]:
    """The complete JSON lines of a checkpoint so far (a line being written is skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _sent(line: dict[str, object]) -> int:
    counters = line.get("counters") or {}
    assert isinstance(counters, dict)
    return int(line.get("sent") or counters.get("sent") or 0)  # type: ignore[call-overload]


def _checkpoints(out: Path, processes: int) -> list[Path]:
    if processes == 1:
        return [out.with_name(f".{out.name}.checkpoint")]
    return [out.with_name(f".{out.name}.w{i}.checkpoint") for i in range(processes)]


def _interrupted_twice(tmp: Path, port: int, load: list[str], second: int = signal.SIGINT,
                       processes: int = 1) -> tuple[subprocess.Popen[str], str, float]:
    """A run against the silent server, interrupted once its requests are out, and again once its load has
    stopped (the checkpoint's "stopping" line: the drain has begun). (process, stderr, seconds after the second
    signal until it exited)."""
    out = tmp / "r.arrow"
    body = ROOT / "data" / "ccfraud_1k.df.json"
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    args = [sys.executable, "-m", "bench", "run", "--url", f"http://127.0.0.1:{port}/infer", "--body", str(body),
            *load, "-d", "60s", "--set", f"load.drain={DRAIN}", "-q", "--out", str(out)]
    if processes > 1:
        args += ["--processes", str(processes)]
    proc = subprocess.Popen(args, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    ckpts = _checkpoints(out, processes)
    try:
        wait_for(lambda: all(len(ls := _lines(c)) >= 2 and _sent(ls[-1]) > 0 for c in ckpts)
                 or proc.poll() is not None, 60, "requests on the wire (a checkpoint tick with sent > 0)")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: all(any(ln.get("stopping") for ln in _lines(c)) for c in ckpts)
                 or proc.poll() is not None, 30, "the load to stop (the drain begins)")
        assert proc.poll() is None, proc.communicate()  # the silent server keeps it draining
        second_at = time.monotonic()
        proc.send_signal(second)
        _, err = proc.communicate(timeout=30)
        return proc, err, time.monotonic() - second_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _report(path: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    """(meta, total rows) of a report, read with pyarrow only."""
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path)) as f:
        table = pyarrow.ipc.open_file(f).read_all()
    meta: dict[str, object] = json.loads(table.schema.metadata[b"bench.report"])
    return meta, [r for r in table.to_pylist() if r["section"] == "total"]


def _assert_partial_and_accounted(tmp: Path) -> dict[str, int]:
    out = tmp / "r.arrow"
    assert out.exists(), sorted(p.name for p in tmp.iterdir())
    meta, totals = _report(out)
    assert meta["partial"] is True
    acc: dict[str, int] = meta["extra"]["accounting"]  # type: ignore[index]
    assert acc["holds"] is True, acc
    assert acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"], acc
    # nothing answers: every request sent is still out when the drain is skipped, and counted so
    assert acc["sent"] > 0 and acc["ok"] == 0 and acc["in_flight_at_end"] == acc["sent"], acc
    assert sum(int(t["errors"]) for t in totals) == acc["errors"] + acc["in_flight_at_end"]  # type: ignore[call-overload]
    assert not list(tmp.glob(".r.arrow*checkpoint")), "the report supersedes the checkpoint"
    return acc


@pytest.mark.parametrize(("load", "second"), [
    (["-c", "4"], signal.SIGINT),  # the lean engine, closed loop: the auditor's repro
    (["-r", "20", "--engine", "httpx"], signal.SIGINT),  # httpx, open loop
    (["-c", "4"], signal.SIGTERM),  # SIGTERM during the drain is a second Ctrl-C
], ids=["fast-closed-sigint", "httpx-open-sigint", "fast-closed-sigterm"])
def test_a_second_interrupt_skips_the_drain_and_writes_the_partial_report(
        tmp_path: Path, silent_port: int, load: list[str], second: int) -> None:
    proc, err, took = _interrupted_twice(tmp_path, silent_port, load, second)
    assert proc.returncode == 130, err
    assert took < 10, f"{took:.1f} s after the second signal: the {DRAIN} drain was not skipped"
    _assert_partial_and_accounted(tmp_path)
    assert "skipping the drain" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_second_interrupt_of_a_processes_run_writes_the_merged_partial_report(
        tmp_path: Path, silent_port: int) -> None:
    """`--processes 2`: the second stop kills the draining workers; their shares come from their checkpoints."""
    proc, err, took = _interrupted_twice(tmp_path, silent_port, ["-c", "4"], processes=2)
    assert proc.returncode == 130, err
    assert took < 10, f"{took:.1f} s after the second signal"
    acc = _assert_partial_and_accounted(tmp_path)
    assert acc["sent"] == 4  # both workers' shares, each from its checkpoint
    assert not [p for p in children(proc.pid) if alive(p)]
    assert not list(tmp_path.glob("bench-workers-*"))


@pytest.mark.slow
def test_a_second_interrupt_of_a_locust_master_counts_the_workers_requests_still_out(
        tmp_path: Path, silent_port: int) -> None:
    """`--locust-master`: the second stop gives up waiting for the workers' drain; a worker's share then comes
    from its checkpoint part (what it had on the wire counts as in flight), not from deltas that know no `sent`."""
    from tests.integration.locust_cluster import Cluster, free_port

    cluster = Cluster(tmp_path, {"TMPDIR": str(tmp_path)})
    try:
        port = free_port()
        out = tmp_path / "r.arrow"
        master = cluster.start("master", "-m", "bench", "run", "--url", f"http://127.0.0.1:{silent_port}/infer",
                               "--body", str(ROOT / "data" / "ccfraud_1k.df.json"), "-c", "4", "-d", "60s",
                               "--set", f"load.drain={DRAIN}", "--out", str(out), "--locust-master",
                               "--expect-workers", "1", "--master-bind-port", str(port), "--worker-wait", "30")
        cluster.worker(port, "worker")
        part = out.with_name(f".{out.name}.w0.checkpoint")  # the worker's lines, relayed to the master
        wait_for(lambda: (len(ls := _lines(part)) >= 2 and _sent(ls[-1]) > 0) or master.poll() is not None, 60,
                 "the worker's requests on the wire (a relayed checkpoint tick with sent > 0)")
        assert master.poll() is None, cluster.log(master)
        master.send_signal(signal.SIGINT)
        wait_for(lambda: "interrupted: stopping every worker" in cluster.log(master) or master.poll() is not None,
                 30, "the master to stop its workers")
        assert master.poll() is None, cluster.log(master)
        second_at = time.monotonic()
        master.send_signal(signal.SIGINT)
        master.wait(30)
        assert time.monotonic() - second_at < 10, cluster.log(master)
        assert master.returncode == 130, cluster.log(master)
        acc = _assert_partial_and_accounted(tmp_path)
        assert acc["sent"] == 4, acc
    finally:
        cluster.close()

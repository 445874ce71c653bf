"""``kill -9`` of a Locust master (`bench run --locust-master`) is recoverable: real master and `bench
locust-worker` processes on loopback; the master is SIGKILLed once its copies of the workers' checkpoints hold
answers; the workers and their engine processes quit on their own; `bench recover` turns what the master kept into
a report marked partial whose accounting adds up. The target echoes the bare credential it got into some 500
answers (as a careless server does) and the token is only in the workers' environment: it must not reach the
master's disk by value, in the checkpoints or the recovered report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.locust_cluster import Cluster, EchoingTarget, alive, children, free_port, serving, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="process checks read /proc (Linux)")]

TOKEN = "wrk-only-kill9-s3cret-5d1e"  # in the workers' environment only
ECHO_EVERY = 7  # every 7th request is refused with the credential echoed back


@pytest.fixture
def target() -> Iterator[EchoingTarget]:
    with serving(EchoingTarget(ECHO_EVERY)) as server:
        yield server


def engine_children(pid: int) -> list[int]:
    """The worker ``pid``'s engine processes (``python -m bench.locust.child``)."""
    return children(pid, b"bench.locust.child")


def checkpoint_ok(path: Path) -> int:
    """ok answers in a checkpoint so far (its last complete line); 0 before its first tick."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    lines = []
    for raw in data.split(b"\n")[:-1]:  # after the last newline: a line being written
        try:
            lines.append(json.loads(raw))
        except ValueError:
            break
    if len(lines) < 2:
        return 0
    return sum(int(t["ok"]) for t in lines[-1].get("totals", {}).values())


def read_meta(path: Path) -> dict[str, Any]:
    """The report's metadata and its totals rows, read with pyarrow directly (not bench's reader)."""
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path)) as f:
        table = pyarrow.ipc.open_file(f).read_all()
    meta: dict[str, Any] = json.loads(table.schema.metadata[b"bench.report"])
    meta["_totals"] = [r for r in table.to_pylist() if r["section"] == "total"]
    return meta


def assert_recovered(path: Path, answered: int) -> None:
    """A recovered Locust run: partial, both workers' shares, accounting adding up, no token by value."""
    meta = read_meta(path)  # opens with pyarrow
    assert meta["partial"] is True and meta["extra"]["interrupted"] is True
    assert meta["load"]["processes"] == 2
    assert meta["extra"]["recovered"]["workers"] == 2 and "skipped" not in meta["extra"]["recovered"]
    assert meta["extra"]["locust"]["expected_workers"] == 2
    acc = meta["extra"]["accounting"]
    assert acc["holds"] is True, acc
    assert acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"], acc
    assert acc["ok"] > 0 and acc["errors"] > 0, acc  # the echoed 500s are counted by kind
    rows = meta["_totals"]  # the stored totals agree with the accounting (in flight: kind 'abandoned')
    assert sum(int(t["ok"]) for t in rows) == acc["ok"]
    assert sum(int(t["errors"]) for t in rows) == acc["errors"] + acc["in_flight_at_end"]
    assert acc["ok"] + acc["errors"] <= answered  # nothing counted that the target did not answer
    assert TOKEN.encode() not in path.read_bytes()


class _Run:
    """A distributed run against ``target`` writing ``run.arrow`` in ``tmp``: the scenario, paths and cluster."""

    def __init__(self, tmp: Path, target: EchoingTarget) -> None:
        body = tmp / "body.json"
        body.write_text('[{"tensor": [1.0]}]')
        url = target.url
        self.sc = tmp / "s.toml"
        self.sc.write_text(f'name = "kill9"\n[target]\nkind = "http"\nurl = "{url}"\n'
                           f'token_env = "BENCH_TEST_TOKEN"\n[data]\nbody = "{body}"\n'
                           '[load]\nconcurrency = 4\nduration = "120s"\n')
        self.out = tmp / "run.arrow"
        self.manifest = tmp / ".run.arrow.checkpoint"
        self.parts = [tmp / f".run.arrow.w{i}.checkpoint" for i in range(2)]
        self.cluster = Cluster(tmp, env={"BENCH_TEST_TOKEN": ""})  # the master's environment does not hold it

    def start(self, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
        port = free_port()
        master = self.cluster.start(name, "-m", "bench", "run", str(self.sc), "--locust-master", "--expect-workers",
                                    "2", "--master-bind-port", str(port), "--worker-wait", "30",
                                    "-o", str(self.out), *extra)
        workers = [self.cluster.worker(port, f"{name}-w{i}", env={"BENCH_TEST_TOKEN": TOKEN}) for i in range(2)]
        return master, workers

    def killed(self) -> None:
        """Start a run, SIGKILL its master once both workers' checkpoints on its disk hold answers; the workers
        and their engine processes must quit on their own; the master's disk keeps the manifest and parts."""
        master, workers = self.start("master", "-q")
        wait_for(lambda: all(checkpoint_ok(p) > 0 for p in self.parts) or master.poll() is not None, 60,
                 "both workers' checkpoints to hold answers on the master's disk")
        assert master.poll() is None, self.cluster.log(master)
        engines = [pid for w in workers for pid in engine_children(w.pid)]
        assert len(engines) == 2, engines

        os.kill(master.pid, signal.SIGKILL)  # the master process alone: its workers are not its children
        assert master.wait(10) == -signal.SIGKILL
        wait_for(lambda: not any(alive(p) for p in [w.pid for w in workers] + engines), 30,
                 "the workers and their engine processes to quit after the master died")
        assert not self.out.exists()  # the master never wrote a report
        assert self.manifest.exists() and all(p.exists() for p in self.parts)
        kept = b"".join(p.read_bytes() for p in (self.manifest, *self.parts))
        assert TOKEN.encode() not in kept, "a worker's token reached the master's checkpoints by value"
        assert b"denied: unknown credential ***" in kept  # the echoed credential was there, masked

    def bench(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=self.cluster.tmp, env=self.cluster.env,
                              capture_output=True, text=True, timeout=60)


def test_kill_9_of_the_master_is_recoverable(tmp_path: Path, target: EchoingTarget) -> None:
    run = _Run(tmp_path, target)
    try:
        run.killed()
        rec = run.bench("recover", str(run.out))
        assert rec.returncode == 0, rec.stderr
        assert "partial" in rec.stdout and "Traceback" not in rec.stderr
        assert not run.manifest.exists() and not any(p.exists() for p in run.parts)  # consumed by the recovery
        assert_recovered(run.out, target.answered)
        shown = run.bench("report", str(run.out))
        assert shown.returncode == 0 and "partial" in shown.stdout, shown.stderr
        assert TOKEN not in shown.stdout
    finally:
        run.cluster.close()


def test_the_next_master_with_the_same_out_recovers_the_leftover(tmp_path: Path, target: EchoingTarget) -> None:
    run = _Run(tmp_path, target)
    try:
        run.killed()
        master, _ = run.start("again", "--duration", "1s")  # not quiet: it says what it recovered
        assert master.wait(60) == 0, run.cluster.log(master)
        log = run.cluster.log(master)
        assert "recovered the checkpoint of an earlier, killed run" in log, log
        assert_recovered(tmp_path / "run.recovered.arrow", target.answered)
        assert read_meta(run.out)["partial"] is False  # the new run's own report
        assert not list(tmp_path.glob(".run.arrow*")), "checkpoints left after the new run's report"
    finally:
        run.cluster.close()

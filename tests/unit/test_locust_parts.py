"""bench.locust.parts and the engine child's checkpoint tail: the lines a worker's engine checkpoints, relayed as
they are completed and appended by the master beside its report (scrubbed of the master's own secrets), recover
into the merged run exactly as a ``--processes`` manifest does, in-flight requests counted."""

from __future__ import annotations

from pathlib import Path

from bench.checkpoint import Checkpoint, checkpoint_path, recover, start_parts
from bench.locust.child import _Tail
from bench.locust.parts import WorkerParts
from bench.recorder import Recorder
from bench.results import Kind
from bench.secrets import Scrubber

MASTER_SECRET = "emulator-token-only-the-master-knows"


def test_tail_relays_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "c"
    tail = _Tail(path)
    assert tail.read() == []  # not written yet
    path.write_bytes(b'{"a": 1}\n{"b": ')
    assert tail.read() == ['{"a": 1}']
    assert tail.read() == []  # the torn line waits for its end
    with open(path, "ab") as f:
        f.write(b'2}\n\n{"c": 3}\n')
    assert tail.read() == ['{"b": 2}', '{"c": 3}']


def test_relayed_checkpoints_recover_into_the_merged_run(tmp_path: Path) -> None:
    out = tmp_path / "run.arrow"
    run_id, paths = start_parts(out, 2, {"locust": {"expected_workers": 2}})
    parts = WorkerParts(run_id, paths, Scrubber([MASTER_SECRET]).data)
    expected_ok = expected_errors = 0
    for index, seconds in ((0, 3), (1, 2)):
        local = tmp_path / f"worker{index}" / "part.checkpoint"  # on the worker's host
        local.parent.mkdir()
        now = [0]
        rec = Recorder(0, 0, batch=16, clock=lambda now=now: now[0])
        header = {"bench_checkpoint": 1, "start_unix_ns": 0, "warmup_s": 0.0, "run_id": run_id,
                  "worker": [index, 2], "meta": {"scenario_name": "t", "target": {"url": f"http://h/?t={MASTER_SECRET}"}}}
        ckpt = Checkpoint(local, header, lambda s: s)
        sent = [0]
        ckpt.sent_probe = lambda sent=sent: sent[0] + 2  # two more on the wire at every tick
        tail = _Tail(local)
        for sec in range(seconds):
            for i in range(20):
                t = sec * 1_000_000_000 + i * 1_000_000
                ok = i % 5 != 0
                rec.record(t, t, t + 3_000_000, Kind.OK if ok else Kind.HTTP_ERROR, 200 if ok else 500, 1, 10, 20, 0)
                sent[0] += 1
                expected_ok += ok
                expected_errors += not ok
            now[0] = (sec + 1) * 1_000_000_000
            ckpt.tick(rec)
            parts.append(index, tail.read())  # what the child sends each second, as the master gets it
        ckpt.close()
    parts.close()
    assert all(MASTER_SECRET.encode() not in p.read_bytes() for p in paths)
    report = recover(checkpoint_path(out))
    acc = report.meta.extra["accounting"]
    assert acc == {"sent": expected_ok + expected_errors + 4, "ok": expected_ok, "errors": expected_errors,
                   "in_flight_at_end": 4, "dropped": 0, "holds": True}
    assert report.run.partial and report.meta.load["processes"] == 2
    assert report.meta.extra["recovered"]["workers"] == 2
    assert report.meta.extra["locust"] == {"expected_workers": 2}
    assert report.run.histogram("latency", "measured", "ok").total == expected_ok


def test_lines_for_an_unknown_worker_or_garbage_are_dropped(tmp_path: Path) -> None:
    run_id, paths = start_parts(tmp_path / "run.arrow", 1)
    parts = WorkerParts(run_id, paths, lambda v: v)
    parts.append(5, ['{"bench_checkpoint": 1}'])  # no such worker index
    parts.append(0, ['{"bench_checkpoint": 1}', "not json", '{"elapsed_s": 1.0}'])
    parts.close()
    assert paths[0].read_bytes() == b'{"bench_checkpoint":1}\n{"elapsed_s":1.0}\n'

"""bench.checkpoint: a recorder's checkpoints recover into a report whose counts match what was recorded up to
the last tick; a torn last line (the kill landed mid-write) is ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.checkpoint import Checkpoint, checkpoint_path, recover, report_path_for
from bench.errors import InputError
from bench.recorder import Recorder
from bench.results import Kind


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def test_recovered_report_matches_the_recorder_up_to_the_last_tick(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(0, 1_000_000_000, batch=16, clock=clock)
    path = tmp_path / ".r.arrow.checkpoint"
    ckpt = Checkpoint(path, {"bench_checkpoint": 1, "start_unix_ns": rec.start_unix_ns, "warmup_s": 1.0,
                             "meta": {"scenario_name": "t"}}, lambda s: s)
    for sec in range(8):
        for i in range(50):
            t = sec * 1_000_000_000 + i * 10_000_000
            rec.record(t, t, t + 2_000_000 + i * 1000, Kind.OK if i % 10 else Kind.HTTP_ERROR, 200 if i % 10 else 500,
                       1, 10, 20, 0)
        clock.now = (sec + 1) * 1_000_000_000
        ckpt.tick(rec)
    ckpt.close()
    with open(path, "ab") as f:
        f.write(b'{"elapsed_s": 99, "tor')  # a torn tail
    report = recover(path)
    final = rec.finish(clock.now, partial=False)
    assert report.run.partial
    for phase in ("warmup", "measured"):
        assert report.run.total(phase).requests == final.total(phase).requests
        assert report.run.total(phase).ok == final.total(phase).ok
        assert report.run.errors_by_kind(phase) == final.errors_by_kind(phase)
    assert report.run.histogram("latency", "measured", "ok").total == final.total("measured").ok
    assert list(report.run.series.requests) == list(final.series.requests)


def test_paths_and_bad_files(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    assert report_path_for(checkpoint_path(out)) == out
    (tmp_path / "x").write_text("not json\n")
    with pytest.raises(InputError):
        recover(tmp_path / "x")
    with pytest.raises(InputError):
        recover(tmp_path / "missing")

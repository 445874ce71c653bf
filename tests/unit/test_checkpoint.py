"""bench.checkpoint: a recorder's checkpoints recover into a report whose counts match what was recorded up to
the last tick; a torn last line (the kill landed mid-write) is ignored; requests on the wire at the kill are
counted in flight; a ``--processes`` manifest merges the parts of its own run only."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.checkpoint import (
    Checkpoint,
    checkpoint_path,
    discard,
    part_path,
    recover,
    recover_to,
    report_path_for,
    start_parts,
)
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
    assert report.run.done_span == final.done_span != {}  # req/s: the rate answers came back
    assert report.run.rps("measured") == pytest.approx(final.rps("measured"))


def test_paths_and_bad_files(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    assert report_path_for(checkpoint_path(out)) == out
    (tmp_path / "x").write_text("not json\n")
    with pytest.raises(InputError):
        recover(tmp_path / "x")
    with pytest.raises(InputError):
        recover(tmp_path / "missing")


def _load(rec: Recorder, clock: Clock, ckpt: Checkpoint, seconds: int, per_second: int,
          sent: list[int] | None = None) -> None:
    """``seconds`` of ``per_second`` requests (one in ten a 500), a tick after each; ``sent`` counts them."""
    for sec in range(seconds):
        for i in range(per_second):
            t = sec * 1_000_000_000 + i * 10_000_000
            rec.record(t, t, t + 2_000_000, Kind.OK if i % 10 else Kind.HTTP_ERROR, 200 if i % 10 else 500,
                       1, 10, 20, 0)
            if sent is not None:
                sent[0] += 1
        clock.now = (sec + 1) * 1_000_000_000
        ckpt.tick(rec)


def _header(rec: Recorder, **tag: object) -> dict[str, object]:
    return {"bench_checkpoint": 1, "start_unix_ns": rec.start_unix_ns, "warmup_s": 0.0,
            "meta": {"scenario_name": "t"}, **tag}


def test_requests_on_the_wire_at_the_kill_are_in_flight_at_end(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(0, 0, batch=16, clock=clock)
    ckpt = Checkpoint(tmp_path / ".r.arrow.checkpoint", _header(rec), lambda s: s)
    sent = [0]
    ckpt.sent_probe = lambda: sent[0] + 7  # 7 more taken on, not answered when the process died
    _load(rec, clock, ckpt, 3, 20, sent)
    ckpt.close()
    report = recover(ckpt.path)
    acc = report.meta.extra["accounting"]
    assert acc == {"sent": 67, "ok": 54, "errors": 6, "in_flight_at_end": 7, "dropped": 0, "holds": True}
    assert report.run.errors_by_kind("measured")["abandoned"] == 7
    assert int(report.run.series.requests.sum()) == 67


def test_final_line_holds_the_finished_run(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(0, 0, batch=16, clock=clock)
    ckpt = Checkpoint(tmp_path / ".r.arrow.checkpoint", _header(rec), lambda s: s)
    ckpt.sent_probe = lambda: 0
    _load(rec, clock, ckpt, 2, 30)
    for i in range(5):  # answered after the last tick, during the drain
        rec.record(2_000_000_000 + i, 2_000_000_000 + i, 2_100_000_000, Kind.OK, 200, 1, 10, 20, 0)
    rec.count("sent", 68)
    rec.abandoned(3, 2_200_000_000)
    final = rec.finish(2_200_000_000, partial=True)
    ckpt.final(rec, 2_200_000_000)
    report = recover(ckpt.path)
    assert report.run.total("measured").requests == final.total("measured").requests == 68
    assert report.meta.extra["accounting"]["in_flight_at_end"] == 3
    assert report.meta.extra["accounting"]["holds"] is True
    assert report.meta.extra["recovered"]["seconds"] == 2.2


def test_a_manifest_merges_the_parts_of_its_own_run_only(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    run_id, parts = start_parts(out, 3)
    assert parts == [part_path(out, i) for i in range(3)]
    assert report_path_for(parts[1]) == tmp_path / "r.w1.arrow"
    for i, path in enumerate(parts):
        clock = Clock()
        rec = Recorder(0, 0, batch=16, clock=clock)
        ckpt = Checkpoint(path, _header(rec, run_id=run_id if i < 2 else "another", worker=[i, 3]), lambda s: s)
        sent = [0]
        ckpt.sent_probe = lambda sent=sent: sent[0]
        _load(rec, clock, ckpt, 2 + i, 10 * (i + 1), sent)
        ckpt.close()
    report = recover_to(checkpoint_path(out), out)
    assert report.run.partial and report.meta.load["processes"] == 3
    assert report.run.total("measured").requests == 2 * 10 + 3 * 20  # parts 0 and 1; part 2 is another run's
    assert report.meta.extra["recovered"]["workers"] == 2
    assert report.meta.extra["recovered"]["skipped"] == [parts[2].name]
    assert report.meta.extra["accounting"]["holds"] is True
    assert report.meta.extra["recovered"]["seconds"] == 3.0
    assert not checkpoint_path(out).exists() and not parts[0].exists() and not parts[1].exists()
    assert parts[2].exists()  # not ours to remove


def test_discard_removes_the_manifest_and_its_parts(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    _, parts = start_parts(out, 2)
    for p in parts:
        p.write_text("{}\n")
    discard(out)
    assert not list(tmp_path.iterdir())


def test_a_manifest_whose_parts_hold_nothing_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    start_parts(out, 2)
    with pytest.raises(InputError, match="nothing to recover"):
        recover(checkpoint_path(out))


def test_checkpoint_steps_change_nothing_in_the_checkpoint() -> None:
    """The work done ahead in separate loop turns (fold, encodings) gives the very checkpoint a tick without it
    gives, and leaves every open second but the newest encoded."""
    clocks, recs = [Clock(), Clock()], []
    for clock in clocks:
        rec = Recorder(0, 1_000_000_000, batch=16, clock=clock)
        for i in range(400):  # answers across four seconds, the last batch still buffered
            t = i * 9_000_000
            rec.record(t, t, t + 1_000_000 + (i % 7) * 50_000, Kind.OK if i % 13 else Kind.HTTP_ERROR,
                       200 if i % 13 else 500, 1, 10, 20, 0)
        clock.now = 3_700_000_000
        recs.append(rec)
    ahead, plain = recs
    steps = list(ahead.checkpoint_steps())
    assert len(steps) == len(ahead._open_sec) - 1 >= 2
    newest = max(ahead._open_sec)
    for sec, h in ahead._open_sec.items():
        assert (h._encoded_at[0] == h.total) is (sec != newest)  # encoded ahead, but not the newest
    got, want = ahead.checkpoint(-1), plain.checkpoint(-1)
    assert got == want

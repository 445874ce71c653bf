"""A run given up before its report was written (a third Ctrl-C, or a SIGTERM while the report is written) names
the exact `bench recover` command for the checkpoint it left, and SIGTERM is Ctrl-C for the whole run."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from bench.checkpoint import checkpoint_path
from bench.session import given_up_hint

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers are the main thread's")


def test_a_given_up_run_names_the_recover_command(tmp_path: Path) -> None:
    out = tmp_path / "my run.arrow"
    checkpoint_path(out).write_text("{}\n")
    with pytest.raises(KeyboardInterrupt) as exc, given_up_hint(out):
        raise KeyboardInterrupt
    assert str(exc.value).endswith(f"bench recover '{out}'")  # quoted: pasted as is into a shell (bench.cli prints it)


def test_over_an_existing_report_the_command_says_where_to_write(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    out.write_bytes(b"an earlier run's report")
    checkpoint_path(out).write_text("{}\n")
    with pytest.raises(KeyboardInterrupt) as exc, given_up_hint(out):
        raise KeyboardInterrupt
    assert str(exc.value).endswith(f"bench recover {out} --out {out}")  # `bench recover` refuses it otherwise


def test_no_checkpoint_no_hint(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt) as exc, given_up_hint(tmp_path / "r.arrow"):
        raise KeyboardInterrupt
    assert "bench recover" not in str(exc.value)


def test_a_report_written_by_this_run_is_named(tmp_path: Path) -> None:
    """A signal after the report was written (while the summary is printed) says where it is, not "interrupted"."""
    out = tmp_path / "r.arrow"
    out.write_bytes(b"an earlier run's report")
    with pytest.raises(KeyboardInterrupt) as exc, given_up_hint(out):
        tmp = tmp_path / "r.arrow.tmp"
        tmp.write_bytes(b"this run's report")
        tmp.replace(out)  # as bench.report.writer writes it
        raise KeyboardInterrupt
    assert str(exc.value) == f"interrupted; the report was written: {out}"


def test_an_earlier_runs_report_is_not_claimed(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    out.write_bytes(b"an earlier run's report")
    with pytest.raises(KeyboardInterrupt) as exc, given_up_hint(out):
        raise KeyboardInterrupt
    assert "written" not in str(exc.value)


def test_sigterm_is_ctrl_c_inside_and_restored_after(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), given_up_hint(tmp_path / "r.arrow") as rearm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what an event loop leaves behind when it removes its own
        rearm()
        os.kill(os.getpid(), signal.SIGTERM)  # would end this test process outright without rearm()
        raise AssertionError("SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) == before

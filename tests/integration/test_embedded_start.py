"""An embedded emulator that does not come up is a run that cannot be trusted (RunInvalid: `bench` prints one
line and exits 3), not a RuntimeError traceback; its child is stopped all the same."""

from __future__ import annotations

import os

import pytest

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator
from bench.errors import EXIT_INVALID, RunInvalid


def test_an_emulator_that_does_not_start_in_time_is_run_invalid_and_stopped() -> None:
    emu = EmbeddedEmulator(EmulatorConfig(), startup_timeout_s=0.0)  # no child listens within 0 s
    with pytest.raises(RunInvalid, match="did not start within 0 s") as caught:
        emu.start()
    assert caught.value.exit_code == EXIT_INVALID and "\n" not in str(caught.value)
    assert emu.pid is None  # stopped: nothing left running
    with pytest.raises(RuntimeError):
        _ = emu.base_url


def test_the_child_of_a_failed_start_does_not_outlive_it() -> None:
    emu = EmbeddedEmulator(EmulatorConfig(), startup_timeout_s=0.0)
    started: list[int] = []
    real_await = emu._await_listening

    def note_pid() -> str:
        assert emu.pid is not None
        started.append(emu.pid)
        return real_await()

    emu._await_listening = note_pid  # type: ignore[method-assign]
    with pytest.raises(RunInvalid):
        emu.start()
    assert started
    with pytest.raises(ProcessLookupError):
        os.kill(started[0], 0)  # reaped: gone

"""The open-loop pacer: wakers fire on time without spinning; batches send exactly what is due, in order."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine import pacer as pacer_mod
from bench.engine.pacer import (
    COALESCE_NS,
    WAKE_EARLY_MIN_GAP_NS,
    Pacer,
    ThreadWaker,
    TimerFdWaker,
    Waker,
    estimate_rate,
    make_waker,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _wait_readable(fd: int, timeout_s: float) -> bool:
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
        return bool(ep.poll(timeout_s))
    finally:
        ep.close()


@pytest.mark.parametrize("kind", [TimerFdWaker, ThreadWaker])
def test_waker_fires_at_the_deadline_not_before(kind: type) -> None:
    waker: Waker = kind()
    try:
        assert not _wait_readable(waker.fd, 0)
        deadline = time.monotonic_ns() + 3_000_000
        waker.arm(deadline)
        assert _wait_readable(waker.fd, 2.0)
        assert time.monotonic_ns() >= deadline
        waker.acknowledge()
        waker.disarm()
        assert not _wait_readable(waker.fd, 0.01), "disarmed (and acknowledged) waker stays quiet"
        waker.arm(time.monotonic_ns() + 10_000_000_000)
        waker.arm(time.monotonic_ns() + 1_000_000)  # re-arming earlier takes effect
        assert _wait_readable(waker.fd, 2.0)
    finally:
        waker.close()


def test_make_waker_prefers_timerfd_on_linux() -> None:
    waker = make_waker()
    try:
        assert isinstance(waker, TimerFdWaker)
    finally:
        waker.close()


@given(st.lists(st.integers(0, 10**9), max_size=3000))
@settings(max_examples=60, deadline=None)
def test_estimate_rate_keeps_every_offset(raw: list[int]) -> None:
    offsets = sorted(raw)
    rate, it = estimate_rate(iter(offsets))
    assert list(it) == offsets
    assert rate >= 0


def test_estimate_rate_of_a_constant_schedule() -> None:
    rate, _ = estimate_rate(iter(range(0, 10**10, 500_000)))  # 2,000 per second
    assert rate == pytest.approx(2000, rel=0.01)


class Recorder:
    """A Dispatchable that remembers when each send was dispatched."""

    def __init__(self, end_ns: int) -> None:
        self.end_ns = end_ns
        self._seq = 0  # what a spinning pacer watches for activity (see Dispatchable)
        self._inflight = 0
        self.sent: list[tuple[int, int]] = []
        self.batches = 0
        self.finished = asyncio.Event()

    def may_issue(self, now: int) -> bool:
        if now >= self.end_ns:
            self.finished.set()
            return False
        return True

    def dispatch(self, intended: int) -> None:
        self._seq += 1
        self.sent.append((intended, time.monotonic_ns()))

    def dispatched(self) -> None:
        self.batches += 1

    def open_finished(self) -> None:
        self.finished.set()


def _every(step_ns: int, n: int) -> Iterator[int]:
    return iter(range(0, step_ns * n, step_ns))


@pytest.mark.parametrize("waker_kind", [TimerFdWaker, ThreadWaker])
async def test_pacer_sends_each_request_at_or_after_its_time_and_sleeps_between(waker_kind: type) -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns() + 5_000_000
    eng = Recorder(start + 10**10)
    pacer = Pacer(eng, loop, start, _every(2_000_000, 100), waker=waker_kind(), pacing="sleep")  # 500/s, 0.2 s
    cpu0 = time.process_time()
    pacer.start()
    try:
        await asyncio.wait_for(eng.finished.wait(), 5)
    finally:
        pacer.stop()
    cpu = time.process_time() - cpu0
    assert [i for i, _ in eng.sent] == [start + k * 2_000_000 for k in range(100)]
    lags = sorted(t - i for i, t in eng.sent)
    assert lags[0] >= 0, "never early"  # how late is scheduling noise on a loaded machine: see the simulated test
    assert pacer.wakes <= 110, "about one wake per send, no spinning"
    assert cpu < 0.15, f"{cpu:.3f} s CPU for 0.2 s of pacing"


async def _paced(step: int, n: int, holder: list[Pacer] | None = None,
                 **options: Any) -> tuple[Recorder, Pacer, list[int]]:
    """A pacer on the running loop sending ``n`` requests ``step`` ns apart, to the end of the schedule; every
    send checked in order and never early. Returns the stub engine, the pacer and the sorted lags."""
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns() + 2_000_000
    eng = Recorder(start + 10**10)
    pacer = Pacer(eng, loop, start, _every(step, n), **options)
    if holder is not None:  # (_busy_cpu's clock reads the pacer's idle time)
        holder.append(pacer)
    pacer.start()
    try:
        await asyncio.wait_for(eng.finished.wait(), 5)
    finally:
        pacer.stop()
    assert [i for i, _ in eng.sent] == [start + k * step for k in range(n)]
    lags = sorted(t - i for i, t in eng.sent)
    assert lags[0] >= 0, "never early"
    return eng, pacer, lags


async def test_pacer_coalesces_close_sends_into_few_alarms_never_early() -> None:
    step, n = 20_000, 5000  # 50,000/s for 0.1 s
    eng, pacer, _ = await _paced(step, n, pacing="sleep")
    # how late the sends leave on a real loop is the machine's scheduling as much as the pacer's: the bound on the
    # added lag is checked exactly on a simulated clock below; here the real waker and loop, and the alarm count
    span = eng.sent[-1][1] - eng.sent[0][1]
    assert pacer.wakes <= span // COALESCE_NS + 5, f"{pacer.wakes} alarms for {n} sends over {span / 1e6:.1f} ms"
    assert eng.batches < n // 2, "several sends leave per alarm"


async def test_pacer_sends_a_late_batch_at_once_and_run_due_from_outside() -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns() - 50_000_000  # 50 ms behind already: 50 sends due at 1 ms spacing
    eng = Recorder(start + 10**10)
    pacer = Pacer(eng, loop, start, _every(1_000_000, 1000))
    pacer.start()
    try:
        deadline = time.monotonic() + 5
        while len(eng.sent) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert eng.batches >= 1
        assert len(eng.sent) >= 50
        # the engine's completion path: nothing is due before next_ns, so run_due sends nothing early
        before = len(eng.sent)
        pacer.run_due(pacer.next_ns - 1)
        assert len(eng.sent) == before
        pacer.run_due(pacer.next_ns)
        assert len(eng.sent) == before + 1
    finally:
        pacer.stop()
    assert pacer.next_ns > 1 << 60
    n = len(eng.sent)
    await asyncio.sleep(0.02)
    assert len(eng.sent) == n, "stopped pacer sends nothing"


async def test_pacer_stops_at_the_end_of_the_schedule() -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns()
    eng = Recorder(start + 10**10)
    pacer = Pacer(eng, loop, start, _every(100_000, 30))
    pacer.start()
    try:
        await asyncio.wait_for(eng.finished.wait(), 5)
    finally:
        pacer.stop()
    assert len(eng.sent) == 30


class _SimWaker:
    """A Waker on a simulated clock: it only remembers the deadline the pacer asked for."""

    fd = -1

    def __init__(self) -> None:
        self.deadline = -1
        self.arms = 0

    def arm(self, deadline_ns: int) -> None:
        self.deadline, self.arms = deadline_ns, self.arms + 1

    def disarm(self) -> None:
        self.deadline = -1

    def acknowledge(self) -> None:
        pass

    def close(self) -> None:
        pass


class _SimLoop:
    def add_reader(self, fd: int, cb: object) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass

    def call_soon(self, cb: object) -> None:
        pass


@pytest.mark.parametrize(("step", "n"), [(20_000, 5000), (2_000_000, 100)])
def test_pacer_on_a_simulated_clock(monkeypatch: pytest.MonkeyPatch, step: int, n: int) -> None:
    """Every alarm ringing exactly at its deadline: the pacer's own behaviour, free of scheduler noise. Close sends
    (50,000/s): alarms ring about once per COALESCE_NS, not once per send, and no send leaves more than COALESCE_NS
    late, and completions leave the sending to the alarm (``eager_ns`` never). Spaced sends (500/s): one alarm per
    send, each send leaves within µs of its time, and a completion that finds one due sends it. Never early."""
    clock = [10**12]

    def monotonic_ns() -> int:  # each read advances 1 µs (the wake-early wait in _on_wake polls the clock)
        clock[0] += 1_000
        return clock[0]

    monkeypatch.setattr(pacer_mod, "time", SimpleNamespace(monotonic_ns=monotonic_ns))
    start = clock[0] + 2_000_000
    sent: list[tuple[int, int]] = []

    class SimRecorder(Recorder):
        def dispatch(self, intended: int) -> None:
            sent.append((intended, clock[0]))

    eng = SimRecorder(1 << 61)
    waker = _SimWaker()
    pacer = Pacer(eng, _SimLoop(), start, _every(step, n), waker=waker, pacing="sleep")  # type: ignore[arg-type]
    pacer.start()
    pacer.run_due(clock[0])  # the start kick
    while pacer.next_ns < 1 << 60:
        assert waker.deadline >= 0, "an alarm is always pending while sends remain"
        clock[0] = max(clock[0], waker.deadline)  # the alarm rings on time
        pacer._on_wake()
        # completions send what is due only while sends are spaced; close sends leave in the alarm's batches
        assert pacer.eager_ns == (pacer.next_ns if step >= WAKE_EARLY_MIN_GAP_NS else 1 << 62)
    assert [i for i, _ in sent] == [start + k * step for k in range(n)]
    lags = [t - i for i, t in sent]
    assert min(lags) >= 0, "never early"
    span = step * (n - 1)
    if step < COALESCE_NS:
        assert max(lags) <= COALESCE_NS + 2_000, f"a send left {max(lags) / 1e3:.0f} µs late on an on-time alarm"
        assert span // COALESCE_NS - 5 <= pacer.wakes <= span // COALESCE_NS + 5, f"{pacer.wakes} alarms"
    else:
        assert max(lags) <= 5_000, f"a send left {max(lags) / 1e3:.0f} µs late on an on-time alarm"
        assert n - 1 <= pacer.wakes <= n + 1, f"{pacer.wakes} alarms"
    assert eng.batches <= pacer.wakes + 1


# -- spinning (pacing "spin", and "auto" while the loop is busy) ----------------------------------------------
async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def test_spinning_pacer_sends_on_time_without_alarms_and_counts_its_idle_turns() -> None:
    """Spinning: no alarm at all, every send at or after its time and (median) well inside the alarm period that
    sleeping would coalesce to; the turns with nothing to do are counted as idle, and are most of the time here."""
    step, n = 100_000, 1000  # 10,000/s for 0.1 s
    _, pacer, lags = await _paced(step, n, pacing="spin")
    assert lags[n // 2] < COALESCE_NS, f"median lag {lags[n // 2] / 1e3:.0f} µs"
    assert pacer.wakes == 0 and not pacer.spinning
    assert pacer.spin_ns >= step * (n - 1)
    assert pacer.spin_ns / 2 < pacer.spin_idle_ns <= pacer.spin_ns, "a stub engine leaves the loop mostly idle"


def _busy_cpu(state: dict[str, bool]) -> tuple[Callable[[], int], list[Pacer]]:
    """A process-CPU clock for ``Pacer(cpu_ns=...)``: while ``state["busy"]`` it runs as fast as the wall clock
    plus the pacer's idle spinning (the share the pacer judges is then 100 %); otherwise it stands still (0 %)."""
    holder: list[Pacer] = []
    t0 = time.monotonic_ns()
    frozen = [0]

    def cpu_ns() -> int:
        if state["busy"]:
            frozen[0] = time.monotonic_ns() - t0 + (holder[0].spin_idle_ns if holder else 0)
        return frozen[0]

    return cpu_ns, holder


async def test_auto_pacing_spins_while_the_loop_is_busy_and_sleeps_again_when_it_is_not() -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns() + 2_000_000
    eng = Recorder(start + 10**10)
    step, n = 50_000, 40_000  # 20,000/s: close sends, for up to 2 s
    state = {"busy": True}
    cpu_ns, holder = _busy_cpu(state)
    pacer = Pacer(eng, loop, start, _every(step, n), pacing="auto", cpu_ns=cpu_ns)
    holder.append(pacer)
    pacer.start()
    try:
        await _until(lambda: pacer.spinning)
        wakes = pacer.wakes
        sent = len(eng.sent)
        await asyncio.sleep(0.03)
        assert pacer.spinning
        # the alarm that fired before the switch was cleared: a readable timerfd would call back every turn
        assert pacer.wakes == wakes, "no alarm rings while spinning"
        assert len(eng.sent) > sent
        state["busy"] = False
        await _until(lambda: not pacer.spinning)
        await _until(lambda: pacer.wakes > wakes)  # sleeping on alarms again
    finally:
        pacer.stop()
    lags = [t - i for i, t in eng.sent]
    assert min(lags) >= 0, "never early"
    assert [i for i, _ in eng.sent] == [start + k * step for k in range(len(eng.sent))]
    assert pacer.spin_ns > 0


async def test_auto_pacing_does_not_spin_for_spaced_sends_however_busy() -> None:
    """Sends 1 ms apart leave on precise alarms: spinning between them would burn a core for nothing."""
    cpu_ns, holder = _busy_cpu({"busy": True})
    _, pacer, _ = await _paced(1_000_000, 300, pacing="auto", cpu_ns=cpu_ns, holder=holder)
    assert pacer.spin_ns == 0 and pacer.wakes >= 250


async def test_auto_pacing_judges_the_average_gap_not_the_last_one() -> None:
    """Sends alternately 10 µs and 290 µs apart (150 µs on average, as bursty or Poisson schedules are): a busy
    loop keeps spinning, whichever gap the judgement happens to follow."""
    loop = asyncio.get_running_loop()
    start = time.monotonic_ns() + 2_000_000
    eng = Recorder(start + 10**10)
    offsets = iter([k // 2 * 300_000 + (10_000 if k % 2 else 0) for k in range(20_000)])  # 3 s of schedule
    cpu_ns, holder = _busy_cpu({"busy": True})
    pacer = Pacer(eng, loop, start, offsets, pacing="auto", cpu_ns=cpu_ns)
    holder.append(pacer)
    pacer.start()
    try:
        await _until(lambda: pacer.spinning)
        spun_from = pacer.spin_ns
        deadline = time.monotonic() + 0.6  # six judgements
        while time.monotonic() < deadline:
            assert pacer.spinning, "stopped spinning on one long gap"
            await asyncio.sleep(0.01)
        assert pacer.spin_ns == spun_from  # one unbroken spell: none ended
    finally:
        pacer.stop()

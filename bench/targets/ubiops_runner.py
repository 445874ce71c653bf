"""The UbiOps data plane: direct requests, and batch create + collect + cancel with full accounting.

UbiOps volumes are low (the requests API allows ~300 calls/min per address), so httpx is cheap enough here.
Direct mode records one result per request like an engine does. Batch mode tracks every created id from its
create-sent time until it is first seen finished by the collector, records three histograms (client
end-to-end, server queue, server processing) and ends by cancelling what is still pending, so a run never
leaves work behind on the platform. The invariant created = completed + failed + cancelled + abandoned is
checked and stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import anyio
import httpx
import orjson

from bench.failures import httpx_kind
from bench.results import Kind, LoadSpec, ResultSink, StopSignal
from bench.targets.ubiops import MAX_BATCH, UbiOpsConfig, batch_body, chunks, classify_direct, error_message_of

__all__ = ["UbiOpsSink", "UbiOpsStats", "run_ubiops"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_ERROR_SAMPLES = 20
MAX_COLLECT_CALLS_PER_TICK = 20  # oldest ids first; completions are roughly FIFO
CANCEL_DEADLINE_S = 90.0  # long enough to outwait one rate-limit window


class UbiOpsSink(ResultSink, Protocol):
    """The recorder as the UbiOps runner sees it: the engine sink plus named histograms, counters, gauges."""

    def record_named(self, name: str, value_ns: int) -> None: ...

    def count(self, name: str, n: int = 1) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...


@dataclass
class UbiOpsStats:
    """Run facts for the report (``to_dict`` is JSON-ready)."""

    mode: str
    sent: int = 0  # direct: requests sent; batch: create calls sent
    created: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    abandoned: int = 0
    rate_limited: int = 0
    dropped: int = 0
    create_rejected: int = 0  # batch items in create calls that were refused (4xx/5xx/429)
    create_unknown: int = 0  # batch items whose create call broke off (they may exist unseen)
    collect_calls: int = 0
    cancel_calls: int = 0
    rate_limit_pauses: int = 0
    rate_limit_pause_s: float = 0.0
    poll_interval_mean_s: float = 0.0  # the resolution of batch end-to-end latency
    poll_interval_max_s: float = 0.0
    interrupted: bool = False
    invariant_ok: bool = True
    error_messages: list[str] = field(default_factory=list)

    def note_error(self, detail: bytes) -> None:
        text = detail.decode("utf-8", "replace")
        if text not in self.error_messages and len(self.error_messages) < MAX_ERROR_SAMPLES:
            self.error_messages.append(text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> int:
    return time.monotonic_ns()


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


class _RateGate:
    """Follows the x-ratelimit-* headers. In backoff mode it holds sends while the window's remaining budget
    (minus what is already in flight) is spent, until the announced reset; in count mode it only records."""

    def __init__(self, sink: UbiOpsSink, stats: UbiOpsStats, backoff: bool) -> None:
        self.sink, self.stats, self.backoff = sink, stats, backoff
        self.remaining: int | None = None
        self.reset_at_ns = 0
        self.in_flight = 0
        self._pause_started: int | None = None
        self._answered = anyio.Event()  # set (and replaced) on every observed answer

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        self._answered.set()
        self._answered = anyio.Event()
        limit = _header_int(headers, "x-ratelimit-limit")
        remaining = _header_int(headers, "x-ratelimit-remaining")
        reset = _header_int(headers, "x-ratelimit-reset")
        if limit is not None:
            self.sink.gauge("ratelimit_limit", limit)
        if remaining is not None:
            self.sink.gauge("ratelimit_remaining", remaining)
            self.remaining = remaining
        if reset is not None:
            self.sink.gauge("ratelimit_reset_s", reset)
            self.reset_at_ns = _now() + reset * 1_000_000_000
        if status == 429:
            self.stats.rate_limited += 1
            self.remaining = 0
            if reset is None:  # no header: hold for a second, then probe again
                self.reset_at_ns = max(self.reset_at_ns, _now() + 1_000_000_000)

    async def acquire(self, stop: StopSignal, until_ns: int | None = None) -> bool:
        """Wait (backoff mode) until a send fits in the window; False when stopped or past ``until_ns``."""
        while True:
            if stop.is_set() or (until_ns is not None and _now() >= until_ns):
                return False
            now = _now()
            if self.remaining is not None and now >= self.reset_at_ns:
                self.remaining = None  # a new window: budget unknown until the next answer
            if self.backoff and self.remaining is None and self.in_flight > 0:
                # budget unknown (start, or a new window): one probe at a time until an answer tells it
                await _first(stop, self._answered, 1.0)
                continue
            blocked = self.backoff and self.remaining is not None and self.remaining - self.in_flight <= 0
            if not blocked:
                if self._pause_started is not None:  # the pause is over: record how long sending was held
                    pause = now - self._pause_started
                    self._pause_started = None
                    self.sink.record_named("rate_limit_pause", pause)
                    self.sink.count("rate_limit_pauses")
                    self.stats.rate_limit_pauses += 1
                    self.stats.rate_limit_pause_s += pause / 1e9
                self.in_flight += 1
                return True
            if self._pause_started is None:
                self._pause_started = now
            wake = self.reset_at_ns + 20_000_000  # a little past the reset
            if until_ns is not None:
                wake = min(wake, until_ns)
            with anyio.move_on_after(max(0.0, (wake - now) / 1e9)):
                await stop.wait()

    def release(self) -> None:
        self.in_flight -= 1


class _Flight:
    """Counts outstanding work; ``idle`` is set whenever the count is zero."""

    def __init__(self) -> None:
        self.n = 0
        self.idle = anyio.Event()
        self.idle.set()

    def up(self) -> None:
        if self.n == 0:
            self.idle = anyio.Event()
        self.n += 1

    def down(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.idle.set()


async def _first(stop: StopSignal, event: anyio.Event, timeout_s: float) -> None:
    """Wait until ``event`` or ``stop`` is set, or ``timeout_s`` passes."""

    async def wait_then_cancel(wait: Any, scope: anyio.CancelScope) -> None:
        await wait()
        scope.cancel()

    with anyio.move_on_after(max(0.0, timeout_s)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_then_cancel, stop.wait, tg.cancel_scope)
            tg.start_soon(wait_then_cancel, event.wait, tg.cancel_scope)


def _drop(sink: UbiOpsSink, stats: UbiOpsStats, intended: int) -> None:
    """A send the schedule wanted but could not make (in-flight cap or rate gate): recorded as dropped."""
    sink.dropped(intended)
    stats.dropped += 1


async def _pace_open_loop(load: LoadSpec, stop: StopSignal, busy: _Flight, drop: Callable[[int], None],
                          launch: Callable[[int], bool]) -> None:
    """Walk an open-loop schedule: wait until each send is due (``stop`` interrupts the wait), drop one that
    finds ``busy`` at ``max_in_flight``, else ``launch(intended)``. Ends at the test's end, on stop, or when
    ``launch`` returns False (inputs used up). Shared by direct requests and batch creates."""
    assert load.offsets_ns is not None, "open loop needs offsets_ns"
    for offset in load.offsets_ns:
        intended = load.start_ns + offset
        if intended >= load.end_ns or stop.is_set():
            return
        delay = (intended - _now()) / 1e9
        if delay > 0:
            with anyio.move_on_after(delay):
                await stop.wait()
            if stop.is_set():
                return
        if load.max_in_flight and busy.n >= load.max_in_flight:
            drop(intended)
            continue
        if not launch(intended):
            return


def _client(cfg: UbiOpsConfig, connections: int, read_timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(connect=10.0, read=read_timeout_s, write=30.0, pool=None)
    return httpx.AsyncClient(headers=cfg.headers(), limits=limits, timeout=timeout)


async def run_ubiops(cfg: UbiOpsConfig, inputs: Sequence[bytes], rows_per_input: Sequence[int] | int,
                     sink: UbiOpsSink, load: LoadSpec, stop: StopSignal) -> UbiOpsStats:
    """Apply ``load`` to a UbiOps deployment; returns the run facts.

    ``inputs`` are pre-encoded: whole direct-request bodies (mode direct) or single batch items (mode batch).
    In batch mode, ``load`` paces create calls of ``cfg.batch_size`` items (closed loop: ``concurrency``
    chunks outstanding until all their requests finish; open loop: one chunk per offset) and
    ``max_requests`` caps the number of requests created.
    """
    if not inputs:
        raise ValueError("no inputs to send")
    rows = [rows_per_input] * len(inputs) if isinstance(rows_per_input, int) else list(rows_per_input)
    if len(rows) != len(inputs):
        raise ValueError("rows_per_input must have one entry per input")
    stats = UbiOpsStats(mode=cfg.mode)
    gate = _RateGate(sink, stats, cfg.on_rate_limit == "backoff")
    if cfg.mode == "direct":
        await _Direct(cfg, inputs, rows, sink, load, stop, stats, gate).run()
    else:
        await _Batch(cfg, inputs, rows, sink, load, stop, stats, gate).run()
    return stats


class _Direct:
    def __init__(self, cfg: UbiOpsConfig, inputs: Sequence[bytes], rows: list[int], sink: UbiOpsSink,
                 load: LoadSpec, stop: StopSignal, stats: UbiOpsStats, gate: _RateGate) -> None:
        self.cfg, self.inputs, self.rows, self.sink = cfg, inputs, rows, sink
        self.load, self.stop, self.stats, self.gate = load, stop, stats, gate
        self.url = cfg.direct_url()
        self.next_index = 0
        self.flight = _Flight()
        self.read_timeout_s = (cfg.timeout_s or 300) + 30.0

    def _take(self) -> int | None:
        if self.load.max_requests and self.next_index >= self.load.max_requests:
            return None
        i = self.next_index
        self.next_index += 1
        return i % len(self.inputs)

    async def run(self) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._guard, outer.cancel_scope)
            async with anyio.create_task_group() as inner:
                if self.load.mode == "closed":
                    for _ in range(max(1, self.load.concurrency)):
                        inner.start_soon(self._worker)
                else:
                    inner.start_soon(self._open_loop)
            outer.cancel_scope.cancel()

    async def _guard(self, scope: anyio.CancelScope) -> None:
        """After the end (or stop), give in-flight requests drain_s, then abandon them."""
        with anyio.move_on_after(max(0.0, (self.load.end_ns - _now()) / 1e9)):
            await self.stop.wait()
        self.stats.interrupted = self.stop.is_set() and _now() < self.load.end_ns
        with anyio.move_on_after(self.load.drain_s):
            await self.flight.idle.wait()
        self.stats.abandoned = self.flight.n
        if self.flight.n:
            self.sink.count("abandoned", self.flight.n)
        scope.cancel()

    def _running(self) -> bool:
        return not self.stop.is_set() and _now() < self.load.end_ns

    async def _worker(self) -> None:
        async with _client(self.cfg, 1, self.read_timeout_s) as client:
            while self._running():
                i = self._take()
                if i is None:
                    return
                if not await self.gate.acquire(self.stop, self.load.end_ns):
                    return
                self.flight.up()
                try:
                    await self._one(client, i, _now())
                finally:
                    self.flight.down()

    async def _open_loop(self) -> None:
        connections = max(1, min(self.load.max_in_flight or 64, 64))
        async with _client(self.cfg, connections, self.read_timeout_s) as client, \
                anyio.create_task_group() as sends:

            def launch(intended: int) -> bool:
                i = self._take()
                if i is None:
                    return False
                self.flight.up()  # counted before the task starts so max_in_flight holds
                sends.start_soon(self._open_one, client, i, intended)
                return True

            await _pace_open_loop(self.load, self.stop, self.flight, partial(_drop, self.sink, self.stats), launch)

    async def _open_one(self, client: httpx.AsyncClient, i: int, intended: int) -> None:
        try:
            if not await self.gate.acquire(self.stop):
                _drop(self.sink, self.stats, intended)
                return
            await self._one(client, i, intended)
        finally:
            self.flight.down()

    async def _one(self, client: httpx.AsyncClient, i: int, intended: int) -> None:
        """One direct request; the gate slot has been acquired by the caller."""
        body, rows_in = self.inputs[i], self.rows[i]
        sent = _now()
        self.stats.sent += 1
        try:
            resp = await client.post(self.url, content=body)
        except httpx.HTTPError as exc:
            done = _now()
            kind = httpx_kind(exc)
            self.sink.record(intended, sent, done, kind, 0, rows_in, len(body), 0, 0)
            detail = f"{type(exc).__name__}: {exc}".encode()[:512]
            self.sink.error_detail(kind, 0, detail)
            self.stats.note_error(detail)
            return
        finally:
            self.gate.release()
        done = _now()
        content = resp.content
        self.gate.observe(resp.headers, resp.status_code)
        kind, rows_out, server_ns = classify_direct(resp.status_code, content, rows_in)
        self.sink.record(intended, sent, done, kind, resp.status_code, rows_out, len(body), len(content),
                         server_ns)
        if kind == Kind.OK:
            self.stats.completed += 1
        else:
            if kind == Kind.REQUEST_FAILED:
                self.stats.failed += 1
            detail = error_message_of(content)
            self.sink.error_detail(kind, resp.status_code, detail)
            self.stats.note_error(detail)


@dataclass(slots=True)
class _Chunk:
    remaining: int
    done: anyio.Event


@dataclass(slots=True)
class _Tracked:
    intended_ns: int
    sent_ns: int
    rows: int
    bytes_out: int
    status: str
    chunk: _Chunk


def _ts_ns(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return math.floor(dt.timestamp() * 1_000_000) * 1000


class _Batch:
    def __init__(self, cfg: UbiOpsConfig, inputs: Sequence[bytes], rows: list[int], sink: UbiOpsSink,
                 load: LoadSpec, stop: StopSignal, stats: UbiOpsStats, gate: _RateGate) -> None:
        self.cfg, self.inputs, self.rows, self.sink = cfg, inputs, rows, sink
        self.load, self.stop, self.stats, self.gate = load, stop, stats, gate
        self.pending: dict[str, _Tracked] = {}
        self.creates = _Flight()  # create calls in flight
        self.all_seen: anyio.Event | None = None  # set during the drain when nothing is pending any more
        self.next_index = 0
        self.interval = cfg.poll_interval_s
        self.interval_lo = max(0.005, cfg.poll_interval_s / 8)
        self.interval_hi = max(cfg.poll_interval_s * 8, 2.0)
        self._interval_sum = 0.0
        self._ticks = 0
        self.batch_url, self.collect_url, self.cancel_url = cfg.batch_url(), cfg.collect_url(), cfg.cancel_url()

    async def run(self) -> None:
        connections = max(1, self.load.concurrency if self.load.mode == "closed" else 8) + 2
        async with _client(self.cfg, connections, 120.0) as client:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._collector, client)
                    await self._produce(client)
                    await self._drain()
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_DEADLINE_S):
                    await self._cancel_leftovers(client)
                self._finish_counts()

    # --- producing ----------------------------------------------------------------------------------------
    def _take_chunk(self) -> list[int]:
        size = self.cfg.batch_size
        if self.load.max_requests:
            size = min(size, self.load.max_requests - self.next_index)
        out = [(self.next_index + k) % len(self.inputs) for k in range(max(0, size))]
        self.next_index += len(out)
        return out

    def _running(self) -> bool:
        return not self.stop.is_set() and _now() < self.load.end_ns

    async def _produce(self, client: httpx.AsyncClient) -> None:
        if self.load.mode == "closed":
            async with anyio.create_task_group() as tg:
                for _ in range(max(1, self.load.concurrency)):
                    tg.start_soon(self._closed_worker, client)
        else:
            await self._open_producer(client)
        await self.creates.idle.wait()  # creates already sent must finish: their ids have to be tracked
        self.stats.interrupted = self.stop.is_set() and _now() < self.load.end_ns

    async def _closed_worker(self, client: httpx.AsyncClient) -> None:
        while self._running():
            items = self._take_chunk()
            if not items:
                return
            if not await self.gate.acquire(self.stop, self.load.end_ns):
                return
            chunk = await self._create(client, items, _now())
            if chunk is None:  # refused: do not hammer; wait one poll interval
                with anyio.move_on_after(self.cfg.poll_interval_s):
                    await self.stop.wait()
                continue
            await _first(self.stop, chunk.done, (self.load.end_ns - _now()) / 1e9)

    async def _open_producer(self, client: httpx.AsyncClient) -> None:
        async with anyio.create_task_group() as tg:

            def launch(intended: int) -> bool:
                items = self._take_chunk()
                if not items:
                    return False
                tg.start_soon(self._open_create, client, items, intended)
                return True

            await _pace_open_loop(self.load, self.stop, self.creates, partial(_drop, self.sink, self.stats), launch)

    async def _open_create(self, client: httpx.AsyncClient, items: list[int], intended: int) -> None:
        if await self.gate.acquire(self.stop, self.load.end_ns):
            await self._create(client, items, intended)
        else:
            _drop(self.sink, self.stats, intended)

    async def _create(self, client: httpx.AsyncClient, items: list[int], intended: int) -> _Chunk | None:
        """One batch create call (gate slot already acquired). Returns the chunk when requests were created."""
        body = batch_body([self.inputs[i] for i in items])
        rows = sum(self.rows[i] for i in items)
        self.creates.up()
        self.stats.sent += 1
        sent = _now()
        try:
            # shielded: once sent, the answer (and so the ids) must be read even when the run is cancelled
            with anyio.CancelScope(shield=True):
                resp = await client.post(self.batch_url, content=body)
        except httpx.HTTPError as exc:
            kind = httpx_kind(exc)
            self.sink.record(intended, sent, _now(), kind, 0, rows, len(body), 0, 0)
            detail = f"{type(exc).__name__}: {exc}".encode()[:512]
            self.sink.error_detail(kind, 0, detail)
            self.stats.note_error(detail)
            self.stats.create_unknown += len(items)
            self.sink.count("create_unknown", len(items))
            return None
        finally:
            self.gate.release()
            self.creates.down()
        done = _now()
        self.gate.observe(resp.headers, resp.status_code)
        ids = self._created_ids(resp) if 200 <= resp.status_code < 300 else None
        if ids is None:
            kind = Kind.RATE_LIMITED if resp.status_code == 429 else (
                Kind.HTTP_ERROR if resp.status_code >= 300 else Kind.BAD_RESPONSE)
            self.sink.record(intended, sent, done, kind, resp.status_code, rows, len(body), len(resp.content), 0)
            detail = error_message_of(resp.content)
            self.sink.error_detail(kind, resp.status_code, detail)
            self.stats.note_error(detail)
            self.stats.create_rejected += len(items)
            self.sink.count("create_rejected", len(items))
            return None
        self.sink.record_named("batch_create", done - sent)
        chunk = _Chunk(remaining=len(ids), done=anyio.Event())
        if not ids:
            chunk.done.set()
        for k, (request_id, status) in enumerate(ids):
            i = items[k] if k < len(items) else items[-1]
            self.pending[request_id] = _Tracked(intended, sent, self.rows[i], len(self.inputs[i]), status, chunk)
            self.sink.count(f"status_{status}")
        self.stats.created += len(ids)
        return chunk

    def _created_ids(self, resp: httpx.Response) -> list[tuple[str, str]] | None:
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            return None
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list):
            return None
        out = [(str(d["id"]), str(d.get("status") or "pending")) for d in doc if isinstance(d, dict) and "id" in d]
        return out or None

    # --- collecting ---------------------------------------------------------------------------------------
    async def _collector(self, client: httpx.AsyncClient) -> None:
        while True:  # ends when the run cancels it
            await anyio.sleep(self.interval)
            self._ticks += 1
            self._interval_sum += self.interval
            self.stats.poll_interval_max_s = max(self.stats.poll_interval_max_s, self.interval)
            self.sink.gauge("batch_poll_interval_ms", self.interval * 1000)
            self.sink.record_named("batch_poll_interval", int(self.interval * 1e9))
            seen = await self._collect_once(client)
            self.interval = (max(self.interval_lo, self.interval / 2) if seen
                             else min(self.interval_hi, self.interval * 1.5))

    async def _collect_once(self, client: httpx.AsyncClient) -> int:
        """Poll the oldest pending ids; returns how many finished requests were seen."""
        ids = list(self.pending)[:MAX_BATCH * MAX_COLLECT_CALLS_PER_TICK]
        finished = 0
        for group in chunks(ids, MAX_BATCH):
            if not await self.gate.acquire(self.stop):
                break
            try:
                resp = await client.post(self.collect_url, content=orjson.dumps(list(group)))
            except httpx.HTTPError as exc:
                self.sink.count("collect_errors")
                self.stats.note_error(f"collect: {type(exc).__name__}: {exc}".encode()[:512])
                break
            finally:
                self.gate.release()
            now = _now()
            self.stats.collect_calls += 1
            self.gate.observe(resp.headers, resp.status_code)
            if resp.status_code == 429:
                self.sink.count("collect_rate_limited")
                break
            if not 200 <= resp.status_code < 300:
                self.sink.count("collect_errors")
                self.stats.note_error(b"collect: " + error_message_of(resp.content))
                continue
            try:
                details = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                self.sink.count("collect_errors")
                continue
            for d in details if isinstance(details, list) else ():
                if isinstance(d, dict):
                    finished += self._seen(d, now)
        return finished

    def _seen(self, d: Mapping[str, Any], now: int) -> int:
        tr = self.pending.get(str(d.get("id")))
        if tr is None:
            return 0
        status = str(d.get("status"))
        if status != tr.status:
            tr.status = status
            self.sink.count(f"status_{status}")
        if status not in TERMINAL:
            return 0
        del self.pending[str(d.get("id"))]
        self.sink.record_named("batch_e2e", now - tr.sent_ns)
        created, started, completed = (_ts_ns(d.get(k)) for k in ("time_created", "time_started",
                                                                  "time_completed"))
        if created is not None and started is not None and started >= created:
            self.sink.record_named("queue", started - created)
        processing = 0
        if started is not None and completed is not None and completed >= started:
            processing = completed - started
            self.sink.record_named("processing", processing)
        out_size = d.get("output_size")
        bytes_in = out_size if isinstance(out_size, int) else 0
        if status == "completed":
            self.stats.completed += 1
            self.sink.record(tr.intended_ns, tr.sent_ns, now, Kind.OK, 200, tr.rows, tr.bytes_out, bytes_in,
                             processing)
        elif status == "failed":
            self.stats.failed += 1
            self.sink.record(tr.intended_ns, tr.sent_ns, now, Kind.REQUEST_FAILED, 200, tr.rows, tr.bytes_out,
                             bytes_in, processing)
            detail = str(d.get("error_message") or "failed").encode()[:512]
            self.sink.error_detail(Kind.REQUEST_FAILED, 200, detail)
            self.stats.note_error(detail)
        else:
            self.stats.cancelled += 1
        tr.chunk.remaining -= 1
        if tr.chunk.remaining <= 0:
            tr.chunk.done.set()
        if not self.pending and self.all_seen is not None:
            self.all_seen.set()
        return 1

    # --- ending -------------------------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Not interrupted: let the collector finish what is pending, for at most drain_timeout."""
        if self.stats.interrupted:
            return
        if not self.pending:
            return
        self.all_seen = anyio.Event()
        await _first(self.stop, self.all_seen, self.cfg.drain_timeout_s)

    async def _cancel_leftovers(self, client: httpx.AsyncClient) -> None:
        """Cancel every still-pending request (≤ 250 ids per call) and count them as abandoned."""
        leftovers = list(self.pending)
        self.pending.clear()
        self.stats.abandoned += len(leftovers)
        for group in chunks(leftovers, MAX_BATCH):
            while True:
                try:
                    resp = await client.post(self.cancel_url, content=orjson.dumps(list(group)))
                except httpx.HTTPError as exc:
                    self.stats.note_error(f"cancel: {type(exc).__name__}: {exc}".encode()[:512])
                    self.sink.count("cancel_errors")
                    break
                self.stats.cancel_calls += 1
                self.gate.observe(resp.headers, resp.status_code)
                if resp.status_code != 429:
                    if not 200 <= resp.status_code < 300:
                        self.sink.count("cancel_errors")
                        self.stats.note_error(b"cancel: " + error_message_of(resp.content))
                    break
                await anyio.sleep(max(0.05, (self.gate.reset_at_ns - _now()) / 1e9 + 0.02))

    def _finish_counts(self) -> None:
        s = self.stats
        if self._ticks:
            s.poll_interval_mean_s = self._interval_sum / self._ticks
        for name in ("created", "completed", "failed", "cancelled", "abandoned"):
            self.sink.count(f"batch_{name}", getattr(s, name))
        s.invariant_ok = s.created == s.completed + s.failed + s.cancelled + s.abandoned
        self.sink.count("batch_invariant_broken", 0 if s.invariant_ok else 1)
        if s.poll_interval_mean_s:
            self.sink.gauge("batch_poll_interval_mean_ms", s.poll_interval_mean_s * 1000)

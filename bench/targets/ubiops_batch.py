"""UbiOps batch mode: create chunks of requests, collect them as they finish, cancel what is left at the end.

Every created id is tracked from its create-sent time until the collector first sees it finished; three
histograms are recorded (client end-to-end, server queue, server processing), and the invariant
created = completed + failed + cancelled + abandoned + missing is checked and stored. Every call draws on
the request budget (bench.targets.ubiops_budget), and the collector spaces its polls to fit it. A collect
that answers 404 (one unknown id makes the platform return nothing) is bisected until the missing ids are
isolated; they are counted as ``missing``. Create / collect / cancel are control-plane calls on httpx with the
run's [engine] timeouts, so a stalled call cannot hold the run; the run's stop breaks off the create calls still
out (their items: ``abandoned``, in flight at the end) and a checkpoint reads ``items_sent`` at any moment.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import httpx
import orjson

from bench.failures import httpx_kind
from bench.results import Kind, LoadSpec, StopSignal
from bench.targets.ubiops import MAX_BATCH, UbiOpsConfig, batch_body, chunks, error_message_of, may_concern_ids
from bench.targets.ubiops_cancel import cancel_requests
from bench.targets.ubiops_plane import (
    CANCEL_DEADLINE_S,
    MAX_COLLECT_CALLS_PER_TICK,
    TERMINAL,
    Flight,
    RateGate,
    UbiOpsSink,
    UbiOpsStats,
    client_for,
    drop,
    first_of,
    now_ns,
    pace_open_loop,
)

__all__ = ["STOP_GRACE_S", "Batch"]

STOP_GRACE_S = 1.0  # after a stop, creates still out this long are broken off (a healthy one answers sooner)


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


class Batch:
    def __init__(self, cfg: UbiOpsConfig, inputs: Sequence[bytes], rows: list[int], sink: UbiOpsSink,
                 load: LoadSpec, stop: StopSignal, stats: UbiOpsStats, gate: RateGate,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.cfg, self.inputs, self.rows, self.sink = cfg, inputs, rows, sink
        self.verify = verify  # the run's TLS trust for the API (bench.tlstrust)
        self.load, self.stop, self.stats, self.gate = load, stop, stats, gate
        self.pending: dict[str, _Tracked] = {}
        self.creates = Flight()  # create calls in flight
        self._create_scopes: set[anyio.CancelScope] = set()  # theirs: the run's stop cancels them
        self.all_seen: anyio.Event | None = None  # set during the drain when nothing is pending any more
        self.next_index = 0
        self.items_sent = 0  # items in create calls so far, answered or not (a checkpoint's 'sent')
        self.interval = cfg.poll_interval_s
        self.interval_lo = max(0.005, cfg.poll_interval_s / 8)
        self.interval_hi = max(cfg.poll_interval_s * 8, 2.0)
        self._interval_sum = 0.0
        self._ticks = 0
        self.batch_url, self.collect_url, self.cancel_url = cfg.batch_url(), cfg.collect_url(), cfg.cancel_url()
        # a second Ctrl-C / SIGTERM: the drain ends now. The collector and the drain wait on it, not on the stop:
        # after a first stop, what the platform completes within drain_timeout is still collected
        self.cut: StopSignal = load.drain_cut if load.drain_cut is not None else anyio.Event()

    async def run(self) -> None:
        connections = max(1, self.load.concurrency if self.load.mode == "closed" else 8) + 2
        async with client_for(self.cfg, connections, self.verify) as client:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._collector, client)
                    tg.start_soon(self._stop_creates)
                    await self._produce(client)
                    await self._drain()
                    tg.cancel_scope.cancel()
            finally:
                # after a stop signal only one call timeout for the cancels: the partial report must come soon
                deadline = CANCEL_DEADLINE_S if not self.stop.is_set() else min(CANCEL_DEADLINE_S,
                                                                                 self.cfg.call_timeout_s)
                with anyio.CancelScope(shield=True), anyio.move_on_after(deadline):
                    await self._cancel_leftovers(client, deadline)
                self._finish_counts()

    async def _stop_creates(self) -> None:
        """The run's stop (Ctrl-C, SIGTERM, the runner's deadline) breaks off the create calls still out, after
        a short grace: a create answered in it gives ids, so its requests are cancelled, not left running."""
        await self.stop.wait()
        with anyio.move_on_after(min(STOP_GRACE_S, self.cfg.call_timeout_s)):
            await self.creates.idle.wait()
        for scope in list(self._create_scopes):
            scope.cancel()

    # --- producing ----------------------------------------------------------------------------------------
    def _take_chunk(self) -> list[int]:
        size = self.cfg.batch_size
        if self.load.max_requests:
            size = min(size, self.load.max_requests - self.next_index)
        out = [(self.next_index + k) % len(self.inputs) for k in range(max(0, size))]
        self.next_index += len(out)
        return out

    def _running(self) -> bool:
        return not self.stop.is_set() and now_ns() < self.load.end_ns

    async def _produce(self, client: httpx.AsyncClient) -> None:
        if self.load.mode == "closed":
            async with anyio.create_task_group() as tg:
                for _ in range(max(1, self.load.concurrency)):
                    tg.start_soon(self._closed_worker, client)
        else:
            await self._open_producer(client)
        await self.creates.idle.wait()  # creates already sent must finish: their ids have to be tracked
        self.stats.interrupted = self.stop.is_set() and now_ns() < self.load.end_ns

    async def _closed_worker(self, client: httpx.AsyncClient) -> None:
        while self._running():
            items = self._take_chunk()
            if not items:
                return
            if not await self.gate.acquire(self.stop, self.load.end_ns, purpose="create"):
                return
            chunk = await self._create(client, items, now_ns())
            if chunk is None:  # refused: do not hammer; wait one poll interval
                with anyio.move_on_after(self.cfg.poll_interval_s):
                    await self.stop.wait()
                continue
            await first_of(self.stop, chunk.done, (self.load.end_ns - now_ns()) / 1e9)

    async def _open_producer(self, client: httpx.AsyncClient) -> None:
        async with anyio.create_task_group() as tg:

            def launch(intended: int) -> bool:
                items = self._take_chunk()
                if not items:
                    return False
                tg.start_soon(self._open_create, client, items, intended)
                return True

            await pace_open_loop(self.load, self.stop, self.creates, partial(drop, self.sink, self.stats), launch)

    async def _open_create(self, client: httpx.AsyncClient, items: list[int], intended: int) -> None:
        if await self.gate.acquire(self.stop, self.load.end_ns, purpose="create"):
            await self._create(client, items, intended)
        else:
            drop(self.sink, self.stats, intended)

    async def _create(self, client: httpx.AsyncClient, items: list[int], intended: int) -> _Chunk | None:
        """One batch create call (gate slot already acquired). Returns the chunk when requests were created."""
        body = batch_body([self.inputs[i] for i in items])
        self.creates.up()
        self.stats.sent += 1
        self.items_sent += len(items)
        sent = now_ns()
        resp: httpx.Response | None = None
        settled = False
        scope = anyio.CancelScope()  # cancelled by the run's stop: its items are then in flight at the end
        self._create_scopes.add(scope)
        try:
            with scope:
                resp = await client.post(self.batch_url, content=body)
        except Exception as exc:  # every failure is counted by kind, never a crashed run
            settled = True
            kind = httpx_kind(exc)
            self._refused(items, intended, sent, now_ns(), kind, 0, 0)
            detail = f"{type(exc).__name__}: {exc}".encode()[:512]
            self.sink.error_detail(kind, 0, detail)
            self.stats.note_error(detail)
            self.stats.create_unknown += len(items)
            self.sink.count("create_unknown", len(items))
            return None
        finally:
            self._create_scopes.discard(scope)
            self.gate.release()
            self.creates.down()
            if resp is None and not settled:  # stopped or cancelled with the call out: no ids, no answer
                self._create_abandoned(len(items))
        if resp is None:
            return None
        done = now_ns()
        self.gate.observe(resp.headers, resp.status_code)
        ids = self._created_ids(resp) if 200 <= resp.status_code < 300 else None
        if ids is None:
            kind = Kind.RATE_LIMITED if resp.status_code == 429 else (
                Kind.HTTP_ERROR if resp.status_code >= 300 else Kind.BAD_RESPONSE)
            self._refused(items, intended, sent, done, kind, resp.status_code, len(resp.content))
            detail = error_message_of(resp.content)
            self.sink.error_detail(kind, resp.status_code, detail)
            self.stats.note_error(detail)
            self.stats.create_rejected += len(items)
            self.sink.count("create_rejected", len(items))
            return None
        self.sink.record_named("batch_create", done - sent, intended)
        chunk = _Chunk(remaining=len(ids), done=anyio.Event())
        if not ids:
            chunk.done.set()
        for k, (request_id, status) in enumerate(ids):
            i = items[k] if k < len(items) else items[-1]
            self.pending[request_id] = _Tracked(intended, sent, self.rows[i], len(self.inputs[i]), status, chunk)
            self.sink.count(f"status_{status}")
        self.stats.created += len(ids)
        return chunk

    def _create_abandoned(self, n: int) -> None:
        """A create call broken off by the run's end: its items were sent and never answered (``abandoned``);
        the platform may have created them, but their ids are unknown, so they cannot be cancelled."""
        self.stats.create_abandoned += n
        self.sink.count("create_abandoned", n)
        self.sink.abandoned(n, now_ns())

    def _refused(self, items: list[int], intended: int, sent: int, done: int, kind: int, status: int,
                 bytes_in: int) -> None:
        """A create call that created nothing: each of its items is one request that failed that way."""
        for k, i in enumerate(items):
            self.sink.record(intended, sent, done, kind, status, self.rows[i], len(self.inputs[i]),
                             bytes_in if k == 0 else 0, 0)

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
    def _budget_floor_s(self, calls: int) -> float:
        """The shortest poll interval the budget affords after a tick of ``calls`` collect calls: half the
        budget while creates still need it, 90 % once only the drain is left (the rest is cancel's reserve)."""
        budget = self.gate.budget
        if not budget.limited:
            return 0.0
        share = 0.9 if self.all_seen is not None or self.stats.interrupted else 0.5
        return max(1, calls) / budget.rate_for(share)

    async def _collector(self, client: httpx.AsyncClient) -> None:
        calls = 1
        while True:  # ends when the run cancels it
            interval = max(self.interval, self._budget_floor_s(calls))
            await anyio.sleep(interval)
            self._ticks += 1
            self._interval_sum += interval
            self.stats.poll_interval_max_s = max(self.stats.poll_interval_max_s, interval)
            self.sink.gauge("batch_poll_interval_ms", interval * 1000)
            self.sink.record_named("batch_poll_interval", int(interval * 1e9))
            before = self.stats.collect_calls
            seen = await self._collect_once(client)
            calls = self.stats.collect_calls - before
            self.interval = (max(self.interval_lo, self.interval / 2) if seen
                             else min(self.interval_hi, self.interval * 1.5))

    async def _collect_once(self, client: httpx.AsyncClient) -> int:
        """Poll the oldest pending ids, group by group while at least half of a group had finished (completions
        are roughly FIFO: newer groups are unlikely to be done when an older one is not); returns how many
        finished requests were seen."""
        ids = list(self.pending)[:MAX_BATCH * MAX_COLLECT_CALLS_PER_TICK]
        finished = 0
        for group in chunks(ids, MAX_BATCH):
            seen = await self._collect_group(client, group, bisecting=False)
            if seen is None:
                break
            finished += seen
            if self.gate.budget.limited and seen * 2 < len(group):
                break
        return finished

    async def _collect_group(self, client: httpx.AsyncClient, group: Sequence[str], *, bisecting: bool) -> int | None:
        """One collect call; a 4xx that may concern the ids (one unknown id makes the platform return nothing; the
        reference names no status) is bisected until the missing ids are isolated — not only a 404, or a group
        would fail every tick and block all newer ones. Returns finished requests seen, None when the tick
        should end."""
        if not await self.gate.acquire(self.cut, purpose="collect"):  # collects go on through a drain after a stop
            return None
        try:
            resp = await client.post(self.collect_url, content=orjson.dumps(list(group)))
        except httpx.HTTPError as exc:
            self.sink.count("collect_errors")
            self.stats.note_error(f"collect: {type(exc).__name__}: {exc}".encode()[:512])
            return None
        finally:
            self.gate.release()
        now = now_ns()
        self.stats.collect_calls += 1
        if bisecting:
            self.stats.collect_bisect_calls += 1
        self.gate.observe(resp.headers, resp.status_code)
        if resp.status_code == 429:
            self.sink.count("collect_rate_limited")
            return None
        if may_concern_ids(resp.status_code):  # one unknown id fails the call (404, or 400 as some answer)
            if len(group) == 1:
                self._missing(group[0], resp.content)
                return 0
            half = len(group) // 2
            found = 0
            for part in (group[:half], group[half:]):
                seen = await self._collect_group(client, part, bisecting=True)
                if seen is None:
                    return None
                found += seen
            return found
        if not 200 <= resp.status_code < 300:
            self.sink.count("collect_errors")
            self.stats.note_error(b"collect: " + error_message_of(resp.content))
            return 0
        try:
            details = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            self.sink.count("collect_errors")
            return 0
        finished = 0
        for d in details if isinstance(details, list) else ():
            if isinstance(d, dict):
                finished += self._seen(d, now)
        return finished

    def _missing(self, request_id: str, content: bytes) -> None:
        """The platform does not know this id any more (deleted, expired): its own kind, never polled again."""
        tr = self.pending.pop(request_id, None)
        if tr is None:
            return
        self.stats.missing += 1
        self.sink.count("batch_missing")
        self.sink.record(tr.intended_ns, tr.sent_ns, now_ns(), Kind.MISSING, 0, tr.rows, tr.bytes_out, 0, 0)
        self.stats.note_error(b"collect: request not found: " + error_message_of(content))
        self._settled(tr)

    def _settled(self, tr: _Tracked) -> None:
        tr.chunk.remaining -= 1
        if tr.chunk.remaining <= 0:
            tr.chunk.done.set()
        if not self.pending and self.all_seen is not None:
            self.all_seen.set()

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
        self.sink.record_named("batch_e2e", now - tr.sent_ns, tr.intended_ns)  # phased like the request
        created, started, completed = (_ts_ns(d.get(k)) for k in ("time_created", "time_started",
                                                                  "time_completed"))
        if created is not None and started is not None and started >= created:
            self.sink.record_named("queue", started - created, tr.intended_ns)
        processing = 0
        if started is not None and completed is not None and completed >= started:
            processing = completed - started
            self.sink.record_named("processing", processing, tr.intended_ns)
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
            self.sink.record(tr.intended_ns, tr.sent_ns, now, Kind.CANCELLED, 0, tr.rows, tr.bytes_out, bytes_in, 0)
        self._settled(tr)
        return 1

    # --- ending -------------------------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Let the collector finish what is pending, for at most drain_timeout, after the end of the load or a
        first stop signal alike (Ctrl-C promises the drain); a second signal (``drain_cut``) ends it at once."""
        if not self.pending or self.cut.is_set():
            return
        self.all_seen = anyio.Event()
        await first_of(self.cut, self.all_seen, self.cfg.drain_timeout_s)

    async def _cancel_leftovers(self, client: httpx.AsyncClient, deadline_s: float) -> None:
        """Cancel every still-pending request (batch route, else per-request PATCH) and count them abandoned."""
        leftovers = list(self.pending)
        self.pending.clear()
        self.stats.abandoned += len(leftovers)
        self.sink.abandoned(len(leftovers), now_ns())  # in flight at the end: errors of kind 'abandoned'
        if leftovers:
            await cancel_requests(self.cfg, client, self.gate, self.sink, self.stats, leftovers,
                                  now_ns() + int(deadline_s * 1e9))

    def _finish_counts(self) -> None:
        s = self.stats
        if self._ticks:
            s.poll_interval_mean_s = self._interval_sum / self._ticks
        for name in ("created", "completed", "failed", "cancelled", "abandoned"):
            self.sink.count(f"batch_{name}", getattr(s, name))
        s.invariant_ok = s.created == s.completed + s.failed + s.cancelled + s.abandoned + s.missing
        # items: the requests
        self.sink.count("sent", s.created + s.create_rejected + s.create_unknown + s.create_abandoned)
        self.sink.count("batch_invariant_broken", 0 if s.invariant_ok else 1)
        if s.poll_interval_mean_s:
            self.sink.gauge("batch_poll_interval_mean_ms", s.poll_interval_mean_s * 1000)

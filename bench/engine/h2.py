"""The lean HTTP/2 engine: one asyncio.Protocol per connection driving the ``h2`` state machine directly.

Why not httpx: httpcore spends ~700 µs of CPU per HTTP/2 request (a coroutine, locks and events per stream), so a
Python client topped out near 1,300 req/s on one core. Here the hot path is transport callbacks, as in the lean
HTTP/1.1 engine (``bench.engine.fast``, whose pacer, sweeper and error mapping this module reuses):

- request header blocks are HPACK-encoded once per body (static-table indices and literals that never touch the
  dynamic table, so the same bytes stay valid for the life of the connection) and handed to h2 through an
  encoder that returns them as they are; they are rebuilt only by ``set_headers``;
- answer header blocks are decoded once per distinct block (``_CachingDecoder``) while they leave the dynamic
  table untouched;
- h2 runs with header validation and normalisation off, 16 MiB receive windows, received data acknowledged
  once per ``data_received``, and everything h2 wants to send is written once per callback, not per frame.

Closed loop: ``concurrency`` workers spread round-robin over ``connections`` (0 → 1) connections; a worker's
next request goes out from the callback that finished its previous one. Streams beyond the server's
max_concurrent_streams wait on their connection. Open loop: the shared pacer dispatches each due request to the
connection with the most free stream capacity; a send is dropped when ``max_in_flight`` requests are out.

GOAWAY: requests on streams above the server's last_stream_id were never processed and are sent once more on a
new connection; the others may still be answered on the old connection (graceful shutdown), which is then
closed. A REFUSED_STREAM reset is retried the same way; any other reset is a ``protocol_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import Decoder, Encoder, HeaderTuple
from hpack.table import HeaderTable

from bench.engine.base import Classifier, EngineConfig, LoadSpec, RequestSet, ResultSink
from bench.engine.common import DEFAULT_OPEN_LIMIT, CallbackEngine, backoff_s
from bench.engine.fast import Target, exception_kind, make_ssl_context, parse_target
from bench.results import Kind

__all__ = ["H2Engine", "encode_header_block", "h2_header_list"]

_OK = int(Kind.OK)
_RESET = int(Kind.RESET)
_PROTOCOL = int(Kind.PROTOCOL_ERROR)
_READ_TIMEOUT = int(Kind.READ_TIMEOUT)
_WINDOW = 16 * 1024 * 1024  # receive window (connection and per stream)
_REFUSED_STREAM = 7
_LAST_STREAM_ID = 2**31 - 1 - 2 * 4096  # open a fresh connection well before stream ids run out
_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                   "proxy-connection", "upgrade", "te"})
_PURGE_EVERY = 128
_ODD = h2.connection.AllowedStreamIDs.ODD
_CLOSED = h2.connection.ConnectionState.CLOSED
_NEVER_INDEX = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC.setdefault((_n, _v), _i)
    _STATIC_NAMES.setdefault(_n, _i)
del _i, _n, _v


# -- HPACK, encoded once ----------------------------------------------------------------------------------
def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 5.1) with the representation's pattern bits in ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(s: bytes) -> bytes:
    return _int(len(s), 7, 0) + s  # raw octets, no Huffman: encoded once, so size matters little


def encode_header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """HPACK block that never reads or writes the dynamic table, so it can be resent verbatim forever.

    Exact static-table matches are indexed; everything else is a literal without indexing (never-indexed for
    credentials, which also tells intermediaries not to index them).
    """
    out = bytearray()
    for name, value in headers:
        idx = _STATIC.get((name, value))
        if idx is not None:
            out += _int(idx, 7, 0x80)
            continue
        first = 0x10 if name in _NEVER_INDEX else 0x00
        nidx = _STATIC_NAMES.get(name)
        if nidx is not None:
            out += _int(nidx, 4, first)
        else:
            out += bytes([first]) + _string(name)
        out += _string(value)
    return bytes(out)


def h2_header_list(method: str, target: Target, headers: Mapping[str, str], body_len: int) -> list[tuple[bytes, bytes]]:
    """Pseudo-headers first, names lower-cased, connection-specific fields dropped (RFC 9113 8.2.2)."""
    out = [(b":method", method.upper().encode("ascii")), (b":scheme", b"https" if target.tls else b"http"),
           (b":authority", target.host_header.encode("ascii")), (b":path", target.path.encode("latin-1"))]
    for name, value in headers.items():
        low = name.lower()
        if low in _DROP:
            continue
        if any(c in value for c in "\r\n\0") or any(c in low for c in "\r\n\0: "):
            raise ValueError(f"header {name!r} contains a forbidden character")
        out.append((low.encode("latin-1"), value.encode("latin-1")))
    out.append((b"content-length", str(body_len).encode()))
    return out


class _PreEncoder(Encoder):
    """h2's encoder slot: returns the block the engine pre-encoded for the request being sent."""

    def __init__(self) -> None:
        super().__init__()
        self.block = b""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized:  # the peer changed SETTINGS_HEADER_TABLE_SIZE: acknowledge it in the next block
            table.resized = False
            return _int(table.maxsize, 5, 0x20) + self.block
        return self.block


class _CountingTable(HeaderTable):
    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        had = bool(self.dynamic_entries)
        super().add(name, value)
        if had or self.dynamic_entries:  # a zero-size table (nginx sets one) keeps no state: no change
            self.changes += 1


class _CachingDecoder(Decoder):
    """Decodes each distinct answer header block once.

    A cached result is reused only while the dynamic table is unchanged since it was decoded: a block that
    inserts nothing decodes the same way as long as no other block has changed the table.
    """

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._cache: dict[bytes, Iterable[HeaderTuple]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        hit = self._cache.get(data)
        if hit is not None and raw:
            return hit
        table = self.header_table
        assert isinstance(table, _CountingTable)
        before = (table.changes, table.maxsize)
        headers = super().decode(data, raw=raw)
        if (table.changes, table.maxsize) != before:
            self._cache.clear()
        elif raw:
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[bytes(data)] = headers
        return headers


def _h2_config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                     normalize_outbound_headers=False, validate_inbound_headers=False,
                                     normalize_inbound_headers=False)


# -- per-request and per-connection state --------------------------------------------------------------------
class _Stream:
    """One request: where it is (waiting, sent, body partly sent) and what came back so far."""

    __slots__ = ("body", "bytes_in", "bytes_out", "idx", "intended", "kept", "parts", "pos", "retried", "rows_in",
                 "sent", "sid", "slot", "status")

    def __init__(self) -> None:
        self.sid = 0
        self.slot = 0
        self.idx = 0
        self.intended = 0
        self.sent = 0
        self.rows_in = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.pos = 0
        self.status = 0
        self.body = b""  # first kept chunk; ``parts`` holds every kept chunk once a second arrives (one join)
        self.parts: list[bytes] | None = None
        self.kept = 0
        self.retried = False

    def keep(self, data: bytes, cap: int) -> None:
        """Keep at most ``cap`` bytes of the answer, as chunks (no copy of the prefix per chunk)."""
        room = cap - self.kept
        if room <= 0 or not data:
            return
        if len(data) > room:
            data = data[:room]
        if not self.kept:
            self.body = data
        elif self.parts is None:
            self.parts = [self.body, data]
        else:
            self.parts.append(data)
        self.kept += len(data)

    def take_body(self) -> bytes:
        parts = self.parts
        body = self.body if parts is None else b"".join(parts)
        self.body = b""
        self.parts = None
        self.kept = 0
        return body


class _Conn(asyncio.Protocol):
    """One HTTP/2 connection. ``streams`` are on the wire; ``waiting`` are assigned but not yet started."""

    __slots__ = ("blocked", "dead", "dirty", "enc", "eng", "goaway", "h2", "max_streams", "ready", "slot", "started",
                 "streams", "t_connect", "transport", "waiting")

    def __init__(self, eng: H2Engine, slot: int) -> None:
        self.eng = eng
        self.slot = slot
        conn = h2.connection.H2Connection(config=_h2_config())
        self.enc = _PreEncoder()
        conn.encoder = self.enc
        conn.decoder = _CachingDecoder()
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
        })
        self.h2 = conn
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.waiting: list[_Stream] = []
        self.blocked: list[_Stream] = []  # request bodies waiting for send window
        self.ready = False
        self.dead = False
        self.goaway = False
        self.dirty = False
        self.started = 0
        self.t_connect = time.monotonic_ns()
        self.max_streams = 100  # until the server's SETTINGS say otherwise

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.eng.connected(self, self.t_connect)

    def data_received(self, data: bytes) -> None:
        eng = self.eng
        eng._batching = True
        try:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                eng.conn_failed(self, _PROTOCOL, f"HTTP/2 protocol error: {exc!r}")
                return
            try:
                eng.handle(self, events)
            except h2.exceptions.ProtocolError as exc:  # h2 refused something we asked of this connection
                eng.conn_failed(self, _PROTOCOL, f"HTTP/2 protocol error: {exc!r}")
        finally:
            eng._batching = False
            eng.flush()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.dead:
            self.eng.lost(self, exc)

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()


class H2Engine(CallbackEngine):
    """Lean HTTP/2 engine (see the module docstring). Constructed as ``H2Engine(config, requests, classify, sink)``."""

    def __init__(self, config: EngineConfig, requests: RequestSet, classify: Classifier,
                 sink: ResultSink) -> None:
        super().__init__(config, requests, classify, sink)
        self.target = parse_target(requests.url)
        self._bodies = [b.body for b in requests.bodies]
        self._sizes = [len(b) for b in self._bodies]
        self._nbodies = len(self._bodies)
        self._headers: dict[str, str] = dict(requests.headers)
        self._blocks, self._mini = self._build(self._headers)
        self._ssl = make_ssl_context(config, ["h2"]) if self.target.tls else None
        self._nconn = max(1, config.connections or 1)
        self._slots: list[_Conn | None] = [None] * self._nconn
        self._fails = [0] * self._nconn
        self._conns: set[_Conn] = set()
        self._dirty: list[_Conn] = []
        self._batching = False
        self._flush_soon = False
        self._free: list[_Stream] = []
        self._rr = 0

    def _build(self, headers: Mapping[str, str]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        t = self.target
        method = self.requests.method
        blocks = [encode_header_block(h2_header_list(method, t, headers, n)) for n in self._sizes]
        # h2 reads only :method and :authority from the list it is given (the block itself is pre-encoded)
        mini = [(b":method", method.upper().encode("ascii")), (b":authority", t.host_header.encode("ascii"))]
        return blocks, mini

    # -- public ---------------------------------------------------------------------------------------
    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace/add headers; streams started from now on carry the rebuilt header blocks."""
        merged = dict(self._headers)
        merged.update(headers)
        self._blocks, self._mini = self._build(merged)
        self._headers = merged

    # -- lifecycle (run() is CallbackEngine's; same semantics as FastEngine) --------------------------
    def _prepare_open(self, load: LoadSpec, offsets: Iterator[int]) -> Iterator[int]:
        self._limit = load.max_in_flight or DEFAULT_OPEN_LIMIT
        return offsets

    def _start_closed(self, now: int) -> None:
        for w in range(self._slots_live):
            self._next(w % self._nconn, now)
        self.flush()

    def _release(self) -> None:
        for conn in list(self._conns):
            self.abandoned += len(conn.streams) + len(conn.waiting)
            conn.streams.clear()
            conn.waiting.clear()
            conn.close()
        self._conns.clear()
        self._slots = [None] * self._nconn
        self._inflight = 0

    def may_issue(self, now: int) -> bool:
        if self._stopping:
            return False
        if now >= self._end_ns or (self._max_requests and self._seq >= self._max_requests):
            self._begin_stop()
            return False
        return True

    def _check_drained(self) -> None:
        if self._inflight <= 0 and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    # -- connections ----------------------------------------------------------------------------------
    def _slot_conn(self, slot: int) -> _Conn:
        conn = self._slots[slot]
        if conn is None or conn.dead or conn.goaway:
            conn = _Conn(self, slot)
            self._slots[slot] = conn
            self._conns.add(conn)
            assert self._loop is not None
            task = self._loop.create_task(self._connect(conn, self._fails[slot]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return conn

    async def _connect(self, conn: _Conn, failures: int) -> None:
        assert self._loop is not None
        t = self.target
        started = conn.t_connect = time.monotonic_ns()
        if failures:  # the target refused us just now: don't spin hot, and don't bill the pause
            await asyncio.sleep(backoff_s(failures))
            if self._stopping:  # nothing was sent: these were never on the wire
                self._connect_gave_up(conn)
                return
            started = conn.t_connect = time.monotonic_ns()
            for st in conn.waiting:
                st.intended = max(st.intended, started)
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._loop.create_connection(lambda: conn, t.host, t.port, ssl=self._ssl,
                                                   server_hostname=t.host if self._ssl else None)
        except (OSError, TimeoutError, ssl.SSLError, ssl.CertificateError) as exc:
            self._fails[conn.slot] += 1
            self._connect_failed(conn, exception_kind(exc, connecting=True), repr(exc) or type(exc).__name__,
                                 started)
            return

    def connected(self, conn: _Conn, started: int) -> None:
        """The transport is up (TLS handshake done): send the preface now, before any answer to the server's
        SETTINGS can be queued (uvloop may deliver those before ``create_connection`` returns)."""
        if self._ssl is not None:
            assert conn.transport is not None
            sslobj = conn.transport.get_extra_info("ssl_object")
            proto = sslobj.selected_alpn_protocol() if sslobj is not None else None
            if proto != "h2":
                self._fails[conn.slot] += 1
                conn.close()
                self._connect_failed(conn, _PROTOCOL, f"server did not negotiate h2 via ALPN (got {proto!r})",
                                     started)
                return
        self._fails[conn.slot] = 0
        h = conn.h2
        h.initiate_connection()
        h.increment_flow_control_window(_WINDOW - 65535)
        conn.ready = True
        self._start_waiting(conn)
        self._mark(conn)
        self.flush()

    def _connect_gave_up(self, conn: _Conn) -> None:
        conn.dead = True
        self._conns.discard(conn)
        if self._slots[conn.slot] is conn:
            self._slots[conn.slot] = None
        self.abandoned += len(conn.waiting)
        self._inflight -= len(conn.waiting)
        conn.waiting = []
        self._check_drained()

    def _connect_failed(self, conn: _Conn, kind: int, detail: str, started: int) -> None:
        conn.dead = True
        self._conns.discard(conn)
        if self._slots[conn.slot] is conn:
            self._slots[conn.slot] = None
        waiting, conn.waiting = conn.waiting, []
        for st in waiting:
            if not st.sent:
                st.sent = started
            self._fail(st, kind, detail, connect_failed=True)
        self.flush()

    def _mark(self, conn: _Conn) -> None:
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
            if not self._batching and not self._flush_soon and self._loop is not None:
                self._flush_soon = True
                self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what h2 has queued, once per connection per callback."""
        self._flush_soon = False
        dirty = self._dirty
        while dirty:
            conn = dirty.pop()
            conn.dirty = False
            data = conn.h2.data_to_send()
            if data and conn.transport is not None and not conn.dead:
                conn.transport.write(data)

    # -- sending --------------------------------------------------------------------------------------
    def _new_stream(self, intended: int, slot: int) -> _Stream:
        st = self._free.pop() if self._free else _Stream()
        i = self._seq % self._nbodies
        self._seq += 1
        self._inflight += 1
        st.idx = i
        st.slot = slot
        st.intended = intended
        st.sent = 0
        st.rows_in = self._rows[i]
        st.bytes_out = 0
        st.bytes_in = 0
        st.status = 0
        st.pos = 0
        st.body = b""
        st.parts = None
        st.kept = 0
        st.retried = False
        return st

    def _submit(self, conn: _Conn, st: _Stream) -> None:
        if conn.ready and len(conn.streams) < conn.max_streams:
            self._start(conn, st)
            self._mark(conn)
        else:
            conn.waiting.append(st)

    def _start(self, conn: _Conn, st: _Stream) -> None:
        h = conn.h2
        sid = h.get_next_available_stream_id()
        st.sid = sid
        conn.streams[sid] = st
        if not st.sent:
            st.sent = time.monotonic_ns()
        i = st.idx
        size = self._sizes[i]
        st.bytes_out = size
        conn.enc.block = self._blocks[i]
        # h2 counts open streams (a walk over all of them) before opening one that does not exist yet; we
        # enforce max_concurrent_streams ourselves, so create it first (private API, stable since h2 2.0)
        # and let h2 drop its closed streams every _PURGE_EVERY starts instead.
        h._begin_new_stream(sid, _ODD)
        h.send_headers(sid, self._mini, end_stream=not size)
        if size:
            if size <= h.max_outbound_frame_size and size <= h.local_flow_control_window(sid):
                h.send_data(sid, self._bodies[i], end_stream=True)
                st.pos = size
            else:
                self._pump(conn, st)
        conn.started += 1
        if conn.started % _PURGE_EVERY == 0:
            _ = h.open_outbound_streams  # walks the streams, forgetting closed ones
        if sid >= _LAST_STREAM_ID:
            conn.goaway = True  # no more ids: later requests go to a fresh connection

    def _pump(self, conn: _Conn, st: _Stream) -> None:
        """Send as much of a request body as flow control and frame size allow; park the rest."""
        h = conn.h2
        body = self._bodies[st.idx]
        n = len(body)
        pos = st.pos
        while pos < n:
            room = min(h.local_flow_control_window(st.sid), h.max_outbound_frame_size, n - pos)
            if room <= 0:
                break
            h.send_data(st.sid, body[pos:pos + room], end_stream=pos + room >= n)
            pos += room
        st.pos = pos
        if pos < n and st not in conn.blocked:
            conn.blocked.append(st)

    def _start_waiting(self, conn: _Conn) -> None:
        waiting = conn.waiting
        if not waiting or not conn.ready or conn.dead or conn.goaway:
            return
        room = conn.max_streams - len(conn.streams)
        if room <= 0:
            return
        take, conn.waiting = waiting[:room], waiting[room:]
        for st in take:
            self._start(conn, st)
        self._mark(conn)

    def _next(self, slot: int, now: int) -> None:
        """Closed loop: a worker of ``slot`` became free at ``now``."""
        if not self.may_issue(now):
            self._slots_live -= 1
            if self._inflight <= 0:
                self._check_drained()
            return
        self._submit(self._slot_conn(slot), self._new_stream(now, slot))

    def dispatch(self, intended: int) -> None:
        """Open loop: start the request due at ``intended`` on the least busy connection, or drop it."""
        if self._inflight >= self._limit:
            self.sink.dropped(intended)
            return
        best = -1
        best_room = -(1 << 30)
        for k in range(self._nconn):
            slot = (self._rr + k) % self._nconn
            conn = self._slots[slot]
            if conn is None or conn.dead or conn.goaway:
                best = slot
                break
            room = conn.max_streams - len(conn.streams) - len(conn.waiting)
            if room > best_room:
                best, best_room = slot, room
        self._rr = (best + 1) % self._nconn
        self._submit(self._slot_conn(best), self._new_stream(intended, best))

    def dispatched(self) -> None:
        """End of a pacer batch: write what the batch queued now, not on the next loop turn."""
        self.flush()

    # -- answers --------------------------------------------------------------------------------------
    def handle(self, conn: _Conn, events: list[h2.events.Event]) -> None:
        """Dispatch h2 events (most frequent first). Runs inside data_received; flushing happens after."""
        h = conn.h2
        if h.state_machine.state is _CLOSED:  # GOAWAY in this batch: act on it before answers start new streams
            for ev in events:
                if isinstance(ev, h2.events.ConnectionTerminated):
                    self._goaway(conn, ev.last_stream_id or 0, int(ev.error_code or 0))
        streams = conn.streams
        ended_bytes = 0  # flow-controlled bytes of streams that ended: only the connection window needs them
        ended_sid = 0
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id or 0
                st = streams.get(sid)
                data = ev.data or b""
                if ev.stream_ended is not None:
                    ended_bytes += ev.flow_controlled_length or 0
                    ended_sid = sid
                elif ev.flow_controlled_length:
                    h.acknowledge_received_data(ev.flow_controlled_length, sid)
                if st is not None:
                    st.bytes_in += len(data)
                    st.keep(data, self.max_body)
            elif isinstance(ev, h2.events.ResponseReceived):
                st = streams.get(ev.stream_id or 0)
                if st is not None and ev.headers:
                    st.status = _status(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st = streams.pop(ev.stream_id or 0, None)
                if st is not None:
                    self._finish(conn, st)
            elif isinstance(ev, h2.events.StreamReset):
                st = streams.pop(ev.stream_id or 0, None)
                if st is not None:
                    code = int(ev.error_code or 0)
                    if code == _REFUSED_STREAM and not st.retried:
                        self._retry(st)
                    else:
                        self._fail(st, _PROTOCOL, f"HTTP/2 stream reset by the server (error code {code})")
                    self._start_waiting(conn)
            elif isinstance(ev, h2.events.WindowUpdated):
                if conn.blocked:
                    blocked, conn.blocked = conn.blocked, []
                    for st in blocked:
                        if streams.get(st.sid) is st:
                            self._pump(conn, st)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                conn.max_streams = max(1, min(h.remote_settings.max_concurrent_streams, 1 << 20))
                self._start_waiting(conn)
        if ended_bytes:
            h.acknowledge_received_data(ended_bytes, ended_sid)
        self._mark(conn)
        if conn.goaway and not conn.streams and not conn.dead:
            self._retire(conn)

    def _finish(self, conn: _Conn, st: _Stream) -> None:
        """A whole answer arrived: classify, record, hand the worker on. The hot path."""
        done = time.monotonic_ns()
        status = st.status
        body = st.take_body()
        rows_in = st.rows_in
        kind, rows_out, server_ns = self.classify(status, body, rows_in)
        self.sink.record(st.intended, st.sent, done, kind, status, rows_out if kind == _OK else rows_in,
                         st.bytes_out, st.bytes_in, server_ns)
        if kind != _OK:
            self.sink.error_detail(kind, status, body[:512])
        self._inflight -= 1
        self._free.append(st)
        if conn.waiting:
            self._start_waiting(conn)
        if self._open:
            if self._inflight <= 0:
                self._check_drained()
            pacer = self._pacer
            if pacer is not None and done >= pacer.next_ns and not self._stopping:
                pacer.run_due(done)  # a stream freed up and a send is due: send from here
        else:
            self._next(st.slot, done)

    def _fail(self, st: _Stream, kind: int, detail: str, connect_failed: bool = False) -> None:
        """Record a request that ended without an answer; the closed-loop worker moves on."""
        done = time.monotonic_ns()
        sent = st.sent or done
        self.sink.record(st.intended, sent, done, kind, 0, st.rows_in, 0 if connect_failed else st.bytes_out,
                         st.bytes_in, 0)
        self.sink.error_detail(kind, 0, detail.encode("utf-8", "replace")[:512])
        self._inflight -= 1
        if self._open:
            if self._inflight <= 0:
                self._check_drained()
        else:
            self._next(st.slot, done)

    def _retry(self, st: _Stream) -> None:
        """Send a request the server never processed once more, on a fresh connection of its slot."""
        st.retried = True
        st.pos = 0
        st.bytes_in = 0
        st.status = 0
        st.take_body()
        self._submit(self._slot_conn(st.slot), st)

    def _goaway(self, conn: _Conn, last_stream_id: int, error_code: int) -> None:
        if conn.goaway and conn.h2.state_machine.state is not _CLOSED:
            return  # already handled (a second GOAWAY may only lower last_stream_id; streams above were moved)
        conn.goaway = True
        if self._slots[conn.slot] is conn:
            self._slots[conn.slot] = None
        # h2 refuses every frame after GOAWAY; the server may still answer streams <= last_stream_id
        if conn.h2.state_machine.state is _CLOSED:
            conn.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        unprocessed = [sid for sid in conn.streams if sid > last_stream_id]
        for sid in unprocessed:
            st = conn.streams.pop(sid)
            if not st.retried:
                self._retry(st)
            else:
                self._fail(st, _RESET, f"HTTP/2 GOAWAY (error code {int(error_code)}): stream {sid} not processed")
        waiting, conn.waiting = conn.waiting, []
        for st in waiting:  # never sent: not a retry
            self._submit(self._slot_conn(st.slot), st)
        if conn.streams:
            # A server that stopped processing the connection with GOAWAY (hypercorn's keep_alive_max_requests
            # does) treats any further frame as an error and closes it, so the streams it will never answer
            # fail now as resets instead of waiting for the read timeout; a graceful server just answers.
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.h2.ping(b"goaway?!")
            self._mark(conn)

    def _retire(self, conn: _Conn) -> None:
        """A connection after GOAWAY with nothing left in flight: close it quietly."""
        conn.dead = True
        self._conns.discard(conn)
        if conn.transport is not None:
            conn.transport.close()

    def conn_failed(self, conn: _Conn, kind: int, detail: str) -> None:
        """The connection is unusable (protocol error): fail what was sent, move the rest on, close it."""
        if not conn.dead:
            self._teardown(conn, kind, detail)

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        self._batching = True
        try:
            kind = exception_kind(exc, connecting=False) if exc is not None else _RESET
            detail = repr(exc) if exc is not None else "connection closed before the answer was complete"
            if conn.goaway:
                detail += " (after the server's GOAWAY)"
            self._teardown(conn, kind, detail)
        finally:
            self._batching = False
            self.flush()

    def _teardown(self, conn: _Conn, kind: int, detail: str) -> None:
        conn.dead = True
        self._conns.discard(conn)
        if self._slots[conn.slot] is conn:
            self._slots[conn.slot] = None
        streams = list(conn.streams.values())
        conn.streams.clear()
        waiting, conn.waiting = conn.waiting, []
        if conn.transport is not None:
            conn.transport.abort()
        for st in streams:
            self._fail(st, kind, detail)
        for st in waiting:  # never sent: they go to a new connection
            self._submit(self._slot_conn(st.slot), st)

    # -- housekeeping ---------------------------------------------------------------------------------
    def sweep(self, now: int) -> None:
        """Read timeouts (one periodic pass instead of a timer per request)."""
        limit = int(self.config.read_timeout_s * 1e9)
        msg = f"no complete answer within {self.config.read_timeout_s:g} s"
        for conn in list(self._conns):
            late = [st for st in conn.streams.values() if st.sent and now - st.sent > limit]
            for st in late:
                del conn.streams[st.sid]
                with contextlib.suppress(h2.exceptions.H2Error, KeyError):
                    conn.h2.reset_stream(st.sid, h2.errors.ErrorCodes.CANCEL)
                self._fail(st, _READ_TIMEOUT, msg)
            if late:
                self._start_waiting(conn)
                self._mark(conn)
                if conn.goaway and not conn.streams and not conn.dead:
                    self._retire(conn)
        self.flush()


def _status(headers: list[tuple[bytes, bytes]]) -> int:
    first = headers[0]
    if first[0] == b":status":
        return int(first[1])
    for name, value in headers:
        if name == b":status":
            return int(value)
    return 0

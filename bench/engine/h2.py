"""The lean HTTP/2 engine: one asyncio.Protocol per connection speaking HTTP/2 frames directly.

Why not httpx, and not the ``h2`` package on the hot path: httpcore spends ~700 µs of CPU per HTTP/2 request, and
h2's stream state machine, event objects and frame parsing ~50 µs. A load generator's client side is narrow — open
a stream, send one whole request, read one whole answer — so the engine owns it (``bench.engine.h2frames``):

- each request is pre-serialised once per body as HEADERS (+ CONTINUATION) + DATA frames (HPACK block that never
  touches the dynamic table, so the bytes stay valid for the life of the connection); sending is one copy into the
  connection's output buffer with the stream id patched in, and one ``transport.write`` per callback;
- answers are split into frames with ``struct``; HEADERS blocks go through an HPACK decoder that decodes each
  distinct block once (``_CachingDecoder``) while it leaves the dynamic table untouched;
- flow control both ways: request bodies are sent whole when the windows allow and otherwise pumped frame by frame
  on WINDOW_UPDATE; received data is acknowledged once half of the 16 MiB windows is used;
- SETTINGS (max_concurrent_streams, initial window, header table size), PING, RST_STREAM, GOAWAY, CONTINUATION
  and padding are handled; PUSH_PROMISE (push is disabled) and framing errors fail the connection.

Closed loop: ``concurrency`` workers spread round-robin over ``connections`` (0 → 1) connections; a worker's
next request goes out from the callback that finished its previous one. Streams beyond the server's
max_concurrent_streams wait on their connection. Open loop: the shared pacer dispatches each due request to the
connection with the most free stream capacity; a send is dropped when ``max_in_flight`` requests are out.

GOAWAY: requests on streams above the server's last_stream_id were never processed and are sent once more on a
new connection; the others may still be answered on the old connection (graceful shutdown), which is then
closed. A REFUSED_STREAM reset is retried the same way; any other reset is a ``protocol_error``. Each re-send is
counted (``resent``: run counters ``resent_goaway`` / ``resent_refused_stream``, shown in the summary).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from hpack import Decoder, HeaderTuple
from hpack.exceptions import HPACKError
from hpack.table import HeaderTable

from bench.engine import h2frames as fr
from bench.engine.base import (
    Classifier,
    EngineConfig,
    LoadSpec,
    RequestBuildError,
    RequestSet,
    ResultSink,
    check_header,
)
from bench.engine.common import DEFAULT_OPEN_LIMIT, CallbackEngine, backoff_s
from bench.engine.fast import Target, exception_kind, parse_target
from bench.engine.tls import make_ssl_context
from bench.results import ERROR_DETAIL_BYTES, RESENT_GOAWAY, RESENT_REFUSED_STREAM, Kind, body_getter

__all__ = ["H2Engine", "encode_header_block", "h2_header_list", "table_size_update"]

_OK = int(Kind.OK)
_RESET = int(Kind.RESET)
_PROTOCOL = int(Kind.PROTOCOL_ERROR)
_READ_TIMEOUT = int(Kind.READ_TIMEOUT)
_CONNECT_TIMEOUT = int(Kind.CONNECT_TIMEOUT)
_WINDOW = 16 * 1024 * 1024  # receive window (connection and per stream)
_ACK_AT = _WINDOW // 2  # acknowledge received data once this much is unacknowledged
_DEFAULT_WINDOW = 65_535
_MAX_WINDOW = 2**31 - 1
_REFUSED_STREAM = 7
_CANCEL = 8
_LAST_STREAM_ID = 2**31 - 1 - 2 * 4096  # open a fresh connection well before stream ids run out
_NEVER_INDEX = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC.setdefault((_n, _v), _i)
    _STATIC_NAMES.setdefault(_n, _i)
del _i, _n, _v
# HEADER_TABLE_SIZE 0: the server's HPACK encoder may not keep state, so its answer blocks repeat byte for byte and
# _CachingDecoder decodes each once (nginx indexes `server`/`date`/`content-type` into a 4 KiB table otherwise, and
# every block then changes the table); ENABLE_PUSH 0; INITIAL_WINDOW_SIZE 16 MiB; MAX_CONCURRENT_STREAMS 100.
_OUR_SETTINGS = fr.settings([(1, 0), (2, 0), (4, _WINDOW), (3, 100)])
_SETTINGS_ACK = fr.settings([], ack=True)
_GOAWAY_PROBE = fr.ping(b"goaway?!")


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
    """Pseudo-headers first, names lower-cased; a Host header becomes ``:authority`` (RFC 9113 8.3.1), and the
    connection-specific fields the engine sets itself raise RequestBuildError (check_header; RFC 9113 8.2.2)."""
    authority = target.host_header
    out = [(b":method", method.upper().encode("ascii")), (b":scheme", b"https" if target.tls else b"http"),
           (b":authority", b""), (b":path", target.path.encode("latin-1"))]
    for name, value in headers.items():
        low = name.lower()
        check_header(name, value)
        if low == "host":
            authority = value.strip()
            continue
        if any(c in low for c in ": "):
            raise RequestBuildError(f"header {name!r}: its name holds a colon or a space")
        out.append((low.encode("latin-1"), value.encode("latin-1")))
    out[2] = (b":authority", authority.encode("ascii"))
    out.append((b"content-length", str(body_len).encode()))
    return out


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


def table_size_update(size: int) -> bytes:
    """HPACK dynamic table size update (RFC 7541 6.3): sent first in the block after the peer changed the size."""
    return _int(size, 5, 0x20)


# -- per-request and per-connection state --------------------------------------------------------------------
class _Stream:
    """One request: where it is (waiting, sent, body partly sent) and what came back so far."""

    __slots__ = ("body", "bytes_in", "bytes_out", "idx", "intended", "kept", "parts", "pos", "recv", "retried",
                 "rows_in", "sent", "sid", "slot", "status", "window")

    def __init__(self) -> None:
        self.sid = 0
        self.slot = 0
        self.idx = 0
        self.intended = 0
        self.sent = 0
        self.rows_in = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.pos = 0  # request body bytes sent
        self.window = 0  # send window of the stream
        self.recv = 0  # received flow-controlled bytes not yet acknowledged (stream window)
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

    __slots__ = ("blocked", "buf", "dead", "dec", "dirty", "eng", "goaway", "hdr_flags", "hdr_parts", "hdr_sid",
                 "max_streams", "next_sid", "out", "peer_initial", "ready", "resent_unwired", "send_window", "slot",
                 "streams", "t_connect", "table_size", "table_update", "transport", "unacked", "waiting", "wired")

    def __init__(self, eng: H2Engine, slot: int) -> None:
        self.eng = eng
        self.slot = slot
        self.dec = _CachingDecoder()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.waiting: list[_Stream] = []
        self.blocked: list[_Stream] = []  # request bodies waiting for send window
        self.out = bytearray()  # frames to write at the end of this callback
        self.buf = b""  # a partial frame left over from the last read
        self.ready = False
        self.dead = False
        self.goaway = False
        self.dirty = False
        self.t_connect = time.monotonic_ns()
        self.max_streams = 100  # unless the server's SETTINGS say otherwise
        self.next_sid = 1
        self.wired = 0  # the streams up to this id were written (the rest of ``streams`` may sit in ``out``)
        self.resent_unwired = 0  # streams re-sent after GOAWAY while their first send sat in ``out``: counted
        # as re-sent only if ``out`` is written after all (a retired connection's never is)
        self.send_window = _DEFAULT_WINDOW  # connection send window
        self.peer_initial = _DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self.table_size = 4096  # the server's SETTINGS_HEADER_TABLE_SIZE (our encoder's table limit)
        self.table_update = False  # signal table_size in the next header block
        self.unacked = 0  # received flow-controlled bytes not yet acknowledged on the connection
        self.hdr_sid = 0  # a header block continues in CONTINUATION frames of this stream
        self.hdr_flags = 0
        self.hdr_parts: list[bytes] = []

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.eng.connected(self, self.t_connect)

    def data_received(self, data: bytes) -> None:
        eng = self.eng
        eng._batching = True
        try:
            try:
                start = self._complete(data) if self.buf else 0
                if start < len(data) and not self.dead:
                    used = eng.receive(self, data, start)
                    self.buf = data[used:] if used < len(data) else b""
            except (fr.FrameError, HPACKError, ValueError, IndexError) as exc:
                eng.conn_failed(self, _PROTOCOL, f"HTTP/2 protocol error: {exc!r}")
                return
        finally:
            eng._batching = False
            eng.flush()

    def _complete(self, data: bytes) -> int:
        """Finish the partial frame left in ``buf`` with the first bytes of ``data`` (not ``buf + data``: with big
        reads that copied up to a whole read per callback, churning the heap); returns the bytes of ``data`` used."""
        buf = self.buf
        take = max(0, 9 - len(buf))
        if take:
            buf += data[:take]
            if len(buf) < 9:
                self.buf = buf
                return len(data)
        n = (buf[0] << 16) | (buf[1] << 8) | buf[2]
        if n > fr.DEFAULT_MAX_FRAME:
            raise fr.FrameError(f"frame of {n} octets exceeds SETTINGS_MAX_FRAME_SIZE", 6)
        more = min(9 + n - len(buf), len(data) - take)
        buf += data[take:take + more]
        used = take + more
        if len(buf) < 9 + n:
            self.buf = buf
            return used
        self.buf = b""
        self.eng.receive(self, buf, 0)
        return used

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
        self.target = parse_target(requests.url, requests.headers)
        self._nbodies = len(requests.bodies)
        self._body: Callable[[int], bytes] = body_getter(requests.bodies)
        self._headers: dict[str, str] = dict(requests.headers)
        h2_header_list(requests.method, self.target, self._headers, 0)  # bad headers fail here, not mid-run
        # request frames per body, built on first use (a big data set's bodies are encoded as the run reaches
        # them); header blocks differ only by content-length, so they are shared by body size
        self._tmpls: list[fr.RequestTemplate | None] = [None] * self._nbodies
        self._blocks: dict[int, bytes] = {}
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

    def _block(self, size: int) -> bytes:
        block = self._blocks.get(size)
        if block is None:
            block = self._blocks[size] = encode_header_block(
                h2_header_list(self.requests.method, self.target, self._headers, size))
        return block

    def _template(self, i: int) -> fr.RequestTemplate:
        body = self._body(i)
        t = self._tmpls[i] = fr.request_frames(self._block(len(body)), body)
        return t

    # -- public ---------------------------------------------------------------------------------------
    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace/add headers; streams started from now on carry the rebuilt header blocks."""
        merged = dict(self._headers)
        merged.update(headers)
        h2_header_list(self.requests.method, self.target, merged, 0)
        self._headers = merged
        self._blocks = {}
        self._tmpls = [None] * self._nbodies

    # -- lifecycle (run() is CallbackEngine's; same semantics as FastEngine) --------------------------
    def _prepare_open(self, load: LoadSpec, offsets: Iterator[int]) -> Iterator[int]:
        self._limit = load.max_in_flight or DEFAULT_OPEN_LIMIT
        for slot in range(self._nconn):  # connect (and get the server's SETTINGS) before the first send is due
            self._slot_conn(slot)
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
                if st.sent:  # closed loop: the pause is not the target's time either
                    st.sent = max(st.sent, started)
        self._connects += 1
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._loop.create_connection(lambda: conn, t.host, t.port, ssl=self._ssl,
                                                   server_hostname=t.sni if self._ssl else None)
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
        # streams start once the server's SETTINGS arrive (its preface, sent at once): then its
        # max_concurrent_streams is known and no stream is refused for exceeding it
        conn.out += fr.PREFACE + _OUR_SETTINGS + fr.window_update(0, _WINDOW - _DEFAULT_WINDOW)
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
        """Write what the connections have queued, once per connection per callback."""
        self._flush_soon = False
        dirty = self._dirty
        while dirty:
            conn = dirty.pop()
            conn.dirty = False
            data = conn.out
            if data and conn.transport is not None and not conn.dead:
                conn.out = bytearray()  # the transport may keep the buffer it was given
                conn.transport.write(data)
                conn.wired = conn.next_sid - 2
                if conn.resent_unwired:  # (after GOAWAY only) their first send went out after all
                    self.count_resent(RESENT_GOAWAY, conn.resent_unwired)
                    conn.resent_unwired = 0

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
        st.recv = 0
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
            if not self._open and not st.sent:
                # closed loop: the worker acted on its request now; waiting for the connection's setup or a
                # stream the server allows is the target's time (service time), not the generator's lateness
                st.sent = time.monotonic_ns()
            conn.waiting.append(st)

    def _start(self, conn: _Conn, st: _Stream) -> None:
        """Open a stream for ``st``: its pre-serialised frames, with the stream id patched in, go to ``conn.out``."""
        sid = conn.next_sid
        conn.next_sid = sid + 2
        st.sid = sid
        conn.streams[sid] = st
        if not st.sent:
            st.sent = time.monotonic_ns()
        i = st.idx
        t = self._tmpls[i] or self._template(i)
        if conn.table_update:  # the server changed SETTINGS_HEADER_TABLE_SIZE: say so first in this block
            conn.table_update = False
            body = self._body(i)
            t = fr.request_frames(table_size_update(conn.table_size) + self._block(len(body)), body)
        size = t.body_len
        st.bytes_out = size
        st.window = conn.peer_initial
        if size <= st.window and size <= conn.send_window:
            t.put(conn.out, sid)
            st.window -= size
            conn.send_window -= size
            st.pos = size
        else:
            t.put(conn.out, sid, whole=False)
            st.pos = 0
            self._pump(conn, st)
        if sid >= _LAST_STREAM_ID:
            conn.goaway = True  # no more ids: later requests go to a fresh connection

    def _pump(self, conn: _Conn, st: _Stream) -> None:
        """Send as much of a request body as flow control allows, a frame at a time; park the rest."""
        body = self._body(st.idx)
        n = len(body)
        pos = st.pos
        out = conn.out
        while pos < n:
            room = min(st.window, conn.send_window, fr.DEFAULT_MAX_FRAME, n - pos)
            if room <= 0:
                break
            end = pos + room
            out += fr.frame(fr.DATA, fr.END_STREAM if end >= n else 0, st.sid, body[pos:end])
            st.window -= room
            conn.send_window -= room
            pos = end
        st.pos = pos
        if pos < n and st not in conn.blocked:
            conn.blocked.append(st)

    def _pump_blocked(self, conn: _Conn) -> None:
        blocked, conn.blocked = conn.blocked, []
        for st in blocked:
            if conn.streams.get(st.sid) is st:
                self._pump(conn, st)
        self._mark(conn)

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

    def _next(self, slot: int, now: int, admitted: bool = False) -> None:
        """Closed loop: a worker of ``slot`` became free at ``now``."""
        if not self.may_issue(now):
            self._slots_live -= 1
            if self._inflight <= 0:
                self._check_drained()
            return
        if self._gate is not None and not admitted and (self._held or self._holds(now)):
            self._held.append(slot)  # the send gate holds this worker (see gate_sends)
            return
        self._submit(self._slot_conn(slot), self._new_stream(now, slot))

    def dispatch(self, intended: int, admitted: bool = False) -> None:
        """Open loop: start the request due at ``intended`` on the least busy connection, or drop it
        (``admitted``: a send the gate held and has now let go)."""
        if not admitted:
            if self._inflight >= self._limit:
                self.sink.dropped(intended)
                return
            if self._gate is not None and self._hold_open(intended):
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

    def _resume(self, item: Any, now: int) -> None:
        if self._open:
            self.dispatch(item, True)
        else:
            self._next(item, now, True)

    # -- answers --------------------------------------------------------------------------------------
    def receive(self, conn: _Conn, data: bytes, off: int = 0) -> int:
        """Act on every whole frame of ``data`` from ``off``; returns the offset after the last one. Runs inside
        data_received (flushing happens after). Raises FrameError/HPACKError for what breaks the connection."""
        end = len(data)
        unpack = fr.FRAME_HEADER.unpack_from
        streams = conn.streams
        cap = self.max_body
        while end - off >= 9 and not conn.dead:
            hi, lo, ftype, flags, sid = unpack(data, off)
            n = (hi << 8) | lo
            if n > fr.DEFAULT_MAX_FRAME:
                raise fr.FrameError(f"frame of {n} octets exceeds SETTINGS_MAX_FRAME_SIZE", 6)
            start = off + 9
            stop = start + n
            if stop > end:
                break
            off = stop
            sid &= 0x7FFFFFFF
            if conn.hdr_sid and ftype != fr.CONTINUATION:
                raise fr.FrameError("a header block was interrupted by another frame")
            if ftype == fr.DATA:
                conn.unacked += n
                st = streams.get(sid)
                if st is None:
                    continue  # a stream we reset or gave up on: only the connection window counts it
                if flags & fr.PADDED:
                    pad = data[start] if n else 0
                    if pad >= n:
                        raise fr.FrameError("DATA padding exceeds the frame")
                    chunk = data[start + 1:stop - pad]
                else:
                    chunk = data[start:stop]
                st.bytes_in += len(chunk)
                st.keep(chunk, cap)
                if flags & fr.END_STREAM:
                    del streams[sid]
                    self._finish(conn, st)
                elif n:
                    st.recv += n
                    if st.recv >= _ACK_AT:
                        conn.out += fr.window_update(sid, st.recv)
                        st.recv = 0
            elif ftype == fr.HEADERS:
                pos, last = start, stop
                if flags & fr.PADDED:
                    last -= data[pos] if n else 0
                    pos += 1
                if flags & fr.PRIORITY_FLAG:
                    pos += 5
                if pos > last or not sid:
                    raise fr.FrameError("malformed HEADERS frame")
                if flags & fr.END_HEADERS:
                    self._on_headers(conn, sid, flags, data[pos:last])
                else:
                    conn.hdr_sid, conn.hdr_flags, conn.hdr_parts = sid, flags, [data[pos:last]]
            elif ftype == fr.WINDOW_UPDATE:
                if n != 4:
                    raise fr.FrameError("WINDOW_UPDATE of the wrong size", 6)
                inc = fr.U32.unpack_from(data, start)[0] & 0x7FFFFFFF
                if sid == 0:
                    conn.send_window += inc
                else:
                    st = streams.get(sid)
                    if st is not None:
                        st.window += inc
                if conn.blocked:
                    self._pump_blocked(conn)
            elif ftype == fr.RST_STREAM:
                if n != 4:
                    raise fr.FrameError("RST_STREAM of the wrong size", 6)
                self._reset(conn, sid, fr.U32.unpack_from(data, start)[0])
            elif ftype == fr.SETTINGS:
                if not flags & fr.ACK:
                    self._settings(conn, data[start:stop])
            elif ftype == fr.CONTINUATION:
                if sid != conn.hdr_sid or not sid:
                    raise fr.FrameError("CONTINUATION without a header block in progress")
                conn.hdr_parts.append(data[start:stop])
                if flags & fr.END_HEADERS:
                    block = b"".join(conn.hdr_parts)
                    conn.hdr_sid, conn.hdr_parts = 0, []
                    self._on_headers(conn, sid, conn.hdr_flags, block)
            elif ftype == fr.PING:
                if n != 8:
                    raise fr.FrameError("PING of the wrong size", 6)
                if not flags & fr.ACK:
                    conn.out += fr.ping(data[start:stop], ack=True)
            elif ftype == fr.GOAWAY:
                if n < 8:
                    raise fr.FrameError("GOAWAY too short", 6)
                last_sid, code = fr.GOAWAY_HEAD.unpack_from(data, start)
                self._goaway(conn, last_sid & 0x7FFFFFFF, code)
            elif ftype == fr.PUSH_PROMISE:
                raise fr.FrameError("PUSH_PROMISE although push is disabled")
            # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)
        if conn.unacked >= _ACK_AT:
            conn.out += fr.window_update(0, conn.unacked)
            conn.unacked = 0
        self._mark(conn)
        if conn.goaway and not conn.streams and not conn.dead:
            self._retire(conn)
        return off

    def _on_headers(self, conn: _Conn, sid: int, flags: int, block: bytes) -> None:
        """A whole header block: decode it (always: the HPACK table must follow), note the status."""
        headers = conn.dec.decode(bytes(block), raw=True)
        st = conn.streams.get(sid)
        if st is None:
            return
        if st.status < 200:  # the first final status; 1xx answers are informational
            st.status = _status(headers)
            watch = self._watch
            if watch is not None:
                watch.fire(st.status, headers)
        if flags & fr.END_STREAM:
            del conn.streams[sid]
            self._finish(conn, st)

    def _reset(self, conn: _Conn, sid: int, code: int) -> None:
        st = conn.streams.pop(sid, None)
        if st is None:
            return
        if st in conn.blocked:
            conn.blocked.remove(st)
        if code == _REFUSED_STREAM and not st.retried:
            self._retry(st, RESENT_REFUSED_STREAM)
        else:
            self._fail(st, _PROTOCOL, f"HTTP/2 stream reset by the server (error code {code})")
        self._start_waiting(conn)

    def _settings(self, conn: _Conn, payload: bytes) -> None:
        for key, value in fr.parse_settings(payload):
            if key == 1:  # HEADER_TABLE_SIZE
                if value != conn.table_size:
                    conn.table_size = value
                    conn.table_update = True
            elif key == 3:  # MAX_CONCURRENT_STREAMS
                conn.max_streams = max(1, min(value, 1 << 20))
            elif key == 4:  # INITIAL_WINDOW_SIZE: applies to open streams too (RFC 9113 6.9.2)
                if value > _MAX_WINDOW:
                    raise fr.FrameError("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", 3)
                delta = value - conn.peer_initial
                conn.peer_initial = value
                for st in conn.streams.values():
                    st.window += delta
            elif key == 5 and not fr.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:  # MAX_FRAME_SIZE (we send 16 KiB)
                raise fr.FrameError("SETTINGS_MAX_FRAME_SIZE out of range")
        conn.out += _SETTINGS_ACK
        if not conn.ready:
            conn.ready = True
            self._fails[conn.slot] = 0  # the server speaks HTTP/2: the slot's connects succeed again
        self._start_waiting(conn)
        if conn.blocked:
            self._pump_blocked(conn)

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
            self.sink.error_detail(kind, status, body[:ERROR_DETAIL_BYTES])
        self._inflight -= 1
        if conn.blocked and st in conn.blocked:  # answered before its body was all sent (e.g. an early 413)
            conn.blocked.remove(st)
        self._free.append(st)
        if conn.waiting:
            self._start_waiting(conn)
        if self._open:
            if self._inflight <= 0:
                self._check_drained()
            pacer = self._pacer
            if pacer is not None and done >= pacer.eager_ns and not self._stopping:
                pacer.run_due(done)  # a stream freed up and a send is due: send from here
        else:
            self._next(st.slot, done)

    def _fail(self, st: _Stream, kind: int, detail: str, connect_failed: bool = False) -> None:
        """Record a request that ended without an answer; the closed-loop worker moves on."""
        done = time.monotonic_ns()
        sent = st.sent or done
        self.sink.record(st.intended, sent, done, kind, 0, st.rows_in, 0 if connect_failed else st.bytes_out,
                         st.bytes_in, 0)
        self.sink.error_detail(kind, 0, detail.encode("utf-8", "replace")[:ERROR_DETAIL_BYTES])
        self._inflight -= 1
        if self._open:
            if self._inflight <= 0:
                self._check_drained()
        else:
            self._next(st.slot, done)

    def _retry(self, st: _Stream, counter: str | None) -> None:
        """Send a request the server never processed once more, on a fresh connection of its slot (counted under
        ``counter``, None: by the caller; the server received it twice, bench's ``sent`` counts it once)."""
        if counter is not None:
            self.count_resent(counter)
        st.retried = True
        st.pos = 0
        st.bytes_in = 0
        st.status = 0
        st.take_body()
        self._submit(self._slot_conn(st.slot), st)

    def _goaway(self, conn: _Conn, last_stream_id: int, error_code: int) -> None:
        """The server stops taking streams above ``last_stream_id``: resend those elsewhere, keep the rest."""
        conn.goaway = True
        if self._slots[conn.slot] is conn:
            self._slots[conn.slot] = None
        unprocessed = [sid for sid in conn.streams if sid > last_stream_id]
        for sid in unprocessed:
            st = conn.streams.pop(sid)
            if st in conn.blocked:
                conn.blocked.remove(st)
            if st.retried:
                self._fail(st, _RESET, f"HTTP/2 GOAWAY (error code {int(error_code)}): stream {sid} not processed")
            elif sid <= conn.wired:
                self._retry(st, RESENT_GOAWAY)
            else:  # started in this callback, still in ``out``: a re-send only if ``out`` is written (flush)
                conn.resent_unwired += 1
                self._retry(st, None)
        waiting, conn.waiting = conn.waiting, []
        for st in waiting:  # never sent: not a retry
            self._submit(self._slot_conn(st.slot), st)
        if conn.streams:
            # A server that stopped processing the connection with GOAWAY (hypercorn's keep_alive_max_requests
            # does) treats any further frame as an error and closes it, so the streams it will never answer
            # fail now as resets instead of waiting for the read timeout; a graceful server just answers.
            conn.out += _GOAWAY_PROBE
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
        if not conn.ready:
            # the server broke the connection before its SETTINGS (an HTTP/1.1-only server answers the preface
            # with a 400 and closes): a failed connect, so the waiting requests fail and the slot backs off;
            # moving them to a new connection would reconnect in a tight loop and record nothing
            self._fails[conn.slot] += 1
            if conn.transport is not None:
                conn.transport.abort()
            self._connect_failed(conn, kind, detail, conn.t_connect)
            return
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
        """Read timeouts (one periodic pass instead of a timer per request), and servers that accepted the
        connection but never sent their SETTINGS.

        The server's SETTINGS complete the connection's setup (RFC 9113 3.4), so a connection without them after
        ``connect_timeout_s`` is a failed connect: what waits on it is ``connect_timeout`` (as a TLS handshake
        that never finishes is on the fast engine). Each request waiting for them is also held to its own
        ``read_timeout_s``, counted as for a request on the wire (closed loop: from when the worker took it on;
        open loop: from its intended time): holding streams until the SETTINGS arrive is this engine's choice
        (a client may send them right after its preface; httpx does), so the same silent server gives
        ``read_timeout`` after ``engine.timeout`` here as on the other engines -- whichever limit comes first."""
        limit = int(self.config.read_timeout_s * 1e9)
        msg = f"no complete answer within {self.config.read_timeout_s:g} s"
        connect_limit = int(self.config.connect_timeout_s * 1e9)
        for conn in list(self._conns):
            if not conn.ready and conn.transport is not None and not conn.dead:
                if now - conn.t_connect > connect_limit:
                    self._fails[conn.slot] += 1
                    conn.close()
                    self._connect_failed(conn, _CONNECT_TIMEOUT, "the server sent no HTTP/2 SETTINGS within "
                                         f"{self.config.connect_timeout_s:g} s of connecting", conn.t_connect)
                    continue
                waited = [st for st in conn.waiting if now - (st.sent or st.intended) > limit]
                if waited:
                    # (a closed-loop worker's next request joins the kept ones in _fail)
                    conn.waiting = [st for st in conn.waiting if now - (st.sent or st.intended) <= limit]
                    for st in waited:
                        if not st.sent:
                            st.sent = st.intended  # never on the wire: its service time is the wait
                        self._fail(st, _READ_TIMEOUT, f"{msg} (the server sent no HTTP/2 SETTINGS)",
                                   connect_failed=True)
                continue
            late = [st for st in conn.streams.values() if st.sent and now - st.sent > limit]
            for st in late:
                del conn.streams[st.sid]
                if st in conn.blocked:
                    conn.blocked.remove(st)
                conn.out += fr.rst_stream(st.sid, _CANCEL)
                self._fail(st, _READ_TIMEOUT, msg)
            if late:
                self._start_waiting(conn)
                self._mark(conn)
                if conn.goaway and not conn.streams and not conn.dead:
                    self._retire(conn)
        self.flush()


def _status(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The ``:status`` pseudo-header (first in a valid block), 0 when missing."""
    for name, value in headers:
        if name == b":status":
            return int(value)
    return 0

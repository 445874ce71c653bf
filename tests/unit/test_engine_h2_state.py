"""The lean HTTP/2 engine's per-stream and per-connection state is released on every way a stream ends (END_STREAM
on HEADERS or DATA, RST_STREAM, GOAWAY, read timeout, a broken connection): a stream left behind would grow memory
on a long run. Frames are fed to ``H2Engine.receive`` directly; no sockets (the engine's frame handling is pure
state manipulation once the transport is left out)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine import h2frames as fr
from bench.engine.base import EngineConfig, PreparedBody, RequestSet
from bench.engine.h2 import H2Engine, _Conn, encode_header_block
from bench.results import Kind

pytestmark = pytest.mark.anyio


class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []

    def record(self, *row: int) -> None:
        self.rows.append(row)

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        pass

    def dropped(self, intended_ns: int) -> None:
        raise AssertionError("nothing is dropped here")

    def loop_lag(self, lag_ns: int) -> None:
        pass

    def kinds(self) -> Counter[int]:
        return Counter(r[3] for r in self.rows)


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    return (int(Kind.OK), rows_in, 0) if status == 200 else (int(Kind.HTTP_ERROR), 0, 0)


def engine(body: bytes = b"x" * 10, **cfg: Any) -> tuple[H2Engine, _Conn, Sink]:
    sink = Sink()
    eng = H2Engine(EngineConfig(http2=True, **cfg), RequestSet("http://127.0.0.1:9/p", "POST", {},
                                                              [PreparedBody(body, 1)]), classify, sink)
    eng._loop = asyncio.get_running_loop()  # a retried stream's fresh connection is a task (cancelled below)
    eng._open = True  # open loop: a finished stream starts nothing new (no pacer here)
    eng._limit = 1 << 20
    conn = _Conn(eng, 0)
    eng._slots[0] = conn
    eng._conns.add(conn)
    eng._settings(conn, b"")  # the server's (empty) SETTINGS: the connection is ready
    return eng, conn, sink


def start(eng: H2Engine, conn: _Conn, n: int) -> list[int]:
    for _ in range(n):
        eng._submit(conn, eng._new_stream(0, 0))
    return sorted(conn.streams)


def headers(sid: int, status: bytes, end: bool) -> bytes:
    block = encode_header_block([(b":status", status), (b"content-type", b"text/plain")])
    return fr.frame(fr.HEADERS, fr.END_HEADERS | (fr.END_STREAM if end else 0), sid, block)


def cancel(eng: H2Engine) -> None:
    for task in list(eng._tasks):
        task.cancel()


def leftovers(eng: H2Engine, conn: _Conn) -> tuple[int, int, int, int]:
    return len(conn.streams), len(conn.waiting), len(conn.blocked), eng._inflight


async def test_streams_are_released_on_end_stream_reset_and_goaway() -> None:
    eng, conn, sink = engine()
    sids = start(eng, conn, 6)
    assert sids == [1, 3, 5, 7, 9, 11] and eng._inflight == 6
    wire = (headers(1, b"200", end=True)  # END_STREAM on HEADERS
            + headers(3, b"200", end=False) + fr.frame(fr.DATA, 0, 3, b"ab") + fr.frame(fr.DATA, fr.END_STREAM, 3, b"c")
            + fr.rst_stream(5, 2)  # INTERNAL_ERROR: a protocol error
            + fr.goaway(7, 0))  # 9 and 11 were never processed: retried on a fresh connection
    assert eng.receive(conn, wire) == len(wire)
    assert 1 not in conn.streams and 3 not in conn.streams and 5 not in conn.streams
    assert sorted(conn.streams) == [7] and conn.goaway  # 7 may still be answered (graceful GOAWAY)
    assert eng.receive(conn, headers(7, b"200", end=True)) > 0
    assert leftovers(eng, conn)[:3] == (0, 0, 0) and conn.dead  # retired once empty
    assert [r[3] for r in sink.rows].count(int(Kind.OK)) == 3 and sink.kinds()[int(Kind.PROTOCOL_ERROR)] == 1
    fresh = eng._slots[0]
    assert fresh is not None and fresh is not conn and len(fresh.waiting) == 2  # 9 and 11, waiting to connect
    assert eng._inflight == 2 and len(eng._free) == 3
    cancel(eng)


async def test_stream_objects_are_recycled_so_a_long_run_allocates_none() -> None:
    eng, conn, sink = engine()
    for k in range(1000):
        (sid,) = start(eng, conn, 1)
        eng.receive(conn, headers(sid, b"200", end=True) if k % 2 else
                    headers(sid, b"200", end=False) + fr.frame(fr.DATA, fr.END_STREAM, sid, b"ok"))
    assert len(sink.rows) == 1000 and leftovers(eng, conn) == (0, 0, 0, 0)
    assert len(eng._free) == 1  # one _Stream object served all 1000 requests
    assert len(conn.dec._cache) <= 256


async def test_read_timeout_and_connection_loss_release_streams() -> None:
    eng, conn, sink = engine(read_timeout_s=0.001)
    start(eng, conn, 3)
    for stream in conn.streams.values():
        stream.sent = 1
    eng.sweep(10**12)
    assert leftovers(eng, conn) == (0, 0, 0, 0) and sink.kinds()[int(Kind.READ_TIMEOUT)] == 3
    start(eng, conn, 2)
    eng._teardown(conn, int(Kind.RESET), "gone")
    assert len(conn.streams) == 0 and conn not in eng._conns and eng._inflight == 0


async def test_a_stream_answered_before_its_body_was_sent_leaves_no_blocked_entry() -> None:
    eng, conn, sink = engine(body=b"y" * 100_000)  # above the 65,535-byte initial windows: partly sent, parked
    (sid,) = start(eng, conn, 1)
    assert conn.blocked and conn.blocked[0].sid == sid
    eng.receive(conn, headers(sid, b"413", end=True))  # the server refused it early
    assert leftovers(eng, conn) == (0, 0, 0, 0) and sink.kinds() == {int(Kind.HTTP_ERROR): 1}


def _answers_wire(sids: list[int], sizes: list[int]) -> bytes:
    out = b""
    for sid, size in zip(sids, sizes, strict=True):
        out += headers(sid, b"200", end=False)
        body = bytes([sid % 251]) * size
        for i in range(0, size, fr.DEFAULT_MAX_FRAME):
            chunk = body[i:i + fr.DEFAULT_MAX_FRAME]
            out += fr.frame(fr.DATA, fr.END_STREAM if i + fr.DEFAULT_MAX_FRAME >= size else 0, sid, chunk)
        if size == 0:
            out += fr.frame(fr.DATA, fr.END_STREAM, sid, b"")
    return out


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=5), cuts=st.lists(st.integers(1, 70_000),
                                                                                      max_size=12))
def test_answers_split_anywhere_across_reads_give_the_same_records(sizes: list[int], cuts: list[int]) -> None:
    """Reads end anywhere, also inside a frame header; the partial frame is completed from the next read."""
    sink = Sink()
    eng = H2Engine(EngineConfig(http2=True), RequestSet("http://127.0.0.1:9/p", "POST", {}, [PreparedBody(b"q", 1)]),
                   classify, sink)
    eng._open, eng._limit = True, 1 << 20
    conn = _Conn(eng, 0)
    eng._slots[0] = conn
    eng._settings(conn, b"")
    sids = start(eng, conn, len(sizes))
    wire = _answers_wire(sids, sizes)
    pos = 0
    for cut in sorted({c % (len(wire) + 1) for c in cuts}):
        conn.data_received(wire[pos:cut])
        pos = cut
        assert len(conn.buf) <= 9 + fr.DEFAULT_MAX_FRAME  # never more than one partial frame is kept
    conn.data_received(wire[pos:])
    assert not conn.dead and conn.buf == b""
    assert sorted(r[7] for r in sink.rows) == sorted(sizes) and set(sink.kinds()) == {int(Kind.OK)}
    assert leftovers(eng, conn) == (0, 0, 0, 0)

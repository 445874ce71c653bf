"""The HTTP/2 frame codec (bench.engine.h2frames) against hyperframe, and the h2 engine's receive path on crafted
frame sequences (padding, priority, CONTINUATION, 1xx, trailers, windows, SETTINGS, PING, reads split anywhere)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine import h2frames as fr
from bench.engine.base import EngineConfig, PreparedBody, RequestSet
from bench.engine.h2 import H2Engine, _Conn
from bench.results import Kind


def parse_all(data: bytes) -> list[Frame]:
    """Frames of ``data`` as hyperframe sees them (the reference decoder)."""
    out = []
    off = 0
    while off < len(data):
        f, length = Frame.parse_frame_header(memoryview(data[off:off + 9]))
        f.parse_body(memoryview(data[off + 9:off + 9 + length]))
        out.append(f)
        off += 9 + length
    return out


frames = st.tuples(st.integers(0, 9), st.integers(0, 255), st.integers(0, 2**31 - 1), st.binary(max_size=64))


@given(st.lists(frames, max_size=8), st.integers(0, 1000))
def test_split_frames_returns_whole_frames_and_leaves_the_rest(items: list[tuple[int, int, int, bytes]],
                                                               cut: int) -> None:
    data = b"".join(fr.frame(t, f, s, p) for t, f, s, p in items)
    cut = min(cut, len(data))
    first, used = fr.split_frames(data[:cut], fr.DEFAULT_MAX_FRAME)
    rest, used2 = fr.split_frames(data[used:], fr.DEFAULT_MAX_FRAME)
    assert first + rest == items and used + used2 == len(data)


def test_split_frames_refuses_oversized_frames() -> None:
    with pytest.raises(fr.FrameError):
        fr.split_frames(fr.frame(fr.DATA, 0, 1, b"x" * 20), 16)


@settings(max_examples=60, deadline=None)
@given(block_len=st.integers(0, 40_000), body_len=st.integers(0, 70_000), sid=st.integers(1, 2**31 - 1).map(
    lambda s: s | 1))
def test_request_frames_match_hyperframe(block_len: int, body_len: int, sid: int) -> None:
    block = bytes(i % 251 for i in range(block_len))
    body = bytes((i * 7) % 253 for i in range(body_len))
    t = fr.request_frames(block, body)
    out = bytearray(b"junk")
    t.put(out, sid)
    got = parse_all(bytes(out[4:]))
    assert all(f.stream_id == sid for f in got)
    heads = [f for f in got if isinstance(f, HeadersFrame | ContinuationFrame)]
    datas = [f for f in got if isinstance(f, DataFrame)]
    assert isinstance(got[0], HeadersFrame) and got[:len(heads)] == heads
    assert b"".join(f.data for f in heads) == block
    assert [("END_HEADERS" in f.flags) for f in heads] == [False] * (len(heads) - 1) + [True]
    assert b"".join(f.data for f in datas) == body
    assert all(len(f.data) <= fr.DEFAULT_MAX_FRAME for f in heads + datas)
    if body:
        assert [("END_STREAM" in f.flags) for f in datas] == [False] * (len(datas) - 1) + [True]
        assert "END_STREAM" not in heads[0].flags
    else:
        assert not datas and "END_STREAM" in heads[0].flags
    only = bytearray()
    t.put(only, sid, whole=False)
    assert bytes(only) == bytes(out[4:4 + t.head_len])


def test_small_frames_match_hyperframe() -> None:
    (s,) = parse_all(fr.settings([(3, 7), (4, 1 << 20)]))
    assert isinstance(s, SettingsFrame) and s.settings == {3: 7, 4: 1 << 20}
    (a,) = parse_all(fr.settings([], ack=True))
    assert "ACK" in a.flags
    (w,) = parse_all(fr.window_update(5, 12345))
    assert isinstance(w, WindowUpdateFrame) and (w.stream_id, w.window_increment) == (5, 12345)
    (r,) = parse_all(fr.rst_stream(9, 8))
    assert isinstance(r, RstStreamFrame) and r.error_code == 8
    (p,) = parse_all(fr.ping(b"abc", ack=True))
    assert isinstance(p, PingFrame) and p.opaque_data == b"abc\0\0\0\0\0" and "ACK" in p.flags
    assert fr.parse_settings(fr.settings([(1, 0), (5, 20000)])[9:]) == [(1, 0), (5, 20000)]
    with pytest.raises(fr.FrameError):
        fr.parse_settings(b"\0" * 7)


# -- the engine's receive path, fed crafted frames ----------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.details: list[bytes] = []

    def record(self, *row: int) -> None:
        self.rows.append(row)

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        self.details.append(detail)

    def dropped(self, intended_ns: int) -> None: ...

    def loop_lag(self, lag_ns: int) -> None: ...


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> Any:
        return None


@pytest.fixture(autouse=True)
def loop(idle_loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """The (never running) loop the engines under test hold (conftest's idle_loop: cleaned up at the end)."""
    return idle_loop


def engine_with_streams(loop: asyncio.AbstractEventLoop, n: int) -> tuple[H2Engine, _Conn, Sink, list[bytes]]:
    """An engine with one 'connected' connection and ``n`` open streams (ids 1, 3, ...); no sockets."""
    bodies: list[bytes] = []

    def keep(status: int, body: bytes, rows: int) -> tuple[int, int, int]:
        bodies.append(body)
        return (int(Kind.OK) if status == 200 else int(Kind.HTTP_ERROR), rows, 0)

    sink = Sink()
    rs = RequestSet("http://127.0.0.1:9/x", "POST", {}, [PreparedBody(b"hello", 1)])
    eng = H2Engine(EngineConfig(http2=True), rs, keep, sink)
    eng._open = True  # finished streams do not start new ones
    eng._loop = loop
    conn = _Conn(eng, 0)
    eng._slots[0] = conn
    eng._conns.add(conn)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    assert not conn.ready  # streams wait for the server's SETTINGS
    conn.data_received(fr.settings([]))
    assert conn.ready
    for _ in range(n):
        eng._submit(conn, eng._new_stream(0, 0))
    eng.flush()
    return eng, conn, sink, bodies


def sent_frames(conn: _Conn) -> list[Frame]:
    written = bytes(conn.transport.written)  # type: ignore[union-attr]
    assert written.startswith(fr.PREFACE)
    return parse_all(written[len(fr.PREFACE):])


def answer_frames(sid: int, enc: Encoder, body: bytes, *, padded: bool = False, cont: bool = False,
                  informational: bool = False, trailers: bool = False) -> bytes:
    out = b""
    if informational:
        h = HeadersFrame(sid, enc.encode([(b":status", b"100")]))
        h.flags.add("END_HEADERS")
        out += h.serialize()
    block = enc.encode([(b":status", b"200"), (b"x-long", b"v" * 50)])
    h = HeadersFrame(sid, block[:5] if cont else block)
    h.flags.add("PRIORITY")
    h.depends_on, h.stream_weight = 0, 16
    if padded:
        h.flags.add("PADDED")
        h.pad_length = 3
    if not cont:
        h.flags.add("END_HEADERS")
    out += h.serialize()
    if cont:
        c = ContinuationFrame(sid, block[5:])
        c.flags.add("END_HEADERS")
        out += c.serialize()
    half = len(body) // 2
    d1 = DataFrame(sid, body[:half])
    d2 = DataFrame(sid, body[half:])
    if padded:
        d2.flags.add("PADDED")
        d2.pad_length = 7
    if trailers:
        out += d1.serialize() + d2.serialize()
        t = HeadersFrame(sid, enc.encode([(b"grpc-status", b"0")]))
        t.flags.add("END_HEADERS")
        t.flags.add("END_STREAM")
        return out + t.serialize()
    d2.flags.add("END_STREAM")
    return out + d1.serialize() + d2.serialize()


@pytest.mark.parametrize("step", [1, 7, 100, 1 << 20])
def test_receive_path_on_unusual_but_legal_framing(loop: asyncio.AbstractEventLoop, step: int) -> None:
    _, conn, sink, bodies = engine_with_streams(loop, 4)
    enc = Encoder()
    data = fr.settings([(1, 0), (3, 50), (4, 1000)])  # table size 0, 50 streams, smaller initial window
    data += PingFrame(0, b"12345678").serialize()
    data += answer_frames(1, enc, b"a" * 30, padded=True)
    data += answer_frames(3, enc, b"b" * 30, cont=True)
    data += answer_frames(5, enc, b"c" * 30, informational=True)
    data += answer_frames(7, enc, b"d" * 30, trailers=True)
    for i in range(0, len(data), step):
        conn.data_received(data[i:i + step])
    assert not conn.dead
    assert [r[4] for r in sink.rows] == [200] * 4 and sink.details == []
    assert bodies == [b"a" * 30, b"b" * 30, b"c" * 30, b"d" * 30]
    assert conn.max_streams == 50 and conn.table_update and conn.peer_initial == 1000
    sent = sent_frames(conn)
    assert any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in sent)
    assert any(isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == b"12345678" for f in sent)


def test_a_blocked_body_is_pumped_as_the_windows_open(loop: asyncio.AbstractEventLoop) -> None:
    eng, conn, _, _ = engine_with_streams(loop, 0)
    big = bytes(range(256)) * 400  # 102,400 bytes: more than the 65,535 default windows
    eng._tmpls = [None]
    eng._body = lambda i: big
    eng._submit(conn, eng._new_stream(0, 0))
    eng.flush()

    def sent_data() -> bytes:
        frames = sent_frames(conn)
        return b"".join(f.data for f in frames if isinstance(f, DataFrame))

    assert sent_data() == big[:65_535] and conn.blocked
    conn.data_received(WindowUpdateFrame(1, 100_000).serialize())  # the stream's window alone is not enough
    assert sent_data() == big[:65_535]
    conn.data_received(WindowUpdateFrame(0, 100_000).serialize())
    assert sent_data() == big and not conn.blocked


def test_frame_errors_fail_the_connection_and_its_streams(loop: asyncio.AbstractEventLoop) -> None:
    _, conn, sink, _ = engine_with_streams(loop, 2)
    conn.data_received(fr.frame(fr.PUSH_PROMISE, 4, 1, b"\0\0\0\2"))
    assert conn.dead and [r[3] for r in sink.rows] == [int(Kind.PROTOCOL_ERROR)] * 2


def test_rst_stream_and_goaway(loop: asyncio.AbstractEventLoop) -> None:
    eng, conn, sink, _ = engine_with_streams(loop, 3)
    conn.data_received(fr.rst_stream(1, 2))
    assert [r[3] for r in sink.rows] == [int(Kind.PROTOCOL_ERROR)]
    conn.data_received(fr.goaway(3, 0))  # stream 5 was never processed: it moves to a new connection
    assert conn.goaway and list(conn.streams) == [3] and eng._slots[0] is not conn
    new = eng._slots[0]
    assert new is not None and len(new.waiting) == 1

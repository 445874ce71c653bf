"""HTTP/2 frames (RFC 9113 §4, §6) for the lean h2 engine: build the few frames a client sends, split a byte stream
into frames, and pre-serialise a request as HEADERS (+ CONTINUATION) + DATA frames with its stream id patched in.

Why not the ``h2`` package on the hot path: its stream state machine, event objects and per-frame ``repr`` cost
~50 µs per request in Python; a client that only opens streams, sends whole requests and reads whole answers needs
a frame header codec and a handful of rules, which the engine (``bench.engine.h2``) applies.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "DEFAULT_MAX_FRAME",
    "END_HEADERS",
    "END_STREAM",
    "FRAME_HEADER",
    "GOAWAY",
    "GOAWAY_HEAD",
    "HEADERS",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "U32",
    "WINDOW_UPDATE",
    "FrameError",
    "RequestTemplate",
    "frame",
    "goaway",
    "parse_settings",
    "ping",
    "request_frames",
    "rst_stream",
    "settings",
    "split_frames",
    "window_update",
]

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
DEFAULT_MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's initial value: every peer takes frames this big
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id (R bit + 31 bits)
U32 = struct.Struct(">L")
GOAWAY_HEAD = struct.Struct(">LL")  # last stream id, error code
_HEAD = FRAME_HEADER
_U32 = U32
_SETTING = struct.Struct(">HL")


class FrameError(ValueError):
    """The peer broke framing (a connection error); ``code`` is the RFC 9113 error code to report."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def settings(pairs: list[tuple[int, int]], ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(_SETTING.pack(k, v) for k, v in pairs))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise FrameError("SETTINGS payload is not a multiple of 6 octets", 6)
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, _U32.pack(increment & 0x7FFFFFFF))


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, _U32.pack(code))


def goaway(last_sid: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_sid & 0x7FFFFFFF) + _U32.pack(code))


def ping(data: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data[:8].ljust(8, b"\0"))


def split_frames(buf: bytes | bytearray, max_len: int) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """Whole frames at the start of ``buf`` as (type, flags, stream id, payload), and how many bytes they took.

    Raises ``FrameError`` (FRAME_SIZE_ERROR) for a frame longer than ``max_len``.
    """
    out = []
    off = 0
    end = len(buf)
    unpack = _HEAD.unpack_from
    while end - off >= 9:
        hi, lo, ftype, flags, sid = unpack(buf, off)
        n = (hi << 8) | lo
        if n > max_len:
            raise FrameError(f"frame of {n} octets exceeds SETTINGS_MAX_FRAME_SIZE {max_len}", 6)
        stop = off + 9 + n
        if stop > end:
            break
        out.append((ftype, flags, sid & 0x7FFFFFFF, bytes(buf[off + 9:stop])))
        off = stop
    return out, off


class RequestTemplate:
    """A request's frames with stream id 0, and where to patch the stream id in.

    ``wire`` = HEADERS (+ CONTINUATION) then DATA frames (END_STREAM on the last frame); ``head_len`` is the size
    of the header frames (what is sent alone when flow control holds the body back).
    """

    __slots__ = ("body_len", "head_len", "head_offsets", "offsets", "wire")

    def __init__(self, wire: bytes, offsets: tuple[int, ...], head_len: int, body_len: int) -> None:
        self.wire = wire
        self.offsets = offsets
        self.head_len = head_len
        self.head_offsets = tuple(o for o in offsets if o < head_len)
        self.body_len = body_len

    def put(self, out: bytearray, sid: int, whole: bool = True) -> None:
        """Append the frames (or only the header frames) to ``out`` with ``sid`` patched in."""
        base = len(out)
        if whole:
            out += self.wire
            offsets = self.offsets
        else:
            out += self.wire[:self.head_len]
            offsets = self.head_offsets
        pack = _U32.pack_into
        for off in offsets:
            pack(out, base + off, sid)


def request_frames(block: bytes, body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> RequestTemplate:
    """Pre-serialise HEADERS(+CONTINUATION) for ``block`` and DATA frames for ``body`` (none when it is empty)."""
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = 0

    def add(ftype: int, flags: int, payload: bytes) -> None:
        nonlocal pos
        offsets.append(pos + 5)
        f = frame(ftype, flags, 0, payload)
        parts.append(f)
        pos += len(f)

    chunks = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        flags = (END_HEADERS if last else 0) | (END_STREAM if k == 0 and not body else 0)
        add(HEADERS if k == 0 else CONTINUATION, flags, chunk)
    head_len = pos
    for i in range(0, len(body), max_frame):
        add(DATA, END_STREAM if i + max_frame >= len(body) else 0, body[i:i + max_frame])
    return RequestTemplate(b"".join(parts), tuple(offsets), head_len, len(body))

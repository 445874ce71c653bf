"""The response-headers hook (``Engine.watch_headers``): the fast, h2 and httpx engines report the same chosen
headers for the same answers, against one real server (hypercorn: HTTP/1.1 and h2c on one port)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from engine_servers import FakeSink, Stop, bodies, closed, make, served_by_hypercorn

from bench.engine.fast import FastEngine, _BufferConn, _Conn, _StreamConn, _WatchBufferConn, _WatchConn
from bench.engine.h2 import H2Engine
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind

pytestmark = pytest.mark.anyio

WANTED = ["X-RateLimit-*", "retry-after"]


class RateLimitedApp:
    """Answers every 3rd request 429 with Retry-After; every answer carries x-ratelimit-remaining (a per-path
    counter, so what each engine sees depends only on how many requests it sent), a repeated x-ratelimit-policy
    header and headers nobody asked for."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.versions: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        self.versions.add(scope["http_version"])
        while (await receive()).get("more_body"):
            pass
        key = scope["path"]
        self.count[key] += 1
        n = self.count[key]
        limited = n % 3 == 0
        payload = b"rate limited" if limited else b"1"
        headers = [(b"content-length", str(len(payload)).encode()), (b"x-ratelimit-remaining", str(100 - n).encode()),
                   (b"X-RateLimit-Policy", b"100;w=60"), (b"x-ratelimit-policy", b"burst;w=1"),
                   (b"x-other", b"not wanted"), (b"x-ratelimitless", b"not a prefix match either")]
        if limited:
            headers.append((b"Retry-After", b"7"))
        await send({"type": "http.response.start", "status": 429 if limited else 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


ENGINES: dict[str, tuple[type, bool]] = {
    "fast": (FastEngine, False),
    "h2": (H2Engine, True),
    "httpx-h1": (HttpxEngine, False),
    "httpx-h2": (HttpxEngine, True),
}
N = 12


def expected() -> list[tuple[int, dict[str, str]]]:
    out = []
    for n in range(1, N + 1):
        hdrs = {"x-ratelimit-remaining": str(100 - n), "x-ratelimit-policy": "100;w=60, burst;w=1"}
        if n % 3 == 0:
            hdrs["retry-after"] = "7"
        out.append((429 if n % 3 == 0 else 200, hdrs))
    return out


async def test_every_engine_reports_the_same_chosen_headers() -> None:
    app = RateLimitedApp()
    async with served_by_hypercorn(app) as port:
        for name, (cls, http2) in ENGINES.items():
            sink = FakeSink()
            seen: list[tuple[int, dict[str, str]]] = []
            eng = make(cls, f"http://127.0.0.1:{port}/{name}", sink, bodies(1), http2=http2)
            eng.watch_headers(WANTED, lambda status, headers, seen=seen: seen.append((status, headers)))
            await eng.run(closed(1, max_requests=N), Stop())  # one worker: answers arrive in order
            assert len(sink.rows) == N, name
            assert sink.kinds() == Counter({int(Kind.OK): 8, int(Kind.HTTP_ERROR): 4}), name
            assert seen == expected(), name
    assert app.versions == {"1.1", "2"}  # both protocols really were exercised


async def test_without_a_hook_nothing_is_parsed_and_setting_it_late_is_refused() -> None:
    app = RateLimitedApp()
    async with served_by_hypercorn(app) as port:
        sink = FakeSink()
        eng = make(FastEngine, f"http://127.0.0.1:{port}/plain", sink, bodies(1))
        await eng.run(closed(2, max_requests=6), Stop())
        assert len(sink.rows) == 6 and eng._watch is None
        with pytest.raises(RuntimeError):
            eng.watch_headers(WANTED, lambda s, h: None)
    # the zero-cost claim: a connection without a hook gives httptools no on_header callback at all
    assert not any(hasattr(c, "on_header") for c in (_Conn, _StreamConn, _BufferConn))
    assert hasattr(_WatchConn, "on_header") and hasattr(_WatchBufferConn, "on_header")


async def test_a_hook_can_be_removed_before_the_run() -> None:
    app = RateLimitedApp()
    async with served_by_hypercorn(app) as port:
        seen: list[int] = []
        sink = FakeSink()
        eng = make(H2Engine, f"http://127.0.0.1:{port}/h2-off", sink, bodies(1), http2=True)
        eng.watch_headers(WANTED, lambda s, h: seen.append(s))
        eng.watch_headers(WANTED, None)
        await eng.run(closed(1, max_requests=3), Stop())
        assert len(sink.rows) == 3 and seen == []

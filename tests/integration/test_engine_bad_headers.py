"""A header no engine can send (a line break, a control or a non-ASCII character) is a RequestBuildError on every
engine — at construction and in set_headers — never a crash elsewhere, and never shown by value; the httpx engine,
whose requests are built per send, ends the run at the first request it cannot build instead of counting a
failure per request in a hot loop. Real hypercorn on loopback where requests are sent."""

from __future__ import annotations

import time

import pytest
from engine_servers import FakeSink, Stop, closed, constant_rate, make, served_by_hypercorn
from hypothesis import given
from hypothesis import strategies as st
from test_engine_headers import RateLimitedApp

from bench.engine.base import RequestBuildError, check_header
from bench.engine.fast import FastEngine
from bench.engine.h2 import H2Engine
from bench.engine.httpx_engine import HttpxEngine

ENGINES = {"fast": (FastEngine, False), "h2": (H2Engine, True), "httpx": (HttpxEngine, False),
           "httpx-h2": (HttpxEngine, True)}
BAD_VALUES = ["tok-Secret\nX-Injected: 1", "tok-Secret\r", "tok-Secret\x00", "tok-Secrét", "tok-Secret\x7f"]


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_printable_ascii_values_pass(value: str) -> None:
    check_header("X-Token", value)


@given(st.text(max_size=20), st.characters(blacklist_categories=(), blacklist_characters="\t").filter(
    lambda c: not " " <= c <= "~"), st.text(max_size=20))
def test_anything_else_in_a_value_is_refused_without_showing_it(head: str, bad: str, tail: str) -> None:
    value = "S3cr3t" + head + bad + tail
    with pytest.raises(RequestBuildError) as info:
        check_header("X-Token", value)
    assert "S3cr3t" not in str(info.value) and "X-Token" in str(info.value)


@pytest.mark.parametrize("name", list(ENGINES))
@pytest.mark.parametrize("value", BAD_VALUES)
def test_every_engine_refuses_a_bad_header_at_construction_and_in_set_headers(name: str, value: str) -> None:
    cls, http2 = ENGINES[name]
    with pytest.raises(RequestBuildError) as info:
        make(cls, "http://127.0.0.1:9/x", FakeSink(), headers={"X-Token": value}, http2=http2)
    assert "Secret" not in str(info.value)
    eng = make(cls, "http://127.0.0.1:9/x", FakeSink(), headers={"X-Token": "old"}, http2=http2)
    with pytest.raises(RequestBuildError):
        eng.set_headers({"X-Token": value})


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_httpx_ends_the_run_at_a_request_it_cannot_build(mode: str) -> None:
    """A request httpx cannot build (headers changed behind the engine's checks) ends the run: nothing more is
    taken on, what was sent is accounted for, and the run does not fail request after request until its end."""
    async with served_by_hypercorn(RateLimitedApp()) as port:
        sink = FakeSink()
        eng = make(HttpxEngine, f"http://127.0.0.1:{port}/bad", sink)
        stop = Stop()
        load = closed(4, seconds=20.0) if mode == "closed" else constant_rate(500, 20.0, max_in_flight=50)
        eng._headers = {"X-Token": "tok-Secrét"}  # white-box: past the checks, as no caller can get it
        t0 = time.monotonic()
        with pytest.raises(RequestBuildError) as info:
            await eng.run(load, stop)
        elapsed = time.monotonic() - t0
    assert elapsed < 10  # ended at once, not at the 20 s end of the load
    assert "cannot build the request" in str(info.value) and "Secr" not in str(info.value)
    assert eng.sent == len(sink.rows) + eng.abandoned  # nothing taken on that was not built
    assert eng.sent == 0 and sink.rows == []

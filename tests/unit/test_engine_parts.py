"""Pure parts of the engines: URL parsing, pre-serialised requests, error mapping, engine/loop choice."""

from __future__ import annotations

import asyncio
import ssl
import time

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.engine import fast, httpx_engine, loopmon, select
from bench.engine.base import EngineConfig, PreparedBody, RequestBuildError, RequestSet
from bench.engine.fast import FastEngine, build_wires, exception_kind, parse_target
from bench.engine.h2 import H2Engine
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind


def test_public_names() -> None:
    for mod in (fast, httpx_engine, loopmon, select):
        for name in mod.__all__:
            assert hasattr(mod, name)


@pytest.mark.parametrize(("url", "host", "port", "tls", "path", "hh"), [
    ("http://127.0.0.1:8080/infer?x=1", "127.0.0.1", 8080, False, "/infer?x=1", "127.0.0.1:8080"),
    ("https://example.test/a", "example.test", 443, True, "/a", "example.test"),
    ("http://[::1]:9/", "::1", 9, False, "/", "[::1]:9"),
    ("http://h", "h", 80, False, "/", "h"),
])
def test_parse_target(url: str, host: str, port: int, tls: bool, path: str, hh: str) -> None:
    t = parse_target(url)
    assert (t.host, t.port, t.tls, t.path, t.host_header) == (host, port, tls, path, hh)


def test_parse_target_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        parse_target("ftp://x/")


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.body = b""
        self.headers: list[tuple[str, str]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, n: bytes, v: bytes) -> None:
        self.headers.append((n.decode().lower(), v.decode()))

    def on_body(self, b: bytes) -> None:
        self.body += b

    def on_message_complete(self) -> None:
        self.done = True


def _parse_request(wire: bytes) -> tuple[bytes, bytes, list[tuple[str, str]], bytes]:
    c = _Collect()
    parser = httptools.HttpRequestParser(c)
    parser.feed_data(wire)
    assert c.done
    return parser.get_method(), c.url, c.headers, c.body


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4),
       st.dictionaries(st.from_regex(r"X-[a-z]{1,8}", fullmatch=True), st.from_regex(r"[ -~]{0,20}",
                                                                                           fullmatch=True)))
def test_wires_parse_back_to_the_same_request(body_list: list[bytes], headers: dict[str, str]) -> None:
    rs = RequestSet("http://127.0.0.1:1/p?q", "post", headers, [PreparedBody(b, 1) for b in body_list])
    wires = build_wires(rs, parse_target(rs.url), {**headers, "host": "model.example.com"})
    for wire, body in zip(wires, body_list, strict=True):
        method, url, got_headers, got_body = _parse_request(wire)
        assert method == b"POST" and url == b"/p?q" and got_body == body
        hs = dict(got_headers)
        assert hs["host"] == "model.example.com" and hs["content-length"] == str(len(body))
        assert [n for n, _ in got_headers if n == "host"] == ["host"]
        for k, v in headers.items():
            # HTTP trims optional whitespace around a value; llhttp drops the leading part only
            assert hs[k.lower()].strip() == v.strip()


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Keep-Alive", "Upgrade",
                                  "TE", ":authority"])
def test_headers_the_engine_sets_itself_are_refused_not_dropped(name: str) -> None:
    rs = RequestSet("http://h/", "POST", {name: "1"}, [PreparedBody(b"", 0)])
    with pytest.raises(RequestBuildError, match=r"cannot be set|pseudo-header"):
        build_wires(rs, parse_target(rs.url), rs.headers)


def test_a_host_header_is_the_host_and_the_tls_server_name() -> None:
    t = parse_target("https://10.0.0.5:8443/v2/models/m/infer", {"HOST": "m.default.example.com"})
    assert (t.host, t.port, t.host_header, t.sni) == ("10.0.0.5", 8443, "m.default.example.com",
                                                      "m.default.example.com")
    t = parse_target("https://10.0.0.5/", {"Host": "[::1]:8443"})
    assert (t.host_header, t.sni) == ("[::1]:8443", "::1")
    t = parse_target("https://svc.example.com:8443/")
    assert (t.host_header, t.sni) == ("svc.example.com:8443", "svc.example.com")


def test_header_injection_refused() -> None:
    rs = RequestSet("http://h/", "POST", {"X-A": "1\r\nEvil: 1"}, [PreparedBody(b"", 0)])
    with pytest.raises(ValueError):
        build_wires(rs, parse_target(rs.url), rs.headers)


def test_set_headers_rebuilds_wires() -> None:
    rs = RequestSet("http://h/", "POST", {"Authorization": "Bearer a"}, [PreparedBody(b"x", 1)])
    eng = FastEngine(EngineConfig(), rs, lambda s, b, r: (0, r, 0), None)  # type: ignore[arg-type]
    assert b"Bearer a" in eng._wire(0)
    eng.set_headers({"Authorization": "Bearer b"})
    assert eng._wires[0] is None  # rebuilt on next use
    assert b"Bearer b" in eng._wire(0) and b"Bearer a" not in eng._wire(0)


@pytest.mark.parametrize(("exc", "connecting", "kind"), [
    (ConnectionRefusedError(), True, Kind.CONNECT_REFUSED),
    (TimeoutError(), True, Kind.CONNECT_TIMEOUT),
    (TimeoutError(), False, Kind.READ_TIMEOUT),
    (ssl.SSLCertVerificationError("bad"), True, Kind.TLS_ERROR),
    (ConnectionResetError(), False, Kind.RESET),
    (OSError("unreachable"), True, Kind.CONNECT_REFUSED),
    (None, False, Kind.RESET),
])
def test_exception_kind(exc: BaseException | None, connecting: bool, kind: Kind) -> None:
    assert exception_kind(exc, connecting) == kind


def test_choose_engine() -> None:
    assert select.choose_engine(EngineConfig(), "http://h/") is FastEngine
    assert select.choose_engine(EngineConfig(), "https://h/") is FastEngine
    assert select.choose_engine(EngineConfig(http2=True), "https://h/") is H2Engine
    assert select.choose_engine(EngineConfig(kind="httpx", http2=True), "https://h/") is HttpxEngine
    assert select.choose_engine(EngineConfig(kind="httpx"), "http://h/") is HttpxEngine


def test_loop_choice_and_runner() -> None:
    assert select.resolve_loop("asyncio") == "asyncio"
    assert select.resolve_loop("auto") == "uvloop"  # installed here
    assert select.anyio_backend_options("asyncio") == {"use_uvloop": False}

    async def answer() -> int:
        return 42

    assert select.run_with_loop(answer, "uvloop") == 42
    assert select.run_with_loop(answer, "asyncio") == 42


def test_cpu_meter_is_cpu_time_over_wall_time_and_resets() -> None:
    """Injected clocks: exact figures, independent of how loaded the machine is."""
    cpu, wall = [10.0], [100.0]
    meter = loopmon.CpuMeter(cpu=lambda: cpu[0], wall=lambda: wall[0])
    cpu[0], wall[0] = 10.3, 100.4  # 0.3 s of CPU in 0.4 s
    assert meter.fraction(reset=False) == pytest.approx(0.75)
    assert meter.fraction() == pytest.approx(0.75)
    cpu[0], wall[0] = 10.3, 101.4  # idle for a second after the reset
    assert meter.fraction() == 0.0
    cpu[0], wall[0] = 11.9, 102.4  # two threads busy: more than one core
    assert meter.fraction() == pytest.approx(1.6)
    assert meter.fraction() == 0.0  # no wall time passed


def test_cpu_meter_sees_busy_work() -> None:
    """The real clocks: busy work shows as this process's CPU time. The loop runs until 50 ms of *CPU* are spent
    (not wall time: a loaded machine gives this process only part of a core), and the meter's figure is checked
    against the same CPU and wall clocks read around it."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    meter = loopmon.CpuMeter()
    while time.process_time() - cpu0 < 0.05:
        pass
    frac = meter.fraction()
    share = (time.process_time() - cpu0) / (time.monotonic() - wall0)  # at least as long an interval
    assert 0 < frac <= 1.2
    assert frac == pytest.approx(share, rel=0.2, abs=0.02), (frac, share)


class _LatePacer:
    def __init__(self, late_ns: int) -> None:
        self.late_ns = late_ns
        self.next_ns = self.eager_ns = 1 << 62


def test_open_loop_grows_the_pool_only_while_the_pacer_wakes_on_time(idle_loop: asyncio.AbstractEventLoop) -> None:
    """A loop that woke late is busy (e.g. reading big answers): sends queue for a free connection instead of
    opening more; once a wake-up is on time again, the queued sends get connections."""
    rs = RequestSet("http://127.0.0.1:9/", "POST", {}, [PreparedBody(b"x", 1)])
    eng = FastEngine(EngineConfig(), rs, lambda s, b, r: (0, r, 0), None)  # type: ignore[arg-type]
    eng._open, eng._limit, eng._pool_max, eng._loop = True, 100, 100, idle_loop
    pacer = _LatePacer(fast.GROW_MAX_LAG_NS + 1)
    eng._pacer = pacer  # type: ignore[assignment]
    eng.dispatch(1)
    eng.dispatch(2)
    assert len(eng._conns) == 0 and list(eng._backlog) == [1, 2]
    pacer.late_ns = 0
    eng.dispatch(3)
    assert len(eng._conns) == 3 and not eng._backlog  # every waiting send got a connection


def test_open_loop_stops_growing_while_answers_in_flight_would_hold_too_much() -> None:
    """Big answers: the pool does not grow while in-flight answers hold (or, at the recent answer size, will
    hold) more than GROW_MAX_KEPT bytes, however punctual the pacer is."""
    rs = RequestSet("http://127.0.0.1:9/", "POST", {}, [PreparedBody(b"x", 1)])
    eng = FastEngine(EngineConfig(), rs, lambda s, b, r: (0, r, 0), None)  # type: ignore[arg-type]
    eng._open, eng._limit, eng._pool_max = True, 100, 100
    eng._pacer = _LatePacer(0)  # type: ignore[assignment]
    assert eng._may_grow()
    eng._inflight, eng._avg_in = 4, 20.0 * 2**20  # four 20 MiB answers coming, each kept to 16 MiB
    assert eng._may_grow() == (fast.GROW_MAX_KEPT >= 4 * 16 * 2**20)
    eng._inflight = 5
    assert not eng._may_grow()
    eng._inflight, eng._avg_in, eng.kept_inflight = 1, 17.0, fast.GROW_MAX_KEPT + 1  # bytes already held
    assert not eng._may_grow()

"""The UbiOps runner against the UbiOps emulator, served by uvicorn on a free loopback port."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
import uvicorn

from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext
from bench.emulator.ubiops import UbiOpsEmulator
from bench.engine.base import EngineConfig, LoadSpec
from bench.engine.fast import FastEngine
from bench.recorder import Recorder
from bench.results import PreparedBody, RequestSet
from bench.targets.ubiops import UbiOpsConfig, encode_plain_direct, encode_structured
from bench.targets.ubiops_target import TARGET
from bench.ubiops_runner import UbiOpsStats, run_ubiops

TOKEN = "Token test-token-123"
ROW = {"tensor": [0.1 * i for i in range(29)]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(cond: Any, timeout: float = 10.0) -> None:
    """Poll ``cond`` (a plain or async callable) until it is true, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def serve(emulator: UbiOpsEmulator) -> AsyncIterator[str]:
    """Serve the ASGI app on 127.0.0.1:<free port>; yields the /v2.1 base URL."""
    config = uvicorn.Config(emulator, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        try:
            await _until(lambda: server.started)
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}/v2.1"
        finally:
            server.should_exit = True


def emulator(**kw: Any) -> UbiOpsEmulator:
    window_s = kw.pop("window_s", 60.0)
    base: dict[str, Any] = {"latency_ms": 1.0, "per_row_us": 0.0, "jitter": 0.0, "replicas": 8, "ubiops_token": TOKEN}
    base.update(kw)
    return UbiOpsEmulator(EmulatorContext.create(EmulatorConfig(**base)), window_s=window_s)


class Stop:
    def __init__(self) -> None:
        self.event = anyio.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()

    def set(self) -> None:
        self.event.set()


def closed(duration_s: float, concurrency: int = 2, max_requests: int = 0) -> LoadSpec:
    start = time.monotonic_ns()
    end = start + int(duration_s * 1e9) if duration_s else 2**62
    return LoadSpec(mode="closed", start_ns=start, end_ns=end, concurrency=concurrency,
                    max_requests=max_requests, drain_s=5.0)


def recorder() -> Recorder:
    now = time.monotonic_ns()
    return Recorder(now, now)


def cfg(url: str, **kw: Any) -> UbiOpsConfig:
    return UbiOpsConfig(project="demo", deployment="ccfraud", token=TOKEN.removeprefix("Token "),
                        base_url=url, **kw)


def hist_count(data: Any, metric: str) -> int:
    return sum(int(h.total) for k, h in data.histograms.items() if k.metric == metric)


async def run_direct(c: UbiOpsConfig, bodies: list[bytes], rec: Recorder, load: LoadSpec,
                     stop: Stop | None = None) -> tuple[Any, dict[str, Any]]:
    """Direct requests as the runner sends them: the target's request on the fast engine, with the target's
    engine hooks (headers hook, and with backoff the send gate); returns the engine and ``extra.ubiops``."""
    req = TARGET.request(None, "", c)  # type: ignore[arg-type]
    requests = RequestSet(url=req.url, method="POST", headers=req.headers,
                          bodies=[PreparedBody(b, 1) for b in bodies])
    config = EngineConfig(read_timeout_s=60.0)
    engine = FastEngine(config, requests, req.classify, rec)
    finish = TARGET.engine_hooks(c, engine, rec)
    assert finish is not None
    await engine.run(load, stop or Stop())
    rec.count("sent", engine.sent)
    rec.abandoned(engine.abandoned, time.monotonic_ns())
    return engine, dict(finish()["ubiops"])


def ok_and_errors(data: Any) -> tuple[int, dict[str, int]]:
    return data.totals["measured"].ok, data.errors_by_kind("measured")


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url + "/projects/demo/deployments/ccfraud",
                                 headers={"Authorization": TOKEN}) as c:
        yield c


async def listed(c: httpx.AsyncClient, status: str) -> list[Any]:
    out: list[Any] = (await c.get("/requests", params={"status": status, "limit": 100000})).json()
    return out


# --- direct -----------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_direct_closed_loop_records_every_request() -> None:
    async with serve(emulator()) as url:
        rec = recorder()
        engine, extra = await run_direct(cfg(url, timeout_s=30), [encode_structured([ROW], {})], rec,
                                         closed(0, 4, max_requests=200))
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert engine.sent == 200 and engine.abandoned == 0
    assert data.totals["measured"].requests == 200 and data.totals["measured"].ok == 200
    assert extra == {"mode": "direct", "on_rate_limit": "count", "rate_limited": 0}  # count mode: no budget


@pytest.mark.anyio
async def test_direct_failed_body_is_request_failed_with_message() -> None:
    async with serve(emulator(error_rate=1.0)) as url:
        rec = recorder()
        await run_direct(cfg(url, version="v1"), [encode_structured([ROW], {})], rec, closed(0, 2, max_requests=20))
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert ok_and_errors(data) == (0, {"request_failed:200": 20})  # HTTP 200, "status": "failed"
    assert any(s.kind == "request_failed" and "error_rate" in s.detail for s in data.error_samples)


@pytest.mark.anyio
async def test_direct_faulty_input_is_refused_as_http_error() -> None:
    """A wrong input field (a mapping mistake) is refused by the platform: counted as an HTTP error, not as a
    request that failed (it was never created)."""
    async with serve(emulator()) as url:
        rec = recorder()
        await run_direct(cfg(url), [orjson.dumps({"wrong": ROW["tensor"]})], rec, closed(0, 2, max_requests=10))
        data = rec.finish(time.monotonic_ns(), partial=False)
        async with client(url) as c:
            assert await listed(c, "failed") == [] and await listed(c, "completed") == []
    assert ok_and_errors(data) == (0, {"http_error:400": 10})
    assert any("Missing input field(s): tensor" in s.detail for s in data.error_samples)


@pytest.mark.anyio
async def test_direct_plain_open_loop() -> None:
    async with serve(emulator()) as url:
        rec = recorder()
        start = time.monotonic_ns()
        load = LoadSpec(mode="open", start_ns=start, end_ns=start + int(0.5e9),
                        offsets_ns=iter(range(0, 10**9, 10_000_000)), max_in_flight=16)
        c = UbiOpsConfig(project="demo", deployment="echo", token=TOKEN, base_url=url, input_type="plain")
        await run_direct(c, [encode_plain_direct([{"x": "hello"}], {"x": "in"})], rec, load)
        data = rec.finish(time.monotonic_ns(), partial=False)
    ok, errors = ok_and_errors(data)
    assert 40 <= ok <= 51 and errors == {}


# --- batch ------------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_batch_of_2000_accounts_for_every_request() -> None:
    item = encode_structured([ROW], {})
    async with serve(emulator()) as url:
        rec = recorder()
        stats = await run_ubiops(cfg(url, mode="batch", poll_interval_s=0.02, drain_timeout_s=30),
                                 [item] * 10, 1, rec, closed(0, 2, max_requests=2000), Stop())
        data = rec.finish(time.monotonic_ns(), partial=False)
        async with client(url) as c:
            assert await listed(c, "pending") == []
    assert stats.created == 2000 and stats.completed == 2000 and stats.abandoned == 0
    assert stats.invariant_ok and stats.sent == 8  # 8 create calls of 250
    assert data.counters["batch_created"] == 2000 and data.counters["status_completed"] == 2000
    assert data.counters["batch_invariant_broken"] == 0
    for metric in ("batch_e2e", "queue", "processing"):
        assert hist_count(data, metric) == 2000, metric
    assert data.totals["measured"].requests == 2000 and stats.poll_interval_mean_s > 0


@pytest.mark.anyio
async def test_batch_with_one_faulty_item_is_rejected_whole() -> None:
    """One item of a create call misses the input field: the platform denies the whole call, so every item of it
    is create_rejected (an HTTP error), none is created, and none is left to collect."""
    good, bad = encode_structured([ROW], {}), orjson.dumps({"wrong": ROW["tensor"]})
    async with serve(emulator()) as url:
        rec = recorder()
        stats = await run_ubiops(cfg(url, mode="batch", poll_interval_s=0.02, drain_timeout_s=5),
                                 [good, bad], 1, rec, closed(0, 1, max_requests=500), Stop())
        data = rec.finish(time.monotonic_ns(), partial=False)
        async with client(url) as c:
            for status in ("pending", "completed", "failed"):
                assert await listed(c, status) == []
    assert stats.created == 0 and stats.create_rejected == 500 and stats.invariant_ok
    assert ok_and_errors(data) == (0, {"http_error:400": 500})
    assert data.counters["create_rejected"] == 500
    assert any("missing input field(s): tensor" in s.detail for s in data.error_samples), data.error_samples


@pytest.mark.anyio
async def test_stop_mid_batch_cancels_everything_pending() -> None:
    """A stop and a cut drain (a second Ctrl-C): what is pending is abandoned and cancelled at once (a first stop
    alone drains: tests/integration/test_stop_signals.py)."""
    from dataclasses import replace

    item = encode_structured([ROW], {})
    emu = emulator(latency_ms=20.0, replicas=1)
    async with serve(emu) as url:
        rec = recorder()
        stop = Stop()
        result: list[UbiOpsStats] = []

        async def go() -> None:
            result.append(await run_ubiops(cfg(url, mode="batch", poll_interval_s=0.05), [item], 1, rec,
                                           replace(closed(0, 2), drain_cut=stop), stop))

        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            async with client(url) as c:
                async def enough() -> bool:
                    return len(await listed(c, "pending")) >= 50

                await _until(enough)
                stop.set()
        stats = result[0]
        async with client(url) as c:
            assert await listed(c, "pending") == []

            async def none_processing() -> bool:
                return await listed(c, "processing") == []

            await _until(none_processing)
            cancelled = await listed(c, "cancelled")
    assert stats.interrupted and stats.abandoned >= 50 and stats.invariant_ok
    assert len(cancelled) >= stats.abandoned - 1  # one may have been processing: it still ends cancelled
    assert stats.created == stats.completed + stats.failed + stats.cancelled + stats.abandoned


# --- rate limits ------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_rate_limit_count_mode_counts_429_and_records_headers() -> None:
    async with serve(emulator(rate_limit_per_min=15)) as url:
        rec = recorder()
        engine, extra = await run_direct(cfg(url), [encode_structured([ROW], {})], rec,
                                         closed(0, 2, max_requests=40))
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert engine.sent == 40 and ok_and_errors(data) == (15, {"rate_limited:429": 25})
    assert extra["rate_limited"] == 25 and data.counters["ratelimit_429"] == 25
    assert set(data.gauges) >= {"ratelimit_limit", "ratelimit_remaining", "ratelimit_reset_s"}
    assert 15.0 in data.gauges["ratelimit_limit"].values()


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
@pytest.mark.anyio
async def test_rate_limit_backoff_waits_for_the_reset() -> None:
    """Backoff on the fast engine: the send gate holds every slot once the window's remaining is spent, until
    the announced reset; so at most the first call of a window is refused, and every request is accounted."""
    window = 0.6
    async with serve(emulator(rate_limit_per_min=8, window_s=window)) as url:
        async with client(url) as c:  # spend the first window so the run starts with a 429
            while (await c.post("/requests", json=ROW)).status_code != 429:
                pass
        rec = recorder()
        t0 = time.monotonic()
        # the server's window is shortened to 0.6 s, which the budget (per minute) cannot know: the header gate alone
        engine, extra = await run_direct(cfg(url, on_rate_limit="backoff", calls_per_minute=0),
                                         [encode_structured([ROW], {})], rec, closed(0, 3, max_requests=30))
        elapsed = time.monotonic() - t0
        data = rec.finish(time.monotonic_ns(), partial=False)
    windows = int(elapsed / window) + 1
    ok, errors = ok_and_errors(data)
    assert engine.sent == 30 and engine.abandoned == 0
    assert ok + errors.get("rate_limited:429", 0) == 30 and set(errors) <= {"rate_limited:429"}
    assert 1 <= extra["rate_limited"] == errors["rate_limited:429"] <= windows  # at most the first 429 of a window
    assert ok >= 8 * 2  # it went on through at least two more windows
    assert extra["rate_limit_pauses"] >= 2 and data.counters["rate_limit_pauses"] == extra["rate_limit_pauses"]
    assert hist_count(data, "rate_limit_pause") == extra["rate_limit_pauses"]
    assert extra["budget"]["budget_direct_calls"] == 30  # every send went through the gate once


@pytest.mark.anyio
async def test_rate_limit_backoff_open_loop_holds_sends_in_order_and_drops_what_never_fit() -> None:
    """Open loop at 100 req/s against 5 calls a 0.5 s window: held sends leave late (latency from their intended
    time), at most max_in_flight wait, and what is still held at the end is dropped, never sent."""
    async with serve(emulator(rate_limit_per_min=5, window_s=0.5)) as url:
        rec = recorder()
        start = time.monotonic_ns() + 20_000_000
        load = LoadSpec(mode="open", start_ns=start, end_ns=start + int(1.6e9),
                        offsets_ns=iter(range(0, 10**10, 10_000_000)), max_in_flight=20, drain_s=5.0)
        engine, extra = await run_direct(cfg(url, on_rate_limit="backoff", calls_per_minute=0),
                                         [encode_structured([ROW], {})], rec, load)
        data = rec.finish(time.monotonic_ns(), partial=False)
    ok, errors = ok_and_errors(data)
    tot = data.totals["measured"]
    assert engine.sent == tot.requests == ok + sum(errors.values()) and engine.abandoned == 0
    assert set(errors) <= {"rate_limited:429"} and errors.get("rate_limited:429", 0) <= 4  # one per window
    assert 5 <= ok <= 5 * 4  # each window (about 4 in 1.6 s) let at most its 5 through
    assert tot.dropped + engine.sent >= 150  # the schedule's ~160 sends: each one sent or dropped
    assert extra["budget"]["budget_direct_calls"] == engine.sent


@pytest.mark.anyio
async def test_batch_under_rate_limit_backoff_still_accounts() -> None:
    item = encode_structured([ROW], {})
    async with serve(emulator(rate_limit_per_min=6, window_s=0.5)) as url:
        rec = recorder()
        stats = await run_ubiops(cfg(url, mode="batch", batch_size=50, poll_interval_s=0.05,
                                     on_rate_limit="backoff", drain_timeout_s=20, calls_per_minute=0),
                                 [item], 1, rec, closed(0, 1, max_requests=300), Stop())
    assert stats.created == 300 and stats.completed == 300 and stats.invariant_ok


# --- emulator routes --------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_emulator_routes_auth_limits_and_unordered_collect() -> None:
    async with serve(emulator(latency_ms=0.0)) as base:
        async with httpx.AsyncClient(base_url=base) as raw:
            no = await raw.post("/projects/demo/deployments/ccfraud/requests", json=ROW)
            assert no.status_code == 401 and "error" in no.json()
            wrong = await raw.post("/projects/demo/deployments/ccfraud/requests", json=ROW,
                                   headers={"Authorization": "Token nope"})
            assert wrong.status_code == 401
        v2 = base.removesuffix("/v2.1") + "/v2"
        async with client(v2) as c:
            d = (await c.post("/versions/v1/requests", json=ROW, params={"timeout": 10})).json()
            assert d["status"] == "completed" and len(d["result"]["dense_1"]) == 1
            assert (await c.post("/requests", json=ROW, params={"timeout": 5})).status_code == 400
            assert (await c.post("/versions/v9/requests", json=ROW)).status_code == 404
            too_many = await c.post("/requests/batch", json=[ROW] * 251)
            assert too_many.status_code == 400 and "error" in too_many.json()
            assert (await c.post("/requests/batch", json=[ROW, "not-an-object"])).status_code == 400
            created = (await c.post("/requests/batch", json=[ROW] * 40)).json()
            assert {x["status"] for x in created} == {"pending"} and "+00:00" in created[0]["time_created"]
            ids = [x["id"] for x in created]

            async def all_done() -> bool:
                got = (await c.post("/requests/collect", json=ids)).json()
                return all(x["status"] == "completed" for x in got)

            await _until(all_done)
            got = (await c.post("/requests/collect", json=ids)).json()
            assert sorted(x["id"] for x in got) == sorted(ids) and [x["id"] for x in got] != ids
            one = (await c.get(f"/requests/{ids[0]}", params={"metadata_only": "true"})).json()
            assert "result" not in one and one["origin"] and one["time_completed"]
            assert len((await c.get("/requests", params={"limit": 5, "offset": 2})).json()) == 5
            assert (await c.post("/requests/collect", json=[*ids, "missing"])).status_code == 404
            assert (await c.post("/requests/delete", json=ids[:2])).json() == {"deleted": 2}
            assert (await c.get(f"/requests/{ids[0]}")).status_code == 404
            assert (await c.patch(f"/requests/{ids[2]}", json={"status": "done"})).status_code == 400
            assert (await c.patch(f"/requests/{ids[2]}", json={"status": "cancelled"})).status_code == 200
            assert (await c.post("/requests/cancel", json=ids[3:5])).status_code == 200
        async with httpx.AsyncClient(base_url=base + "/projects/demo/deployments/echo",
                                     headers={"Authorization": TOKEN}) as e:
            assert (await e.post("/requests", json="hi")).json()["result"] == "hi"
            assert (await e.post("/requests/batch", json=[{"a": 1}])).status_code == 400

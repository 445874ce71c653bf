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
from bench.engine.base import LoadSpec
from bench.recorder import Recorder
from bench.targets.ubiops import UbiOpsConfig, encode_plain, encode_structured
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
        stats = await run_ubiops(cfg(url, timeout_s=30), [encode_structured([ROW], {})], 1, rec,
                                 closed(0, 4, max_requests=200), Stop())
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert stats.completed == 200 and stats.sent == 200 and stats.failed == 0
    assert data.totals["measured"].requests == 200
    assert data.totals["measured"].errors == 0


@pytest.mark.anyio
async def test_direct_failed_body_is_request_failed_with_message() -> None:
    bad = orjson.dumps({"wrong": 1})
    async with serve(emulator()) as url:
        rec = recorder()
        stats = await run_ubiops(cfg(url, version="v1"), [bad], 1, rec, closed(0, 2, max_requests=20), Stop())
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert stats.failed == 20 and stats.completed == 0
    assert stats.error_messages == ["Missing input field(s): tensor"]
    assert any(s.kind == "request_failed" and "tensor" in s.detail for s in data.error_samples)


@pytest.mark.anyio
async def test_direct_plain_open_loop() -> None:
    async with serve(emulator()) as url:
        rec = recorder()
        start = time.monotonic_ns()
        load = LoadSpec(mode="open", start_ns=start, end_ns=start + int(0.5e9),
                        offsets_ns=iter(range(0, 10**9, 10_000_000)), max_in_flight=16)
        c = UbiOpsConfig(project="demo", deployment="echo", token=TOKEN, base_url=url, input_type="plain")
        stats = await run_ubiops(c, [encode_plain([{"x": "hello"}], {"x": "in"})], 1, rec, load, Stop())
    assert 40 <= stats.completed <= 51 and stats.failed == 0


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
async def test_stop_mid_batch_cancels_everything_pending() -> None:
    item = encode_structured([ROW], {})
    emu = emulator(latency_ms=20.0, replicas=1)
    async with serve(emu) as url:
        rec = recorder()
        stop = Stop()
        result: list[UbiOpsStats] = []

        async def go() -> None:
            result.append(await run_ubiops(cfg(url, mode="batch", poll_interval_s=0.05), [item], 1, rec,
                                           closed(0, 2), stop))

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
        stats = await run_ubiops(cfg(url), [encode_structured([ROW], {})], 1, rec,
                                 closed(0, 2, max_requests=40), Stop())
        data = rec.finish(time.monotonic_ns(), partial=False)
    assert stats.completed == 15 and stats.rate_limited == 25
    assert sum(e.count for e in data.errors if e.kind == "rate_limited") == 25
    assert set(data.gauges) >= {"ratelimit_limit", "ratelimit_remaining", "ratelimit_reset_s"}
    assert 15.0 in data.gauges["ratelimit_limit"].values()


@pytest.mark.anyio
async def test_rate_limit_backoff_waits_for_the_reset() -> None:
    window = 0.6
    async with serve(emulator(rate_limit_per_min=8, window_s=window)) as url:
        async with client(url) as c:  # spend the first window so the run starts with a 429
            while (await c.post("/requests", json=ROW)).status_code != 429:
                pass
        rec = recorder()
        t0 = time.monotonic()
        # the server's window is shortened to 0.6 s, which the budget (per minute) cannot know: the header gate alone
        stats = await run_ubiops(cfg(url, on_rate_limit="backoff", calls_per_minute=0),
                                 [encode_structured([ROW], {})], 1, rec,
                                 closed(0, 3, max_requests=30), Stop())
        elapsed = time.monotonic() - t0
        data = rec.finish(time.monotonic_ns(), partial=False)
    windows = int(elapsed / window) + 1
    assert stats.sent == 30 and stats.completed + stats.rate_limited == 30
    assert 1 <= stats.rate_limited <= windows  # at most the first 429 of each window
    assert stats.rate_limit_pauses >= 2 and data.counters["rate_limit_pauses"] == stats.rate_limit_pauses
    assert hist_count(data, "rate_limit_pause") == stats.rate_limit_pauses


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

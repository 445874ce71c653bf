"""The core of `bench run`: scenario × payload × schedule × engine × target × recorder → report.

``prepare`` does everything that can fail on bad input (data, bodies, target config) before any load starts, so
input errors exit 2 without touching the target. ``execute`` applies the load and returns a finished Report.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from bench.engine.base import Classifier, EngineConfig, LoadSpec, PreparedBody, RequestSet
from bench.errors import InputError
from bench.payload import PayloadFormat
from bench.scenario import Scenario

__all__ = ["Prepared", "RunControl", "execute", "load_spec", "offsets_for", "prepare"]


@dataclass
class Prepared:
    """Validated, pre-encoded inputs of a run (no sockets opened yet)."""

    scenario: Scenario
    bodies: list[PreparedBody]
    emulator_config: Any = None  # EmulatorConfig when target.url == "embedded"
    auth_config: Any = None  # bench.auth.AuthConfig or None
    preflight_config: Any = None  # bench.preflight.PreflightConfig or None
    ubiops_config: Any = None  # bench.targets.ubiops.UbiOpsConfig for kind = "ubiops"
    slo: Any = None  # bench.report.slo objectives or None


TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
EMBEDDED_PLACEHOLDER = "http://embedded.invalid"


class _Counts:
    """Counter calls made before the recorder exists (the first token fetch) are kept and replayed."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, int]] = []
        self._recorder: Any = None

    def count(self, name: str, n: int = 1) -> None:
        if self._recorder is None:
            self._pending.append((name, n))
        else:
            self._recorder.count(name, n)

    def attach(self, recorder: Any) -> None:
        self._recorder = recorder
        for name, n in self._pending:
            recorder.count(name, n)
        self._pending.clear()


@dataclass
class RunControl:
    """How the runner talks to its surroundings: progress output, interruption, options."""

    progress: Callable[[Any], None] | None = None  # called ~2×/s with the recorder's progress snapshot
    message: Callable[[str], None] = lambda _m: None  # one-line status messages (preflight, emulator)
    raw_path: Path | None = None
    preflight: bool = True
    interrupted: bool = False
    slo_aborted: str | None = None
    token_source: Any = None  # set while a run holds credentials: its secrets() scrub messages
    on_recorder: Callable[[Any], None] | None = None  # called once with the run's Recorder (live streaming)

    def secrets(self) -> list[str]:
        return list(self.token_source.secrets()) if self.token_source is not None else []


def prepare(sc: Scenario) -> Prepared:
    """Read data and encode every request body once; validate the sections owned by other modules."""
    prepared = Prepared(scenario=sc, bodies=_bodies(sc))
    if sc.target.embedded:
        from bench.emulator.embedded import emulator_config_from_mapping

        prepared.emulator_config = emulator_config_from_mapping(sc.tables["emulator"], sc.file)
    if sc.tables["auth"]:
        from bench.auth import auth_config_from_mapping, emulator_credentials

        prepared.auth_config = auth_config_from_mapping(sc.tables["auth"], sc.file)
        if prepared.emulator_config is not None and prepared.auth_config.uses_keycloak:
            # the embedded emulator must accept the scenario's credentials (they reach it on stdin, not argv)
            prepared.emulator_config = replace(prepared.emulator_config,
                                               **emulator_credentials(prepared.auth_config, file=sc.file))
    if sc.tables["wallaroo"]:
        from bench.preflight import preflight_config_from_mapping

        table = dict(sc.tables["wallaroo"])
        if table.get("api_url") == "embedded":  # the embedded emulator's MLOps API, known once it runs
            if not sc.target.embedded:
                raise InputError("'embedded' needs target.url = 'embedded'", file=sc.file, key="wallaroo.api_url")
            table["api_url"] = EMBEDDED_PLACEHOLDER
        prepared.preflight_config = preflight_config_from_mapping(table, sc.file)
    if sc.target.kind == "ubiops":
        from bench.targets.ubiops import ubiops_config_from_mapping

        prepared.ubiops_config = ubiops_config_from_mapping(sc.target.raw, sc.file)
    if sc.tables["slo"]:
        with contextlib.suppress(ModuleNotFoundError):
            from bench.report.slo import slo_from_mapping

            prepared.slo = slo_from_mapping(sc.tables["slo"], sc.file)
    return prepared


def _bodies(sc: Scenario) -> list[PreparedBody]:
    data = sc.data
    if sc.target.kind == "http":
        assert data.body is not None
        return [PreparedBody(body=data.body.read_bytes(), rows=1)]
    from bench.data import generate_ccfraud, read_dataset

    if data.path is not None:
        table = read_dataset(data.path, data.column)
    else:
        table = generate_ccfraud(data.generate_rows, data.seed)
    if sc.target.kind == "ubiops":
        from bench.targets.ubiops import build_ubiops_bodies, ubiops_config_from_mapping

        cfg = ubiops_config_from_mapping(sc.target.raw, sc.file)
        return list(build_ubiops_bodies(cfg, table, data.rows_per_request))
    from bench.payload import build_bodies

    fmt: PayloadFormat = "arrow" if sc.target.format == "arrow" else "pandas-records"
    return build_bodies(table, data.rows_per_request, fmt)


def request_set(sc: Scenario, url: str, bodies: list[PreparedBody], authorization: str | None) -> tuple[
        RequestSet, Classifier]:
    """The wire form of a Wallaroo or plain-HTTP target."""
    headers: dict[str, str] = {}
    if sc.target.kind == "wallaroo":
        from bench.targets import wallaroo

        fmt: PayloadFormat = "arrow" if sc.target.format == "arrow" else "pandas-records"
        headers.update(wallaroo.request_headers(fmt))
        if sc.target.dataset_params:
            url = wallaroo.with_dataset_params(url)
        classify = wallaroo.make_classifier(fmt)
    else:
        from bench.targets import http

        headers["Content-Type"] = "application/octet-stream"
        classify = http.make_classifier()
    headers.update(sc.target.headers)
    if authorization:
        headers["Authorization"] = authorization
    return RequestSet(url=url, method=sc.target.method, headers=headers, bodies=bodies), classify


def offsets_for(sc: Scenario, rate_share: float = 1.0) -> Iterator[int] | None:
    """Open-loop intended send offsets (ns from start, warm-up included); None for closed loop."""
    from bench import schedule

    load = sc.load
    if load.mode == "closed":
        return None
    if load.stages:
        stages = [(d, r * rate_share) for d, r in load.stages]
        if load.warmup_s > 0:
            stages.insert(0, (load.warmup_s, stages[0][1]))
        return schedule.ramp_offsets(stages)
    rate = load.rate * rate_share
    if load.arrival == "poisson":
        return schedule.poisson_offsets(rate, load.seed)
    return schedule.constant_offsets(rate)


def _split(total: int, worker: tuple[int, int]) -> int:
    """Worker i of n gets an even share of an integer total (the first ones take the remainder)."""
    i, n = worker
    return total // n + (1 if i < total % n else 0)


def load_spec(sc: Scenario, start_ns: int, *, worker: tuple[int, int] = (0, 1)) -> LoadSpec:
    """The engine's LoadSpec; with ``worker=(i, n)`` this process's share of an n-process run."""
    load = sc.load
    share = 1.0 / worker[1]
    end_ns = start_ns + int((load.warmup_s + load.duration_s) * 1e9) if load.duration_s > 0 else 2**62
    max_requests = _split(load.requests, worker) if load.requests else 0
    if load.mode == "closed":
        return LoadSpec(mode="closed", start_ns=start_ns, end_ns=end_ns,
                        concurrency=max(1, _split(load.concurrency, worker)),
                        max_requests=max_requests, drain_s=load.drain_s)
    peak = max([load.rate] + [r for _, r in load.stages]) * share
    max_in_flight = _split(load.max_in_flight, worker) if load.max_in_flight else max(64, min(4096, math.ceil(peak)))
    seed_sc = sc if worker[0] == 0 else _reseeded(sc, worker[0])
    return LoadSpec(mode="open", start_ns=start_ns, end_ns=end_ns, offsets_ns=offsets_for(seed_sc, share),
                    max_in_flight=max(1, max_in_flight), max_requests=max_requests, drain_s=load.drain_s)


def _reseeded(sc: Scenario, offset: int) -> Scenario:
    from dataclasses import replace

    return replace(sc, load=replace(sc.load, seed=sc.load.seed + offset))


def engine_config(sc: Scenario) -> EngineConfig:
    e = sc.engine
    return EngineConfig(kind=e.kind, http2=e.http2, connections=e.connections,  # type: ignore[arg-type]
                        connect_timeout_s=e.connect_timeout_s, read_timeout_s=e.timeout_s,
                        verify_tls=not e.insecure, ca_bundle=e.ca_bundle, loop=e.loop)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _target_url(prepared: Prepared, ctl: RunControl) -> AsyncIterator[tuple[str, Any]]:
    """Yields (url, emulator or None): starts the embedded emulator for url = 'embedded'."""
    sc = prepared.scenario
    if not sc.target.embedded:
        yield sc.target.url, None
        return
    from bench.emulator.embedded import EmbeddedEmulator

    async with EmbeddedEmulator(prepared.emulator_config) as emu:
        ctl.message(f"embedded emulator at {emu.base_url}")
        url = emu.base_url if sc.target.kind == "ubiops" else emu.wallaroo_url
        yield url, emu


def _static_token(sc: Scenario) -> str | None:
    name = sc.target.token_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise InputError(f"environment variable {name} is not set", file=sc.file, key="target.token_env")
    return value if value.lower().startswith(("bearer ", "token ")) else f"Bearer {value}"


async def execute(prepared: Prepared, ctl: RunControl, *, start_at_wall: float | None = None,
                  worker: tuple[int, int] = (0, 1)) -> tuple[Any, dict[str, Any]]:
    """Run the load; returns the recorder's finished RunData and the run's facts (url, CPU share, ...)."""
    from bench.recorder import Recorder

    sc = prepared.scenario
    stop = anyio.Event()
    counts = _Counts()
    facts: dict[str, Any] = {}
    if not sc.target.embedded and sc.tables["emulator"]:
        ctl.message(f"{sc.file}: [emulator] ignored: target.url is not 'embedded'")
    async with _target_url(prepared, ctl) as (url, emu), anyio.create_task_group() as tg:
        token_source = await _token_source(prepared, ctl, emu, counts, tg)
        static = _static_token(sc)

        def authorization() -> str:
            return token_source.authorization() if token_source is not None else (static or "")

        url = await _preflight(prepared, ctl, emu, url, authorization)
        start_ns = time.monotonic_ns() + 20_000_000  # 20 ms to open connections before the first send
        if start_at_wall is not None:  # the agreed wall-clock instant in this host's monotonic time, exactly
            await anyio.sleep(max(0.0, start_at_wall - time.time() - 0.005))  # (a timer's wake-up jitters)
            start_ns = time.monotonic_ns() + int((start_at_wall - time.time()) * 1e9) + 20_000_000
        recorder = Recorder(start_ns, start_ns + int(sc.load.warmup_s * 1e9), raw_path=ctl.raw_path)
        counts.attach(recorder)
        if ctl.on_recorder is not None:
            ctl.on_recorder(recorder)
        spec = load_spec(sc, start_ns, worker=worker)

        with _signals(ctl, stop):
            grace_s = spec.drain_s + 1.0
            if prepared.ubiops_config is not None:
                grace_s = max(grace_s, prepared.ubiops_config.drain_timeout_s + 5.0)
            abort = _SloAbort(prepared.slo, sc) if prepared.slo is not None and prepared.slo.abort_on_fail else None
            tg.start_soon(_watch, recorder, ctl, stop, spec, token_source, grace_s, abort)
            cpu0, wall0 = time.process_time(), time.monotonic()
            facts.update(await _apply_load(prepared, url, emu, authorization(), token_source, recorder, spec, stop))
            facts["cpu_fraction"] = (time.process_time() - cpu0) / max(1e-9, time.monotonic() - wall0)
            stop.set()
        end_ns = min(time.monotonic_ns(), spec.end_ns)  # throughput over the planned window, not the drain
        if token_source is not None:
            await token_source.close()
        tg.cancel_scope.cancel()
    facts["url"] = url if not sc.target.embedded else "embedded"
    facts["interrupted"] = ctl.interrupted
    if ctl.slo_aborted:
        facts["slo_aborted"] = ctl.slo_aborted
    return recorder.finish(end_ns, partial=ctl.interrupted), facts


async def _token_source(prepared: Prepared, ctl: RunControl, emu: Any, counts: _Counts, tg: Any) -> Any:
    """Fetch the first token before any load (a refused credential is RunInvalid); None without [auth]."""
    if prepared.auth_config is None:
        return None
    from bench.auth import TokenSource

    token_url = f"{emu.base_url}{TOKEN_PATH}" if emu is not None else None
    source = TokenSource(prepared.auth_config, count=counts.count, file=prepared.scenario.file,
                         default_token_url=token_url)
    ctl.token_source = source
    await source.start(tg)
    return source


async def _preflight(prepared: Prepared, ctl: RunControl, emu: Any, url: str,
                     authorization: Callable[[], str]) -> str:
    """Wait for the Wallaroo deployment to be Running (when [wallaroo] asks); returns the URL to load."""
    preflight = prepared.preflight_config
    if preflight is None or not preflight.enabled or not ctl.preflight:
        return url
    from bench.preflight import run_preflight

    if emu is not None and preflight.api_url == EMBEDDED_PLACEHOLDER:
        preflight = replace(preflight, api_url=emu.base_url)
    resolved = await run_preflight(preflight, authorization, progress=ctl.message, target_url=url)
    return resolved or url


async def _apply_load(prepared: Prepared, url: str, emu: Any, authorization: str, token_source: Any,
                      recorder: Any, spec: LoadSpec, stop: anyio.Event) -> dict[str, Any]:
    """The data plane: the UbiOps runner, or an engine for Wallaroo / plain HTTP. Returns facts for the report."""
    sc = prepared.scenario
    if sc.target.kind == "ubiops":
        from bench.ubiops_runner import run_ubiops

        cfg = prepared.ubiops_config
        if emu is not None:
            cfg = cfg.with_endpoint(url, prepared.emulator_config.ubiops_token)
        stats = await run_ubiops(cfg, [b.body for b in prepared.bodies], [b.rows for b in prepared.bodies],
                                 recorder, spec, stop)
        return {"ubiops": stats.to_dict()}
    from bench.engine.select import choose_engine

    requests, classify = request_set(sc, url, prepared.bodies, authorization)
    cfg_e = engine_config(sc)
    engine_class = choose_engine(cfg_e, url)
    engine = engine_class(cfg_e, requests, classify, recorder)
    if token_source is not None:
        token_source.on_change(lambda value: engine.set_headers({"Authorization": value}))
    await engine.run(spec, stop)
    return {"abandoned": engine.abandoned, "engine": engine_class.__name__}


class _SloAbort:
    """`[slo] abort_on_fail`: stop early once an objective can no longer be met (judged by bench.report.slo)."""

    def __init__(self, objectives: Any, sc: Scenario) -> None:
        self.objectives = objectives
        self.warmup_s = sc.load.warmup_s
        self.end_s = sc.load.warmup_s + sc.load.duration_s
        self.open_rate = max([sc.load.rate] + [r for _, r in sc.load.stages]) if sc.load.mode == "open" else 0.0
        self.at_warmup: Any = None
        self.best_rps = 0.0

    def check(self, snapshot: Any) -> str | None:
        from bench.report.slo import hopeless

        if self.at_warmup is None and snapshot.elapsed_s >= self.warmup_s:
            self.at_warmup = snapshot
        self.best_rps = max(self.best_rps, snapshot.rps)
        max_rps = 1.1 * self.open_rate if self.open_rate else 2.0 * self.best_rps
        return hopeless(self.objectives, snapshot, measured_from=self.at_warmup, end_s=self.end_s,
                        max_rps=max_rps)


async def _watch(recorder: Any, ctl: RunControl, stop: anyio.Event, spec: LoadSpec, token_source: Any,
                 grace_s: float, abort: _SloAbort | None) -> None:
    """Progress ~2×/s; a 401 seen mid-run triggers one immediate token refresh; an SLO that can no longer be
    met stops the run (abort_on_fail); stops at the deadline."""
    seen_401 = 0
    while not stop.is_set():
        with anyio.move_on_after(0.5):
            await stop.wait()
        snapshot = recorder.progress()
        if ctl.progress is not None:
            ctl.progress(snapshot)
        if abort is not None and not stop.is_set():
            reason = abort.check(snapshot)
            if reason:
                ctl.message(f"stopping early, SLO cannot be met: {reason}")
                ctl.slo_aborted = reason
                stop.set()
        if token_source is not None:
            n = recorder.status_count(401)
            if n > seen_401:
                seen_401 = n
                recorder.count("unauthorized_seen")
                token_source.refresh_now()
        if time.monotonic_ns() >= spec.end_ns + int(grace_s * 1e9):
            stop.set()  # a safety net: engines stop themselves at end_ns


@contextlib.contextmanager
def _signals(ctl: RunControl, stop: anyio.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM stop the load gracefully; the report is still written (marked partial)."""
    import asyncio

    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if ctl.interrupted:  # second signal: give up on draining
            raise KeyboardInterrupt
        ctl.interrupted = True
        ctl.message("interrupted: stopping and writing a partial report (Ctrl-C again to abort)")
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, interrupt)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)



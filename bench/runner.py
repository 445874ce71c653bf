"""The core of every run: scenario × payload × schedule × engine × target × recorder → run data.

``execute`` applies the load to a prepared (bench.prepared), resolved target and returns the recorder's RunData
and the run's facts. It knows no emulator: bench.session resolves the target first.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from bench.engine.base import Classifier, EngineConfig, LoadSpec, PreparedBody, RequestBuildError, RequestSet
from bench.errors import InputError, RunInvalid
from bench.facts import RunFacts
from bench.prepared import EMBEDDED_PLACEHOLDER, Endpoints, Prepared, point_at, prepare
from bench.rundata import RunData
from bench.scenario import LoadConfig, Scenario
from bench.targets import target_for

__all__ = ["EMBEDDED_PLACEHOLDER", "Endpoints", "Prepared", "RunControl", "execute", "fd_limit_short", "load_spec",
           "offsets_for", "point_at", "preflight_url", "prepare", "scenario_headers"]


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
    checkpoint_path: Path | None = None  # append the measurements here once a second (bench.checkpoint)
    checkpoint_tag: dict[str, Any] | None = None  # added to the checkpoint's header (a --processes worker's run id)
    preflight: bool = True
    interrupted: bool = False
    slo_aborted: str | None = None
    token_source: Any = None  # set while a run holds credentials: its secrets() scrub messages
    on_recorder: Callable[[Any], None] | None = None  # called once with the run's Recorder (live streaming)
    mlops_token_source: Any = None  # the MLOps user's token (Wallaroo preflight), when it is a separate one

    def secrets(self) -> list[str]:
        return [s for src in (self.token_source, self.mlops_token_source) if src is not None for s in src.secrets()]


def request_set(sc: Scenario, url: str, bodies: Sequence[PreparedBody], authorization: str | None,
                config: Any = None) -> tuple[RequestSet, Classifier]:
    """The wire form of an engine-driven target: its headers, the scenario's, and the Authorization value."""
    req = target_for(sc.target.kind).request(sc.target, url, config)
    headers = {**req.headers, **scenario_headers(sc, authorization)}
    return (RequestSet(url=req.url, method=sc.target.method, headers=headers, bodies=bodies,
                       answer_bytes=req.answer_bytes), req.classify)


def scenario_headers(sc: Scenario, authorization: str | None) -> dict[str, str]:
    """The headers every request carries beyond the target's own: ``[target] headers``, the secret ``headers_env``
    values and the Authorization value. A target's preflight sends them too: a gateway checks it like any request."""
    headers = dict(sc.target.headers)
    if sc.target.headers_env:  # secret header values, read from the environment at run time
        from bench.secrets import header_env_values

        headers.update(header_env_values(sc.target.headers_env, file=sc.file))
    if authorization:
        headers["Authorization"] = authorization
    return headers


def offsets_for(sc: Scenario, worker: tuple[int, int] = (0, 1)) -> Iterator[int] | None:
    """Open-loop intended send offsets (ns from start, warm-up included); None for closed loop. Worker ``(i, n)``
    of a split run takes sends i, i + n, … of the whole schedule (constant rate and ramps), so the n processes
    together send exactly the one-process schedule — never n sends at once, nor one each when the rate is low.
    Poisson arrivals are drawn per worker at rate / n (reseeded): independent Poisson streams add up to one."""
    from bench import schedule

    load = sc.load
    i, n = worker
    if load.mode == "closed":
        return None
    if load.stages:
        stages = list(load.stages)
        if load.warmup_s > 0:
            stages.insert(0, (load.warmup_s, stages[0][1]))
        return schedule.ramp_offsets(stages, first=i, step=n)
    if load.arrival == "poisson":
        return schedule.poisson_offsets(load.rate / n, load.seed)
    return schedule.constant_offsets(load.rate, first=i, step=n)


def _split(total: int, worker: tuple[int, int]) -> int:
    """Worker i of n gets an even share of an integer total (the first ones take the remainder). Never 0: the
    load's own reader and `--processes` refuse more processes than it splits into (bench.scenario.split_limit),
    as 0 means "no limit" for requests and would be no clients at all."""
    i, n = worker
    share = total // n + (1 if i < total % n else 0)
    if share < 1:
        raise ValueError(f"{total} cannot be split across {n} processes")
    return share


def default_max_in_flight(load: LoadConfig, worker: tuple[int, int] = (0, 1)) -> int:
    """Worker i of n's share of the single-host default cap, max(64, min(4096, peak rate)): the shares add up to
    it (at least one slot each), as an explicit load.max_in_flight's do, so n processes or Locust workers hold
    no more requests open against a slow target, and drop no fewer, than one host would."""
    i, n = worker
    whole: int = max(64, min(4096, math.ceil(max([load.rate] + [r for _, r in load.stages]))))
    return max(1, whole // n + (1 if i < whole % n else 0))


def load_spec(sc: Scenario, start_ns: int, *, worker: tuple[int, int] = (0, 1)) -> LoadSpec:
    """The engine's LoadSpec; with ``worker=(i, n)`` this process's share of an n-process run."""
    load = sc.load
    end_ns = start_ns + int((load.warmup_s + load.duration_s) * 1e9) if load.duration_s > 0 else 2**62
    max_requests = _split(load.requests, worker) if load.requests else 0
    if load.mode == "closed":
        return LoadSpec(mode="closed", start_ns=start_ns, end_ns=end_ns, concurrency=_split(load.concurrency, worker),
                        max_requests=max_requests, drain_s=load.drain_s)
    max_in_flight = _split(load.max_in_flight, worker) if load.max_in_flight else default_max_in_flight(load, worker)
    seed_sc = sc if worker[0] == 0 else _reseeded(sc, worker[0])
    return LoadSpec(mode="open", start_ns=start_ns, end_ns=end_ns, offsets_ns=offsets_for(seed_sc, worker),
                    max_in_flight=max_in_flight, max_requests=max_requests, drain_s=load.drain_s)


_FD_MARGIN = 64  # descriptors a run needs besides its connections (loop, pacer, logs, report, libraries)


def fd_limit_short(need: int) -> int | None:
    """Make room for ``need`` sockets (raising the soft open-file limit up to the hard one); the hard limit when
    even that is too low, else None. Shared by `bench run` and `bench calibrate`."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + _FD_MARGIN
    if soft == resource.RLIM_INFINITY or want <= soft:
        return None
    if hard == resource.RLIM_INFINITY or want <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return None
    return int(hard)


def ensure_sockets(sc: Scenario, spec: LoadSpec) -> None:
    """Refuse a load this process cannot open sockets for, before any is opened (raising the soft open-file limit
    up to the hard one first): past the limit every connect fails slowly and the run overruns its duration
    several times over instead of measuring anything."""
    http1 = not sc.engine.http2
    if spec.mode == "closed":
        need = spec.concurrency if http1 else max(1, sc.engine.connections or 1)
        key, asked = "load.concurrency", sc.load.concurrency
    else:
        need = spec.max_in_flight if http1 else max(1, sc.engine.connections or 1)
        key, asked = "load.max_in_flight", sc.load.max_in_flight or need
    if sc.engine.connections and http1:
        need = min(need, sc.engine.connections)
    hard = fd_limit_short(need)
    if hard is None:
        return
    raise InputError(f"{asked:,} needs {need:,} connections in this process but the open-file limit is {hard:,} "
                     f"(ulimit -n); lower it or spread the load with --processes", file=sc.file, key=key)


def _reseeded(sc: Scenario, offset: int) -> Scenario:
    return replace(sc, load=replace(sc.load, seed=sc.load.seed + offset))


def engine_config(sc: Scenario, target_config: Any = None) -> EngineConfig:
    e = sc.engine
    read_timeout_s = max(e.timeout_s, target_for(sc.target.kind).read_timeout_s(target_config) or 0.0)
    return EngineConfig(kind=e.kind, http2=e.http2, connections=e.connections,  # type: ignore[arg-type]
                        connect_timeout_s=e.connect_timeout_s, read_timeout_s=read_timeout_s,
                        verify_tls=not e.insecure, ca_bundle=e.ca_bundle, loop=e.loop,  # type: ignore[arg-type]
                        pacing=e.pacing)  # type: ignore[arg-type]


def _static_token(sc: Scenario) -> str | None:
    name = sc.target.token_env
    if not name:
        return None
    from bench.secrets import env_header_value

    value = env_header_value(name, os.environ, file=sc.file, key="target.token_env")
    return value if value.lower().startswith(("bearer ", "token ")) else f"Bearer {value}"


StartGate = Callable[[], Awaitable[float | None]]
"""One share of a run waits on this, once ready to send (token fetched, deployment checked), for the wall-clock
instant every share starts at; None: the run was called off before it started (``--processes``: bench.workers)."""


async def _common_start(start: float | StartGate, stop: anyio.Event) -> float | None:
    """The agreed start instant: fixed, or what the gate says once every share is ready; a stop while waiting (or a
    gate that calls the run off) sets ``stop`` and gives None."""
    if isinstance(start, (int, float)):
        return float(start)
    at: list[float | None] = [None]
    async with anyio.create_task_group() as tg:
        async def ask() -> None:
            at[0] = await start()
            tg.cancel_scope.cancel()

        async def stopped() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(ask)
        tg.start_soon(stopped)
    if at[0] is None:
        stop.set()
    return at[0]


async def execute(prepared: Prepared, ctl: RunControl, *, start_at_wall: float | StartGate | None = None,
                  worker: tuple[int, int] = (0, 1)) -> tuple[RunData, RunFacts]:
    """Run the load; returns the recorder's finished RunData and the run's facts (url, CPU share, ...).
    ``start_at_wall``: one share of a run that starts every share at one wall-clock instant (a fixed one, or a
    ``StartGate``)."""
    from bench.recorder import Recorder

    sc = prepared.scenario
    stop = anyio.Event()
    cut = anyio.Event()  # a second Ctrl-C: the drain ends now
    counts = _Counts()
    facts = RunFacts()
    if sc.target.embedded:
        raise RuntimeError("target.url is 'embedded': resolve it first (bench.session.resolved_target)")
    url = sc.target.url
    static = _static_token(sc)  # bad input is refused before any request (token endpoint, preflight, load)
    if sc.target.headers_env:
        from bench.secrets import header_env_values

        header_env_values(sc.target.headers_env, file=sc.file)
    sources: list[Any] = []  # token sources to release, on every path
    checkpoint = None
    recorder: Recorder | None = None
    try:
        async with anyio.create_task_group() as tg:
            token_source = await _token_source(prepared, ctl, counts, tg)
            sources.append(token_source)

            def authorization() -> str:
                return token_source.authorization() if token_source is not None else (static or "")

            mlops = await _mlops_source(prepared, ctl, counts, tg)
            sources.append(mlops)
            url = await _preflight(prepared, ctl, url, authorization,
                                   mlops.authorization if mlops is not None else authorization)
            at = None  # the common start (wall clock), when this is one share of a run
            if start_at_wall is not None:  # a stop signal while waiting for the common start ends the wait
                with _signals(ctl, stop, cut):
                    at = await _common_start(start_at_wall, stop)
                    with anyio.move_on_after(max(0.0, (at or 0.0) - time.time() - 0.005)):
                        await stop.wait()
            start_ns = time.monotonic_ns() + 20_000_000  # 20 ms to open connections before the first send
            if at is not None and not stop.is_set():  # the agreed wall-clock instant in this host's
                start_ns += int(max(0.0, at - time.time()) * 1e9)  # monotonic time (timer wake-ups jitter)
            recorder = Recorder(start_ns, start_ns + int(sc.load.warmup_s * 1e9), raw_path=ctl.raw_path)
            counts.attach(recorder)
            if ctl.on_recorder is not None:
                ctl.on_recorder(recorder)
            spec = replace(load_spec(sc, start_ns, worker=worker), drain_cut=cut)
            ensure_sockets(sc, spec)
            if ctl.checkpoint_path is not None:  # kill -9 leaves something `bench recover` can read
                from bench.checkpoint import Checkpoint

                checkpoint = Checkpoint.start(ctl.checkpoint_path, prepared, recorder, url, tag=ctl.checkpoint_tag,
                                              issued=ctl.secrets)
                tg.start_soon(checkpoint.run, recorder, stop)

            with _signals(ctl, stop, cut):
                grace_s = max(spec.drain_s + 1.0, target_for(sc.target.kind).drain_grace_s(prepared.target_config))
                abort = (_SloAbort(prepared.slo, sc) if prepared.slo is not None and prepared.slo.abort_on_fail
                         else None)
                tg.start_soon(_watch, recorder, ctl, stop, spec, token_source, grace_s, abort)
                cpu0, wall0 = time.process_time(), time.monotonic()
                await _apply_load(prepared, url, authorization(), token_source, recorder, spec, stop, facts,
                                  checkpoint)
                # a spinning pacer's idle turns are CPU spent waiting, not load generation: left out
                busy = max(0.0, time.process_time() - cpu0 - facts.spin_idle_s)
                facts.cpu_fraction = busy / max(1e-9, time.monotonic() - wall0)
                stop.set()
            end_ns = min(time.monotonic_ns(), spec.end_ns)  # throughput over the planned window, not the drain
            await _close(sources)
            tg.cancel_scope.cancel()
    except BaseException:  # an error on the way (bad input found late, a refused token, Ctrl-C twice)
        if checkpoint is not None:
            checkpoint.close()
        if recorder is not None:
            recorder.close()  # the raw log's file (finish closes it on the normal path)
        raise
    finally:  # token sources are released on every path
        with anyio.CancelScope(shield=True):
            await _close(sources)
    facts.url = "embedded" if prepared.embedded else url
    facts.interrupted = ctl.interrupted
    facts.slo_aborted = ctl.slo_aborted or None
    assert recorder is not None  # the load ran (every earlier exit raises)
    run = recorder.finish(end_ns, partial=ctl.interrupted)
    if checkpoint is not None:  # the whole run, drained: a kill before the report is written loses nothing
        checkpoint.final(recorder, end_ns)
    return run, facts


async def _close(sources: Sequence[Any]) -> None:
    """Release token sources (their refresh task and HTTP client); closing one twice is harmless."""
    for source in sources:
        if source is not None:
            await source.close()


async def preflight_url(prepared: Prepared, ctl: RunControl) -> str:
    """Only the preflight (with its token): the URL to load. A multi-process parent runs it once for its workers."""
    async with anyio.create_task_group() as tg:
        token_source = await _token_source(prepared, ctl, _Counts(), tg)
        static = _static_token(prepared.scenario)

        def authorization() -> str:
            return token_source.authorization() if token_source is not None else (static or "")

        mlops = await _mlops_source(prepared, ctl, _Counts(), tg)
        url = await _preflight(prepared, ctl, prepared.scenario.target.url, authorization,
                               mlops.authorization if mlops is not None else authorization)
        for source in (token_source, mlops):
            if source is not None:
                await source.close()
        tg.cancel_scope.cancel()
    return url


async def _token_source(prepared: Prepared, ctl: RunControl, counts: _Counts, tg: Any) -> Any:
    """Fetch the first token before any load (a refused credential is RunInvalid); None without [auth]."""
    if prepared.auth_config is None:
        return None
    from bench.auth import TokenSource

    source = TokenSource(prepared.auth_config, count=counts.count, file=prepared.scenario.file,
                         verify=prepared.verify_other)
    ctl.token_source = source
    await source.start(tg)
    return source


async def _mlops_source(prepared: Prepared, ctl: RunControl, counts: _Counts, tg: Any) -> Any:
    """The MLOps user's own token source for the preflight (kept fresh for the run; counted as ``mlops_*``), or
    None when the preflight is off or sends the inference token (bench.preflight: PreflightConfig.mlops_auth)."""
    preflight = prepared.preflight_config
    if preflight is None or not preflight.enabled or not ctl.preflight:
        return None
    cfg = preflight.mlops_auth(prepared.auth_config)
    if cfg is None:
        return None
    from bench.auth import TokenSource

    default_url = prepared.endpoints.token_url if prepared.endpoints is not None else None
    if prepared.auth_config is not None and prepared.auth_config.token_url:
        default_url = prepared.auth_config.token_url  # the same Keycloak as [auth]
    section = "wallaroo.auth" if preflight.auth is not None else "auth"
    source = TokenSource(cfg, count=lambda name, n: counts.count(f"mlops_{name}", n), file=prepared.scenario.file,
                         default_token_url=default_url, section=section, verify=prepared.verify_other)
    ctl.mlops_token_source = source
    await source.start(tg)
    return source


async def _preflight(prepared: Prepared, ctl: RunControl, url: str, authorization: Callable[[], str],
                     mlops_authorization: Callable[[], str]) -> str:
    """The target's own checks (with the requests' credentials), then the Wallaroo deployment's wait for Running
    (when [wallaroo] asks, with the MLOps credentials); returns the URL to load."""
    if not ctl.preflight:
        return url
    target = target_for(prepared.scenario.target.kind)
    if target.has_preflight(prepared.target_config):  # e.g. KServe: model ready, metadata against the data
        sc = prepared.scenario
        await target.preflight(prepared.target_config, url, ctl.message,
                               headers=lambda: scenario_headers(sc, authorization()),
                               verify=prepared.verify_target)
    preflight = prepared.preflight_config
    if preflight is None or not preflight.enabled:
        return url
    from bench.preflight import run_preflight

    resolved = await run_preflight(preflight, mlops_authorization, progress=ctl.message, target_url=url,
                                   verify=prepared.verify_other)
    return resolved or url


async def _apply_load(prepared: Prepared, url: str, authorization: str, token_source: Any,
                      recorder: Any, spec: LoadSpec, stop: anyio.Event, facts: RunFacts,
                      checkpoint: Any = None) -> None:
    """The data plane: the target's own (UbiOps), or a bench engine; notes its facts."""
    sc = prepared.scenario
    target = target_for(sc.target.kind)
    if target.own_data_plane(prepared.target_config):  # it records its in-flight-at-end and 'sent' itself

        def watch_sent(probe: Callable[[], int]) -> None:  # requests on the wire at a kill: in flight
            if checkpoint is not None:
                checkpoint.sent_probe = probe

        facts.target_extras.update(await target.run(prepared.target_config, prepared.bodies, recorder, spec, stop,
                                                    prepared.verify_target, watch_sent))
        return
    from bench.engine.select import choose_engine

    requests, classify = request_set(sc, url, prepared.bodies, authorization, prepared.target_config)
    cfg_e = engine_config(sc, prepared.target_config)
    engine_class = choose_engine(cfg_e, url)
    try:
        engine = engine_class(cfg_e, requests, classify, recorder)
    except RequestBuildError as exc:  # the scenario reader refuses bad headers: this is a last line of defence
        raise InputError(str(exc), file=sc.file) from None
    if checkpoint is not None:  # requests on the wire at a kill: sent, neither ok nor error (in flight)
        checkpoint.sent_probe = lambda: engine.sent
    if token_source is not None:
        token_source.on_change(lambda value: engine.set_headers({"Authorization": value}))
    extras = target.engine_hooks(prepared.target_config, engine, recorder)  # e.g. UbiOps' rate-limit backoff
    try:
        await engine.run(spec, stop)
    except RequestBuildError as exc:  # e.g. a header that changed mid-run: one line, not a traceback
        raise RunInvalid(f"the run stopped: {exc}") from None
    finally:  # every request taken on is recorded once or in flight at the end (kind 'abandoned')
        if extras is not None:
            facts.target_extras.update(extras())
        facts.abandoned, facts.engine = engine.abandoned, engine_class.__name__
        facts.spin_s, facts.spin_idle_s = engine.spin_ns / 1e9, engine.spin_idle_ns / 1e9
        facts.connections_opened = engine.connections_opened
        facts.waited_at_cap = engine.waited_at_cap
        recorder.count("sent", engine.sent)
        resent = getattr(engine, "resent", None)  # an engine that re-sends what the server did not process
        if resent is not None:
            recorder.count("resent", resent)
        recorder.abandoned(engine.abandoned, min(time.monotonic_ns(), spec.end_ns))


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
        recorder.fold_pending()  # in a loop turn of its own: see Recorder.fold_pending
        await anyio.sleep(0)
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
def _signals(ctl: RunControl, stop: anyio.Event, cut: anyio.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM stop the load gracefully and the report is still written (marked partial); a second one
    ends the drain at once (what is still out is abandoned), because a slow drain is why people press it twice;
    a third gives up the report (bench.session then names the checkpoint's `bench recover` command)."""
    import asyncio

    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if cut.is_set():  # third signal: give up on the report too
            raise KeyboardInterrupt
        if ctl.interrupted:  # second signal: give up on the drain
            ctl.message("interrupted again: skipping the drain, the requests still out count as abandoned "
                        "(Ctrl-C again to quit without writing the report)")
            cut.set()
            return
        ctl.interrupted = True
        ctl.message("interrupted: stopping and writing a partial report (Ctrl-C again to skip the drain)")
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

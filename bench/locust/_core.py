"""The one adapter between bench on Locust and bench's run core (scenario, runner, report).

Everything the distributed run needs from the core goes through here, behind a narrow interface, so a change
of the run path touches this file only: resolve a scenario sent by the master, prepare it, run worker i of n
from a common wall-clock instant while streaming snapshots, build/merge/finish reports. Never imports locust
(the worker's engine child process uses this module without gevent).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report.model import Report, RunData
from bench.scenario import Scenario

__all__ = ["finish", "merge", "prepare", "prepare_share", "read_report_bytes", "report_path",
           "resolve", "run_share",
           "scenario_job", "shared_target", "worker_report", "write_report_bytes"]


def scenario_job(sc: Scenario) -> dict[str, Any]:
    """What a worker needs to rebuild the master's resolved scenario (the effective document, not a path)."""
    return {"doc": _plain(sc.source), "file": sc.file, "base_dir": str(sc.base_dir)}


def _plain(value: Any) -> Any:
    """TOML values as msgpack/JSON types (dates become ISO text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def resolve(job: Mapping[str, Any], url: str | None = None) -> Scenario:
    """The scenario of a job; ``url`` replaces an embedded target by the master's shared emulator (for UbiOps
    the [target] table keeps 'embedded', so no token variable is needed: see ``prepare_share``)."""
    from bench.scenario import parse_scenario

    sc = parse_scenario(job["doc"], file=str(job["file"]), base_dir=Path(job["base_dir"]))
    if url:
        sc = replace(sc, target=replace(sc.target, url=url), tables={**sc.tables, "emulator": {}})
    return sc


def prepare_share(job: Mapping[str, Any]) -> Any:
    """A worker's prepared run: the scenario resolved against the master's endpoint, validated, pre-encoded."""
    url = job.get("url")
    prepared = prepare(resolve(job["scenario"], url))
    prepared.slo = None  # judged once, by the master, on the merged report (a share's rate is not the run's)
    if url and prepared.ubiops_config is not None:  # the shared emulator's UbiOps API and its token
        prepared.ubiops_config = prepared.ubiops_config.with_endpoint(url, str(job.get("ubiops_token") or ""))
    auth = prepared.auth_config
    if job.get("token_url") and auth is not None and auth.uses_keycloak and auth.token_url is None:
        prepared.auth_config = auth.with_token_url(job["token_url"])  # the shared emulator's Keycloak
    return prepared


def prepare(sc: Scenario) -> Any:
    """Validate and pre-encode (raises InputError on bad input, before any load)."""
    from bench.runner import prepare as core_prepare

    return core_prepare(sc)


@contextlib.contextmanager
def shared_target(prepared: Any) -> Iterator[dict[str, Any]]:
    """The one embedded emulator every worker of this host loads: what workers need to reach it (its URL, its
    Keycloak token URL, its UbiOps token), or {} when the target is a real URL."""
    sc: Scenario = prepared.scenario
    if not sc.target.embedded:
        yield {}
        return
    from bench.emulator.embedded import EmbeddedEmulator
    from bench.runner import TOKEN_PATH

    with EmbeddedEmulator(prepared.emulator_config) as emu:
        ubiops = sc.target.kind == "ubiops"
        yield {"url": emu.base_url if ubiops else emu.wallaroo_url, "token_url": f"{emu.base_url}{TOKEN_PATH}",
               "ubiops_token": prepared.emulator_config.ubiops_token if ubiops else None}


def run_share(prepared: Any, index: int, workers: int, epoch: float,
              on_snapshot: Callable[[RunData], None], *, interval_s: float = 1.0,
              message: Callable[[str], None] = lambda _m: None, raw_path: Path | None = None) -> Report:
    """Run worker ``index`` of ``workers`` (its share of concurrency / open-loop schedule) from wall-clock
    ``epoch``; ``on_snapshot`` gets a recorder snapshot about every ``interval_s`` (in the engine's thread).
    SIGINT/SIGTERM stop the load and the report comes back marked partial."""
    import time

    import anyio

    from bench.report.build import build_report
    from bench.run_command import run_unwrapped, use_uvloop
    from bench.runner import RunControl, execute

    sc: Scenario = prepared.scenario
    held: dict[str, Any] = {}
    last = [0.0]

    def progress(_snapshot: Any) -> None:
        now = time.monotonic()
        if "recorder" in held and now - last[0] >= interval_s:
            last[0] = now
            on_snapshot(held["recorder"].snapshot())

    ctl = RunControl(progress=progress, message=message, preflight=False, raw_path=raw_path,
                     on_recorder=lambda r: held.__setitem__("recorder", r))
    start = epoch + phase_s(sc, index)
    run, facts = run_unwrapped(lambda: anyio.run(
        lambda: execute(prepared, ctl, start_at_wall=start, worker=(index, workers)),
        backend="asyncio", backend_options={"use_uvloop": use_uvloop(sc)}))
    facts["worker"] = [index, workers]
    return build_report(sc, run, facts)


def phase_s(sc: Scenario, index: int) -> float:
    """Where worker ``index`` starts within a constant-rate schedule: i / rate after the common instant, so the
    n workers' sends (each at rate / n) interleave into exactly the single-host schedule instead of leaving in
    n-tuples. Poisson streams (reseeded per worker) superpose as they are; ramps start together."""
    load = sc.load
    if load.mode == "open" and not load.stages and load.arrival == "constant" and load.rate > 0:
        return index / load.rate
    return 0.0


def worker_report(prepared: Any, run: RunData, index: int, workers: int) -> Report:
    """A report of a worker known only by its streamed data (it died): no CPU figure, marked partial."""
    from bench.report.build import build_report

    report = build_report(prepared.scenario, run, {"worker": [index, workers]})
    report.meta.cpu_fraction = None
    return report


def write_report_bytes(report: Report) -> bytes:
    from bench.report.writer import write_report

    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        path = write_report(Path(tmp) / "part.arrow", report)
        return path.read_bytes()


def read_report_bytes(data: bytes) -> Report:
    from bench.report.reader import read_report

    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        path = Path(tmp) / "part.arrow"
        path.write_bytes(data)
        report = read_report(path)
    report.path = None
    return report


def merge(reports: Sequence[Report]) -> Report:
    from bench.report.merge import merge_reports

    return merge_reports(reports)


def report_path(args: argparse.Namespace, sc: Scenario) -> Path:
    from bench.run_command import report_path as core_report_path

    return core_report_path(args, sc)


def finish(args: argparse.Namespace, prepared: Any, report: Report, facts: dict[str, Any], out_path: Path) -> int:
    """Write the report, print the summary, apply the SLO gate → the exit code (as `bench run` does)."""
    from bench.run_command import finish_run

    return finish_run(args, prepared.scenario, prepared, report, facts, out_path)


# -- bench users in locustfiles ---------------------------------------------------------------------------

class UserPlan:
    """The wire form of a bench target for a Locust user: URL, headers, pre-encoded bodies, the classifier."""

    def __init__(self, sc: Scenario, url: str, method: str, headers: dict[str, str], bodies: list[bytes],
                 rows: list[int], classify: Callable[[int, bytes, int], tuple[int, int, int]],
                 auth: Any = None) -> None:
        self.scenario, self.url, self.method, self.headers = sc, url, method, headers
        self.bodies, self.rows, self.classify = bodies, rows, classify
        self.auth = auth  # bench.auth.AuthConfig of [auth] (tokens per request), or None


def user_plan(doc: Mapping[str, Any], file: str, base_dir: Path) -> UserPlan:
    """Read data and encode bodies once (a bad document raises InputError naming file and key)."""
    import os

    from bench.runner import request_set
    from bench.scenario import parse_scenario

    full = {"load": {"concurrency": 1, "duration": "1s"}, **doc}
    sc = parse_scenario(full, file=file, base_dir=base_dir)
    prepared = prepare(sc)
    bodies = [b.body for b in prepared.bodies]
    rows = [b.rows for b in prepared.bodies]
    if sc.target.kind == "ubiops":
        from bench.targets.ubiops import classify_direct

        cfg = prepared.ubiops_config
        return UserPlan(sc, cfg.direct_url(), "POST", cfg.headers(), bodies, rows, classify_direct)
    cfg = prepared.auth_config if prepared.auth_config is not None and prepared.auth_config.kind != "none" else None
    token = os.environ.get(sc.target.token_env) if sc.target.token_env and cfg is None else None
    auth = (token if token.lower().startswith(("bearer ", "token ")) else f"Bearer {token}") if token else None
    requests, classify = request_set(sc, sc.target.url, prepared.bodies, auth)
    return UserPlan(sc, requests.url, requests.method, dict(requests.headers), bodies, rows, classify, cfg)


def new_recorder(start_ns: int) -> Any:
    """A recorder for a Locust process's bench users (no warm-up phase: Locust's ramp is the user's business)."""
    from bench.recorder import Recorder

    return Recorder(start_ns, start_ns)


def users_report(plan: UserPlan, run: RunData, cpu_fraction: float, users: int) -> Report:
    from bench.report.build import build_report

    report = build_report(plan.scenario, run, {"cpu_fraction": cpu_fraction, "url": plan.url})
    report.meta.load = {"mode": "locust", "users": users}
    return report


def write(report: Report, path: Path) -> Path:
    from bench.report.writer import write_report

    return write_report(path, report)


def default_report_path(name: str) -> Path:
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path as core_default

    return core_default(Path("reports"), name, datetime.now(UTC))

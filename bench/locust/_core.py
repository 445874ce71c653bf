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
from pathlib import Path
from typing import Any

from bench.report.model import Report, RunData
from bench.scenario import Scenario

__all__ = ["check_out", "discard_checkpoint", "finish", "merge", "preflight", "preflight_wanted", "prepare",
           "prepare_share", "read_report_bytes", "recover_leftover", "report_path", "resolve", "run_share",
           "scenario_job", "shared_target", "start_parts", "worker_report", "write_report_bytes"]


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


def resolve(job: Mapping[str, Any]) -> Scenario:
    """The scenario of a job (the master's effective document, re-parsed; relative paths against its dir)."""
    from bench.scenario import parse_scenario

    return parse_scenario(job["doc"], file=str(job["file"]), base_dir=Path(job["base_dir"]))


def prepare(sc: Scenario) -> Any:
    """Validate and pre-encode (raises InputError on bad input, before any load)."""
    from bench.session import prepare as session_prepare

    return session_prepare(sc)


def prepare_share(job: Mapping[str, Any]) -> Any:
    """A worker's prepared run: the scenario resolved against the master's endpoints, validated, pre-encoded."""
    from bench.runner import Endpoints, point_at

    prepared = prepare(resolve(job["scenario"]))
    if job.get("endpoints"):  # the master's embedded emulator: its URLs and token (bench.session resolved them)
        prepared = point_at(prepared, Endpoints(**job["endpoints"]))
    prepared.slo = None  # judged once, by the master, on the merged report (a share's rate is not the run's)
    return prepared


@contextlib.contextmanager
def shared_target(prepared: Any, message: Callable[[str], None] = lambda _m: None) -> Iterator[dict[str, Any]]:
    """The one embedded emulator every worker of this host loads: what workers need to reach it (its URLs and
    UbiOps token, as ``bench.runner.Endpoints``), or {} when the target is a real URL."""
    from dataclasses import asdict

    from bench.session import resolved_target

    with resolved_target(prepared, message) as target:
        yield {"endpoints": asdict(target.endpoints)} if target.endpoints is not None else {}


def preflight_wanted(prepared: Any, enabled: bool) -> bool:
    from bench.workers import preflight_wanted as wanted

    return wanted(prepared, enabled)


def preflight(prepared: Any, endpoints: dict[str, Any], *, enabled: bool, quiet: bool) -> dict[str, Any]:
    """The target's preflight, run once for a Locust master before any worker prepares (as a ``--processes``
    parent does: bench.workers.preflight_once; bench.locust.preflight runs it away from gevent): a wrong model
    name or a deployment that is not running is refused with the single-host run's one line and exit code, not
    sent as a whole run of errors. Returns the endpoints to hand the workers: the URL the preflight resolved
    replaces the scenario's."""
    from dataclasses import asdict, replace
    from types import SimpleNamespace

    from bench.runner import Endpoints, point_at
    from bench.workers import preflight_once

    ep = Endpoints(**endpoints["endpoints"]) if endpoints.get("endpoints") else None
    target = point_at(prepared, ep) if ep is not None else prepared
    url = preflight_once(target, SimpleNamespace(preflight=enabled, quiet=quiet))
    if url == target.scenario.target.url:
        return endpoints
    return {**endpoints, "endpoints": asdict(replace(ep or Endpoints(url), inference_url=url))}


def run_share(prepared: Any, index: int, workers: int, epoch: float,
              on_snapshot: Callable[[RunData], None], *, interval_s: float = 1.0,
              message: Callable[[str], None] = lambda _m: None, raw_path: Path | None = None,
              checkpoint: Path | None = None, run_id: str = "") -> Report:
    """Run worker ``index`` of ``workers`` (its share of concurrency / open-loop schedule) from wall-clock
    ``epoch``; ``on_snapshot`` gets a recorder snapshot about every ``interval_s`` (in the engine's thread).
    ``checkpoint``: append the share's measurements there once a second (bench.checkpoint, header tagged with
    ``run_id`` and the worker), for the master to keep beside its report. SIGINT/SIGTERM stop the load and the
    report comes back marked partial."""
    import time
    from dataclasses import replace

    from bench.facts import build_report
    from bench.run_loop import run_once
    from bench.runner import RunControl
    from bench.secrets import scrub_report

    sc: Scenario = prepared.scenario
    held: dict[str, Any] = {}
    last = [0.0]
    scrubber = prepared.scrubber  # this host's secrets (its environment, the tokens it is issued): the master
    # knows only its own, so everything that leaves the worker is scrubbed here, as bench.session does

    def progress(_snapshot: Any) -> None:
        now = time.monotonic()
        if "recorder" in held and now - last[0] >= interval_s:
            last[0] = now
            snap = held["recorder"].snapshot()
            scrubber.add(ctl.secrets())
            snap.error_samples = [replace(e, detail=scrubber.sample(e.detail)) for e in snap.error_samples]
            on_snapshot(snap)

    ctl = RunControl(progress=progress, message=lambda m: message(scrubber.text(m)), preflight=False,
                     raw_path=raw_path, on_recorder=lambda r: held.__setitem__("recorder", r),
                     checkpoint_path=checkpoint, checkpoint_tag={"run_id": run_id, "worker": [index, workers]})
    # worker i of n sends i, i + n, … of the one-host schedule (bench.runner.offsets_for), all from ``epoch``
    run, facts = run_once(prepared, ctl, start_at_wall=epoch, worker=(index, workers))
    facts.worker = (index, workers)
    report = build_report(sc, run, facts, prepared.target_config)
    scrubber.add(ctl.secrets())
    scrub_report(report, scrubber)
    return report


def worker_report(prepared: Any, run: RunData, index: int, workers: int) -> Report:
    """A report of a worker known only by its streamed data (it died): no CPU figure, marked partial."""
    from bench.facts import RunFacts, build_report

    facts = RunFacts(worker=(index, workers))  # cpu_fraction: None
    return build_report(prepared.scenario, run, facts, prepared.target_config)


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


def _options(args: argparse.Namespace) -> Any:
    """The `bench run` options a distributed run uses, as bench.session's record (--processes does not apply)."""
    from bench.session import RunOptions

    return RunOptions(out=Path(args.out) if args.out else None, json=bool(args.json), quiet=bool(args.quiet),
                      strict=bool(args.strict), preflight=not args.no_preflight)


def report_path(args: argparse.Namespace, sc: Scenario) -> Path:
    from bench.session import report_path as session_report_path

    return session_report_path(_options(args), sc)


def check_out(args: argparse.Namespace, path: Path) -> None:
    """A bad --out is refused before any worker is involved (the default reports/ directory is created)."""
    from bench.outpath import check_report_path

    check_report_path(path)


def recover_leftover(path: Path, message: Callable[[str], None]) -> None:
    """A checkpoint left at ``path`` by a killed run is recovered beside it first, never overwritten."""
    from bench.checkpoint import recover_leftover as core_recover_leftover

    core_recover_leftover(path, message)


def start_parts(path: Path, workers: int, extra: dict[str, Any]) -> tuple[str, list[Path]]:
    """The run's checkpoint manifest at ``path`` (bench.checkpoint): its run id and each worker's part path."""
    from bench.checkpoint import start_parts as core_start_parts

    return core_start_parts(path, workers, extra)


def discard_checkpoint(path: Path) -> None:
    """The run was judged invalid (or its report written): remove its manifest and parts."""
    from bench.checkpoint import discard

    discard(path)


def finish(args: argparse.Namespace, prepared: Any, report: Report, facts: dict[str, Any], out_path: Path) -> int:
    """Write the report, print the summary, apply the SLO gate → the exit code (as `bench run` does)."""
    from bench.facts import RunFacts
    from bench.session import finish as session_finish

    run_facts = RunFacts(interrupted=bool(facts.get("interrupted")), processes=int(facts.get("workers", 1)))
    return session_finish(_options(args), prepared, report, run_facts, out_path)


# -- bench users in locustfiles ---------------------------------------------------------------------------

class UserPlan:
    """The wire form of a bench target for a Locust user: URL, headers, pre-encoded bodies, the classifier."""

    def __init__(self, sc: Scenario, url: str, method: str, headers: dict[str, str], bodies: list[bytes],
                 rows: list[int], classify: Callable[[int, bytes, int], tuple[int, int, int]],
                 auth: Any = None, scrubber: Any = None, target_config: Any = None) -> None:
        from bench.secrets import Scrubber

        self.scenario, self.url, self.method, self.headers = sc, url, method, headers
        self.bodies, self.rows, self.classify = bodies, rows, classify
        self.auth = auth  # bench.auth.AuthConfig of [auth] (tokens per request), or None
        self.scrubber: Scrubber = scrubber if scrubber is not None else Scrubber()  # this process's secrets
        self.target_config = target_config  # the target's config of the scenario (its report extras)


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
    cfg = prepared.auth_config if prepared.auth_config is not None and prepared.auth_config.kind != "none" else None
    token = os.environ.get(sc.target.token_env) if sc.target.token_env and cfg is None else None
    auth = (token if token.lower().startswith(("bearer ", "token ")) else f"Bearer {token}") if token else None
    requests, classify = request_set(sc, sc.target.url, prepared.bodies, auth, prepared.target_config)
    return UserPlan(sc, requests.url, requests.method, dict(requests.headers), bodies, rows, classify, cfg,
                    prepared.scrubber, prepared.target_config)


def new_recorder(start_ns: int) -> Any:
    """A recorder for a Locust process's bench users (no warm-up phase: Locust's ramp is the user's business)."""
    from bench.recorder import Recorder

    return Recorder(start_ns, start_ns)


def users_report(plan: UserPlan, run: RunData, cpu_fraction: float, users: int,
                 secrets: Sequence[str] = ()) -> Report:
    """This process's bench users' report, scrubbed of its secrets (``secrets``: the tokens it was issued) before
    it is written or sent to a master (which knows only its own)."""
    from bench.facts import RunFacts, build_report
    from bench.secrets import scrub_report

    report = build_report(plan.scenario, run, RunFacts(cpu_fraction=cpu_fraction, url=plan.url), plan.target_config)
    report.meta.load = {"mode": "locust", "users": users}
    plan.scrubber.add(secrets)
    scrub_report(report, plan.scrubber)
    return report


def write(report: Report, path: Path) -> Path:
    from bench.report.writer import write_report

    return write_report(path, report)


def default_report_path(name: str) -> Path:
    from datetime import UTC, datetime

    from bench.report.writer import default_report_path as core_default

    return core_default(Path("reports"), name, datetime.now(UTC))

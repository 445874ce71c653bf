"""The bench report of a stock `locust` run with bench users: one recorder per Locust process, one report.

Single process: written at test stop. Master + workers: at the master's test stop the master asks every
connected worker for its recorder (``bench_user_finish``), each answers with its report
(``bench_user_report``), and the master merges them exactly and writes one report; a worker that does not
answer in time (or was lost before the end) is named and the report marked partial. ``--bench-report PATH``
chooses the file. A run whose bench report has no successful answer, or is partial, makes the locust process
exit 3 (``environment.process_exit_code``): Locust's own stats may show no failure (requests stopped mid-flight
never reach them), and a CI job gating on the exit code must not pass such a run. Each process counts its
sends, so the report's accounting (sent = ok + errors + in flight at the end) holds. Importing this module
imports locust (gevent).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from bench.errors import EXIT_INVALID
from bench.locust import _core
from bench.report.model import Report

__all__ = ["add_arguments", "collector_for", "on_init"]

log = logging.getLogger("bench.locust")
_ANSWER_WAIT_S = 15.0


class _Collector:
    def __init__(self, env: Any) -> None:
        self.env = env
        self.plan: _core.UserPlan | None = None
        self.recorder: Any = None
        self.cpu0 = self.wall0 = 0.0
        self.answers: dict[str, Any] = {}
        self.written = False
        self.in_flight = 0  # requests sent and not answered (a user stopped mid-request never answers)
        self.sent = 0  # requests sent while this test's recorder existed: sent = ok + errors + in flight at end
        self.tokens: Any = None  # bench.locust.tokens.UserTokens when the plan has [auth]

    def start(self, **_kw: Any) -> None:
        self.recorder = _core.new_recorder(time.monotonic_ns())
        self.sent = 0
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()
        self.answers.clear()
        self.written = False

    def own_report(self) -> Report | None:
        if self.recorder is None or self.plan is None:
            return None
        now = time.monotonic_ns()
        self.recorder.count("sent", self.sent)
        # sent, never answered: Locust stopped the user mid-request (kind 'abandoned', as the engine's in flight)
        self.recorder.abandoned(min(self.in_flight, self.sent), now)
        run = self.recorder.finish(now, partial=False)
        self.recorder = None
        cpu = (time.process_time() - self.cpu0) / max(1e-9, time.monotonic() - self.wall0)
        report = _core.users_report(self.plan, run, cpu, self.env.runner.user_count if self.env.runner else 0,
                                    self.tokens.secrets() if self.tokens is not None else ())
        report.meta.host = f"{socket.gethostname()}:{os.getpid()}"
        return report

    # -- single process --------------------------------------------------------------------------------
    def local_stop(self, **_kw: Any) -> None:
        if self.written:
            return
        report = self.own_report()
        if report is not None:
            self._write(report)

    # -- worker ----------------------------------------------------------------------------------------
    def on_finish_request(self, environment: Any, msg: Any) -> None:
        environment.runner.stop()  # users first: a request finishing after the report would be lost to it
        report = self.own_report()
        data = _core.write_report_bytes(report) if report is not None else None
        environment.runner.send_message("bench_user_report", {"report": data})

    # -- master ----------------------------------------------------------------------------------------
    def on_report(self, environment: Any, msg: Any) -> None:
        self.answers[msg.node_id] = msg.data["report"]

    def master_stop(self, **_kw: Any) -> None:
        if self.written:
            return
        runner = self.env.runner
        everyone = [c.id for c in runner.clients.all]  # a worker found missing before the end took part too
        expected = [c.id for c in runner.clients.all if c.state != STATE_MISSING]
        runner.send_message("bench_user_finish", {})
        deadline = time.monotonic() + _ANSWER_WAIT_S
        while any(cid not in self.answers for cid in expected) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        reports = [_core.read_report_bytes(bytes(d)) for d in self.answers.values() if d]
        missing = [cid for cid in everyone if cid not in self.answers]
        if not reports:
            log.warning("bench: no worker sent bench data (no bench users ran?): no bench report written")
            if missing:
                self.env.process_exit_code = EXIT_INVALID
            return
        merged = _core.merge(reports)
        merged.run.partial = merged.run.partial or bool(missing)
        merged.meta.extra["locust"] = {"workers": sorted(self.answers), "lost": missing}
        merged.meta.load = {"mode": "locust", "workers": len(reports),
                            "users": sum(int(r.meta.load.get("users", 0)) for r in reports)}
        if missing:
            log.warning("bench: no answer from worker(s) %s: the bench report is partial", ", ".join(missing))
            merged.meta.extra["partial_reason"] = f"a worker was lost: {', '.join(missing)}"
        self._write(merged)

    def _write(self, report: Report) -> None:
        opts = self.env.parsed_options
        wanted = getattr(opts, "bench_report", "") if opts is not None else ""
        path = Path(wanted) if wanted else _core.default_report_path(report.meta.scenario_name or "locust")
        written = _core.write(report, path)
        self.written = True
        print(f"bench report: {written}", file=sys.stderr, flush=True)
        requests = sum(t.requests for t in report.run.totals.values())
        ok = sum(t.ok for t in report.run.totals.values())
        if report.run.partial or (requests and not ok):
            why = "is partial" if report.run.partial else f"has no successful answer in {requests:,} requests"
            log.error("bench: the bench report %s: exit code %d", why, EXIT_INVALID)
            self.env.process_exit_code = EXIT_INVALID


def _collector(env: Any) -> _Collector:
    c: _Collector | None = getattr(env, "bench_collector", None)
    if c is None:
        c = _Collector(env)
        env.bench_collector = c
    return c


def on_init(environment: Any, **_kw: Any) -> None:
    """events.init: wire the collector to this process's runner (master, worker or local)."""
    c = _collector(environment)
    runner = environment.runner
    environment.events.test_start.add_listener(c.start)
    if isinstance(runner, MasterRunner):
        runner.register_message("bench_user_report", c.on_report)
        environment.events.test_stop.add_listener(c.master_stop)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("bench_user_finish", c.on_finish_request)
    elif runner is not None:
        environment.events.test_stop.add_listener(c.local_stop)


def add_arguments(parser: Any) -> None:
    parser.add_argument("--bench-report", default="", help="bench report file written at test stop "
                        "(default reports/<UTC time>-<name>.arrow)")


def collector_for(environment: Any, plan: _core.UserPlan) -> _Collector:
    """This process's collector; its recorder starts with the test (a user built outside a test starts one)."""
    c = _collector(environment)
    if c.plan is None:
        c.plan = plan
    if c.recorder is None:
        c.start()
    if plan.auth is not None and c.tokens is None:
        from bench.locust.tokens import UserTokens

        c.tokens = UserTokens(plan.auth, file=plan.scenario.file,
                              count=lambda name: c.recorder.count(name) if c.recorder is not None else None)
    return c

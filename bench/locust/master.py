"""`bench run SCENARIO --locust-master --expect-workers N`: a Locust master that drives bench workers.

Locust finds the workers (ZeroMQ, heartbeats); bench decides the rest: each of the first N workers gets the
resolved scenario and its index, prepares (a worker that cannot read the scenario or runs another bench
version says so and the run is refused), all start at one wall-clock instant, stream deltas about once a
second and end with their whole report. The master merges exactly and writes the standard report, with each
worker's identity and health; a worker lost mid-run keeps its data up to its last checkpoint line (its in-flight
requests counted as such, so the accounting still holds) and marks the run partial. The master runs the target's
preflight once, before any worker prepares, shows the run's progress from the workers' deltas, and handles
Ctrl-C / SIGTERM from its first moment (before the load: one line, nothing left behind).
The workers' checkpoints are kept beside the report while it runs (bench.locust.parts): ``kill -9`` of the
master leaves what ``bench recover`` turns into a partial report. Importing this module imports locust (gevent).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gevent
from locust.env import Environment
from locust.runners import STATE_MISSING

from bench import __version__
from bench.errors import EXIT_INVALID, EXIT_OK, BenchError, InputError, RunInvalid
from bench.locust import _core, live, watch, webui
from bench.locust.child import PARENT_SILENCE_S
from bench.locust.parts import WorkerParts
from bench.locust.wire import LiveRun, delta
from bench.report.model import Report
from bench.report.verdict import not_judged_parts
from bench.scenario import Scenario, split_problem

__all__ = ["run_master"]

_TICK_S = 0.2
_HEARTBEAT_S = 1.0  # the worker's heartbeats to its engine and Locust's to the master


@dataclass
class _Worker:
    client_id: str
    index: int
    state: str = "assigned"  # assigned → ready → final | stopped (early, on its side) | error | lost
    host: str = ""
    pid: int = 0
    message: str = ""
    refused: bool = False
    clock_offset_s: float | None = None
    live: LiveRun = field(default_factory=LiveRun)
    report: Report | None = None
    report_bytes: bytes = b""
    last_seen: float = 0.0  # wall clock of its last bench message

    @property
    def name(self) -> str:
        return f"{self.client_id} (index {self.index})"

    def sending_until(self) -> str:
        """Until when a lost worker's engine may have kept sending unseen: it stops once its worker has sent it
        no heartbeat for PARENT_SILENCE_S (a frozen worker), at once when its worker died."""
        last = self.last_seen or time.time()
        return time.strftime("%H:%M:%S", time.localtime(last + _HEARTBEAT_S + PARENT_SILENCE_S + 1.0))


class _Master:
    def __init__(self, env: Environment, expected: int) -> None:
        self.env = env
        self.runner: Any = cast(Any, env.runner)
        self.expected = expected
        self.workers: dict[str, _Worker] = {}
        self.signals = 0
        self.started = False  # the go was sent: a first signal stops the load (a partial report), not the run
        self.note: Callable[[str], None] = lambda _m: None  # a line on the master's terminal as things happen
        self.idle_noted: set[str] = set()  # workers beyond --expect-workers already named
        self.parts: WorkerParts | None = None  # the workers' checkpoints, kept beside the report
        for name, fn in (("bench_ready", self._ready), ("bench_error", self._error),
                         ("bench_delta", self._delta), ("bench_checkpoint", self._checkpoint),
                         ("bench_final", self._final)):
            self.runner.register_message(name, fn)

    # -- messages from workers (run in the master's listener greenlet) -----------------------------------
    def _ours(self, msg: Any) -> _Worker | None:
        w = self.workers.get(msg.node_id)
        if w is not None:
            w.last_seen = time.time()
        return w

    def _ready(self, environment: Environment, msg: Any) -> None:
        w = self._ours(msg)
        if w is not None and w.state == "assigned":
            w.state, w.host, w.pid = "ready", str(msg.data["host"]), int(msg.data["pid"])
            # worker clock minus ours, upper-bounded by the message's transit time (loopback/LAN: < 1 ms)
            w.clock_offset_s = float(msg.data["time"]) - time.time()

    def _error(self, environment: Environment, msg: Any) -> None:
        w = self._ours(msg)
        if w is not None and w.state not in ("final", "lost"):
            if self.started and w.state == "ready":
                self.note(f"worker {w.name} failed mid-run: {msg.data['message']} (its share counts up to its last "
                          "checkpoint line)")
            w.state, w.message, w.refused = "error", str(msg.data["message"]), bool(msg.data.get("refused"))
            w.host, w.pid = str(msg.data.get("host", w.host)), int(msg.data.get("pid", w.pid))

    def _delta(self, environment: Environment, msg: Any) -> None:
        w = self._ours(msg)
        if w is not None and w.state == "ready":
            w.live.apply(msg.data)
            live.feed(self.env.stats, msg.data)

    def _checkpoint(self, environment: Environment, msg: Any) -> None:
        w = self._ours(msg)
        if w is not None and w.state == "ready" and self.parts is not None:
            self.parts.append(w.index, [str(line) for line in msg.data["lines"]])

    def _final(self, environment: Environment, msg: Any) -> None:
        w = self._ours(msg)
        if w is not None and w.state in ("ready", "assigned"):
            w.report_bytes = bytes(msg.data["report"])
            w.report = _core.read_report_bytes(w.report_bytes)
            live.feed(self.env.stats, delta(w.live.run_data(partial=True), w.report.run))  # the UI's tail
            # a partial report the master did not ask for: the worker was stopped on its side (Ctrl-C, SIGTERM)
            w.state = "stopped" if w.report.run.partial and not self.signals else "final"

    # -- the run ---------------------------------------------------------------------------------------
    def connected(self) -> list[str]:
        return [c.id for c in self.runner.clients.all if c.state != STATE_MISSING]

    def check_lost(self) -> None:
        alive = set(self.connected())
        for w in self.workers.values():
            if w.state in ("assigned", "ready") and w.client_id not in alive:
                w.state = "lost"
                if self.started:
                    self.note(f"worker {w.name} lost (no heartbeat): its engine may have kept sending until about "
                              f"{w.sending_until()}, which the report cannot count")

    def check_idle(self) -> None:
        """Name, once each, the workers connected beyond --expect-workers: they stay idle for this run."""
        for cid in self.connected():
            if cid not in self.workers and cid not in self.idle_noted:
                self.idle_noted.add(cid)
                self.note(f"worker {cid} connected beyond --expect-workers {self.expected}: it stays idle for this "
                          "run (start the master with a larger --expect-workers to use it)")

    def wait(self, states: tuple[str, ...], deadline: float) -> bool:
        """Until every worker has left ``states`` (True) or the deadline (False); watches for lost workers."""
        while time.monotonic() < deadline:
            if self.signals and not self.started:  # Ctrl-C / SIGTERM before the load: nothing to report
                raise KeyboardInterrupt
            self.check_lost()
            self.check_idle()
            if all(w.state not in states for w in self.workers.values()):
                return True
            gevent.sleep(_TICK_S)
        return False

    def send_all(self, kind: str, data: dict[str, Any]) -> None:
        for w in self.workers.values():
            if w.state in ("assigned", "ready"):
                self.runner.send_message(kind, data, client_id=w.client_id)


def _deadline_s(sc: Scenario) -> float:
    """How long the load may run before the master stops waiting (safety net; workers end on their own)."""
    load = sc.load
    if load.duration_s <= 0:
        return float("inf")
    return load.warmup_s + load.duration_s + load.drain_s + 30.0


def run_master(args: argparse.Namespace, sc: Scenario) -> int:
    prepared = _core.prepare(sc)  # bad input exits 2 here, before any worker is involved
    expected = int(args.expect_workers)
    if expected < 1:
        raise InputError("must be >= 1", key="--expect-workers")
    problem = split_problem(sc.load, expected)  # a worker's share of 0: no clients, or no request limit
    if problem:
        raise InputError(problem.replace(" processes", " workers"), key="--expect-workers")
    out_path = _core.report_path(args, sc)
    _core.check_out(args, out_path)  # a bad --out must not cost the whole run
    _check_port(args.master_bind_host, args.master_bind_port, "--master-bind-port")
    if args.locust_web_port:  # a busy port was a traceback from a greenlet, and the run went on without the UI
        _check_port("127.0.0.1", args.locust_web_port, "--locust-web-port")
    env = Environment(user_classes=[])
    env.create_master_runner(args.master_bind_host, args.master_bind_port)
    master = _Master(env, expected)
    quiet = bool(args.quiet)

    def say(message: str) -> None:
        if not quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    master.note = say

    def on_signal() -> None:  # from the first moment: gevent's default printed a raw KeyboardInterrupt
        master.signals += 1
        if master.started and master.signals == 1:
            master.note("interrupted: stopping every worker and writing a partial report (again to give up "
                        "waiting)")
            master.send_all("bench_stop", {})

    handlers = [gevent.signal_handler(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)]
    if args.locust_web_port:  # Locust's web UI, showing the live aggregates (the run starts by itself)
        sys.argv = sys.argv[:1]  # the UI re-parses sys.argv with Locust's parser, which rejects bench's options
        env.create_web_ui("127.0.0.1", args.locust_web_port)
        webui.attach(env, on_stop=on_signal)  # its Stop is a first Ctrl-C; Start is refused
    # a killed earlier run with this --out: recovered, never overwritten, and said even with --quiet (a notice)
    _core.recover_leftover(out_path, lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    try:
        with _core.shared_target(prepared, say) as endpoints:
            # once, before any worker prepares: bad input exits 2 here with the single-host run's line
            endpoints = _preflight(prepared, endpoints, not args.no_preflight, quiet)
            report, facts = _drive(master, prepared, endpoints, args, say, out_path)
    except (BenchError, KeyboardInterrupt):  # a run judged invalid, refused or stopped before the load: nothing
        master.send_all("bench_stop", {})  # to recover (workers already preparing are told to stop)
        _core.discard_checkpoint(out_path)
        raise
    finally:
        for h in handlers:
            h.cancel()
        if master.parts is not None:
            master.parts.close()
        webui.ended(env)
        env.runner.quit()  # type: ignore[union-attr]
        if env.web_ui is not None:
            env.web_ui.stop()  # type: ignore[no-untyped-call]
    lost = [w for w in master.workers.values() if w.state != "final"]  # lost, stopped early, or failed mid-run
    for h in report.meta.extra["locust"]["workers"]:
        cpu = f"{h['cpu_fraction'] * 100:.0f} % of a core" if h["cpu_fraction"] is not None else "CPU —"
        bound = {True: "generator-bound", False: "not generator-bound", None: "verdict —"}[h["generator_bound"]]
        say(f"worker {h['index']} {h['host'] or h['id']} pid {h['pid']}: {h['state']}, {h['requests']:,} requests, "
            f"{cpu}, {bound}")
    if sc.report.raw:  # the per-request logs stay in each worker's own report, beside the merged one
        parts = out_path.with_suffix(".workers")
        parts.mkdir(parents=True, exist_ok=True)
        for w in master.workers.values():
            if w.report_bytes:
                (parts / f"worker-{w.index}.arrow").write_bytes(w.report_bytes)
    code = _core.finish(args, prepared, report, facts, out_path)
    measured = report.run.total()
    if code == EXIT_OK and measured.requests and not measured.ok:
        print(f"bench: error: none of {measured.requests:,} requests succeeded", file=sys.stderr)
        return EXIT_INVALID
    if lost and code == EXIT_OK:
        names = ", ".join(w.name for w in lost)
        unseen = "; ".join(f"{w.name} may have sent more until about {w.sending_until()}"
                           for w in lost if w.state == "lost")
        print(f"bench: error: lost worker(s) {names} mid-run: the report is partial, their shares up to their last "
              f"checkpoint ({'; '.join(f'{w.client_id}: {w.message or w.state}' for w in lost)})"
              + (f"; {unseen}" if unseen else ""), file=sys.stderr)
        return EXIT_INVALID
    return code


def _preflight(prepared: Any, endpoints: dict[str, Any], enabled: bool, quiet: bool) -> dict[str, Any]:
    """The target's preflight in a process of its own (bench.locust.preflight: away from this gevent loop, whose
    Locust heartbeats must go on); the endpoints to hand the workers."""
    import subprocess  # gevent's (locust patched it): the wait is cooperative

    import orjson

    if not _core.preflight_wanted(prepared, enabled):
        return endpoints
    job = {"scenario": _core.scenario_job(prepared.scenario), "endpoints": endpoints, "quiet": quiet}
    proc = subprocess.run([sys.executable, "-m", "bench.locust.preflight"], input=orjson.dumps(job),
                          stdout=subprocess.PIPE, check=False)
    try:
        answer = orjson.loads(proc.stdout.splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        raise RunInvalid(f"the preflight process exited with code {proc.returncode} and no answer") from None
    if "error" in answer:
        raise (InputError if answer.get("code") == InputError.exit_code else RunInvalid)(str(answer["error"]))
    return dict(answer["endpoints"])


def _check_port(host: str, port: int, flag: str) -> None:
    """A busy port is bad input (exit 2, one line), not Locust's log line and exit 1."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ does: TIME_WAIT is no conflict
            s.bind(("0.0.0.0" if host == "*" else host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}", key=flag) from None


def _drive(master: _Master, prepared: Any, endpoints: dict[str, Any], args: argparse.Namespace,
           say: Callable[[str], None], out_path: Path) -> tuple[Report, dict[str, Any]]:
    sc: Scenario = prepared.scenario
    expected = master.expected
    bind = f"{args.master_bind_host}:{args.master_bind_port}"
    say(f"Locust master at {bind}, waiting for {expected} worker(s)")
    deadline = time.monotonic() + float(args.worker_wait)
    while len(master.connected()) < expected:
        if master.signals:
            raise KeyboardInterrupt
        if time.monotonic() >= deadline:
            raise RunInvalid(f"{len(master.connected())} of {expected} Locust worker(s) connected to {bind} "
                             f"within {args.worker_wait:g} s")
        gevent.sleep(_TICK_S)
    for i, cid in enumerate(sorted(master.connected())[:expected]):
        master.workers[cid] = _Worker(cid, i)
    ids = [{"id": w.client_id, "index": w.index} for w in master.workers.values()]
    run_id, paths = _core.start_parts(out_path, expected, {"locust": {"workers": ids, "expected_workers": expected}})
    master.parts = WorkerParts(run_id, paths, prepared.scrubber.data)  # before any load: kill -9 loses nothing
    job = {"scenario": _core.scenario_job(sc), "workers": expected, "bench_version": __version__, "run_id": run_id,
           **endpoints}
    for w in master.workers.values():
        master.runner.send_message("bench_prepare", {**job, "index": w.index}, client_id=w.client_id)
    if not master.wait(("assigned",), time.monotonic() + float(args.worker_wait)):
        _refuse(master, "did not confirm the scenario within "
                f"{args.worker_wait:g} s", [w for w in master.workers.values() if w.state == "assigned"])
    bad = [w for w in master.workers.values() if w.state in ("error", "lost")]
    if endpoints:  # the embedded emulator listens on this host's loopback only
        here = socket.gethostname()
        for w in master.workers.values():
            if w.state == "ready" and w.host != here:
                w.state, w.message = "error", (f"cannot reach the embedded emulator on {here}'s loopback; "
                                               "run `bench serve --host 0.0.0.0 --allow-remote` and give its URL")
                bad.append(w)
    if bad:
        _refuse(master, "", bad)
    for w in master.workers.values():
        offset = w.clock_offset_s
        if offset is not None and abs(offset) > 0.05:
            say(f"warning: worker {w.name} clock is {offset * 1000:+.0f} ms off this host's: its schedule "
                "starts that much off the others' (sync clocks with NTP/chrony)")
    if master.signals:
        raise KeyboardInterrupt
    epoch = time.time() + 1.0 + 0.05 * expected  # every worker starts its load at this wall-clock instant
    master.started = True
    master.send_all("bench_go", {"epoch": epoch})
    webui.started(master.env, epoch)
    say(f"{expected} worker(s) ready; load starts at {time.strftime('%H:%M:%S', time.localtime(epoch))}")
    interrupted = _run_until_done(master, sc, epoch, bool(args.quiet))
    return _merged(master, prepared, interrupted)


def _refuse(master: _Master, why: str, bad: list[_Worker]) -> None:
    master.send_all("bench_stop", {})
    parts = [f"worker {w.name}{' on ' + w.host if w.host else ''}: {w.message or why or w.state}" for w in bad]
    refused = any(w.refused for w in bad)
    raise (InputError if refused or any(w.state == "error" for w in bad) else RunInvalid)(
        "; ".join(parts))


def _run_until_done(master: _Master, sc: Scenario, epoch: float, quiet: bool) -> bool:
    """Wait for every worker's final report (or its loss), showing the run's progress from their deltas;
    SIGINT/SIGTERM (run_master's handlers) stop every worker (partial)."""
    from bench.progress import ProgressView

    load = sc.load
    view = ProgressView(load.warmup_s + load.duration_s, warmup_s=load.warmup_s, enabled=not quiet)
    master.note = view.message if not quiet else master.note
    try:
        end = time.monotonic() + max(0.0, epoch - time.time()) + _deadline_s(sc)
        while not master.wait(("assigned", "ready"), min(end, time.monotonic() + 0.5)):
            if time.time() >= epoch:
                view.update(watch.progress([w.live for w in master.workers.values()], epoch, time.time()))
            if master.signals >= 2:
                break
            if time.monotonic() >= end:
                master.note("workers did not finish in time: stopping them")
                master.send_all("bench_stop", {})
                master.wait(("assigned", "ready"), time.monotonic() + 15.0)
                break
    finally:
        view.close()
    for w in master.workers.values():
        if w.state in ("assigned", "ready"):
            w.state = "lost"
    return master.signals > 0


def _from_checkpoint(master: _Master, index: int) -> Report | None:
    """Worker ``index``'s share as of its last checkpoint line the master received, or None."""
    if master.parts is None:
        return None
    from bench.checkpoint import recover_part

    return recover_part(master.parts.paths[index], master.parts.run_id)


def _merged(master: _Master, prepared: Any, interrupted: bool) -> tuple[Report, dict[str, Any]]:
    n = master.expected
    reports: list[Report] = []
    health: list[dict[str, Any]] = []
    unjudged: list[str] = []  # parts whose schedule lag and CPU use are unknown (not the worker's own report)
    for w in sorted(master.workers.values(), key=lambda x: x.index):
        rep: Report | None = w.report
        if rep is None:  # lost, failed, or given up waiting for: its checkpoint counts what it had on the wire as
            rep = _from_checkpoint(master, w.index)  # in flight (the streamed deltas do not), so sent = ok + ...
        if rep is None and w.live.deltas:
            rep = _core.worker_report(prepared, w.live.run_data(partial=True), w.index, n)
        if rep is not None:
            rep.meta.host = f"{w.host or w.client_id}#{w.index}"  # names the worker in merged verdict reasons
            reports.append(rep)
        own = rep is not None and rep is w.report
        if not own:  # its share from a checkpoint or its stream, or nothing at all: its CPU and lag are unknown
            unjudged.append(f"worker {w.name}")
        health.append({"id": w.client_id, "index": w.index, "host": w.host, "pid": w.pid, "state": w.state,
                       "message": w.message, "clock_offset_s": w.clock_offset_s,
                       "requests": sum(t.requests for t in rep.run.totals.values()) if rep else 0,
                       "cpu_fraction": rep.meta.cpu_fraction if rep else None,
                       "generator_bound": rep.meta.generator_bound if rep and own else None,  # None: not judged
                       "generator_bound_reasons": list(rep.meta.generator_bound_reasons) if rep else []})
    if not reports:
        raise RunInvalid("no worker sent any data: " + "; ".join(f"{h['id']}: {h['state']}" for h in health))
    merged = _core.merge(reports)
    lost = [h["id"] for h in health if h["state"] != "final"]
    merged.run.partial = merged.run.partial or interrupted or bool(lost)
    merged.meta.load["processes"] = n
    merged.meta.extra["locust"] = {"workers": health, "lost": lost, "expected_workers": n}
    if lost and not interrupted:  # the summary's "partial run (...)": not an interruption nobody made
        merged.meta.extra["partial_reason"] = f"a worker was lost: {', '.join(lost)}"
    merged.meta.extra.pop("merged_from", None)
    merged.meta.extra.pop("worker", None)
    merged.meta.extra.pop("recovered", None)  # a part taken from its checkpoint: the merged run was not recovered
    merged.meta.extra["interrupted"] = interrupted  # the master's own stop, not a part's
    not_judged_parts(merged, unjudged)
    return merged, {"interrupted": interrupted, "workers": n}

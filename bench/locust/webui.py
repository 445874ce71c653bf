"""Locust's web UI on a bench master (``--locust-web-port``): a window on the run, not its controller.

The run starts by itself (bench decides the start instant), so the UI's stats are reset at that instant -- its
request rates then cover the load only, not the wait for workers -- and its state shows running until the run
ends. Its Stop button stops the run as a first Ctrl-C of the master does (every worker stops its load, a
partial report follows); Start/swarm is refused with a message (a master without Locust users had raised
tracebacks). Importing this module imports locust (gevent) and flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_STOPPED

__all__ = ["REFUSED_START", "STOPPING", "attach", "ended", "started"]

REFUSED_START = ("a bench run starts by itself once its workers are ready: this UI only watches it "
                 "(Stop here, or Ctrl-C on the master, stops it)")
STOPPING = "stopping every worker: the bench master writes a partial report"


def attach(env: Environment, on_stop: Callable[[], None]) -> None:
    """Answer the UI's Start (/swarm) and Stop (/stop) the bench way, before Locust's own handlers run."""
    from flask import jsonify, request

    assert env.web_ui is not None
    app: Any = env.web_ui.app

    def bench_routes() -> Any:
        if request.method != "POST":
            return None
        path = request.path.rstrip("/")
        if path.endswith("/swarm"):
            return jsonify({"success": False, "message": REFUSED_START, "host": env.host})
        if path.endswith("/stop"):
            on_stop()
            return jsonify({"success": True, "message": STOPPING})
        return None

    app.before_request(bench_routes)


def started(env: Environment, epoch: float) -> None:
    """The go was sent: stats from the start instant on, state running."""
    if env.web_ui is None:
        return
    env.stats.reset_all()

    def pin(**_kw: Any) -> None:  # total and current req/s count from the load's start; a Locust worker's own
        env.stats.total.start_time = epoch  # (empty) stats report, folded in, pulls it back to that worker's start

    pin()
    env.events.worker_report.add_listener(pin)  # type: ignore[no-untyped-call]  # after Locust's own listener, which folds the report
    env.runner.update_state(STATE_RUNNING)  # type: ignore[union-attr]


def ended(env: Environment) -> None:
    if env.web_ui is not None and env.runner is not None and env.runner.state == STATE_RUNNING:
        env.runner.update_state(STATE_STOPPED)

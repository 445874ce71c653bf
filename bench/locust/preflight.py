"""The target's preflight for a Locust master, in a process of its own: ``python -m bench.locust.preflight``.

The master runs on gevent, and the preflight is asyncio (a KServe ready wait, a [wallaroo] deployment check):
run in the master's loop it would block Locust's heartbeats for as long as it waits (its workers would give the
master up after 5 s), and gevent's patched subprocess cannot run in a native thread. So the master hands this
process the job on stdin -- ``{"scenario": <bench.locust._core.scenario_job>, "endpoints": {...}, "quiet": bool}``
-- and reads one JSON line on stdout: ``{"endpoints": {...}}`` (what to hand the workers) or ``{"error": TEXT,
"code": N}`` (the single-host run's one line and exit code). Its messages go to stderr as a `bench run`'s do.
Never imports locust.
"""

from __future__ import annotations

import sys

import orjson

__all__ = ["main"]


def main() -> int:
    from bench.errors import BenchError
    from bench.locust import _core

    job = orjson.loads(sys.stdin.buffer.read())
    try:
        prepared = _core.prepare(_core.resolve(job["scenario"]))
        endpoints = _core.preflight(prepared, dict(job["endpoints"]), enabled=True, quiet=bool(job["quiet"]))
    except BenchError as exc:
        answer: dict[str, object] = {"error": str(exc), "code": exc.exit_code}
    else:
        answer = {"endpoints": endpoints}
    sys.stdout.buffer.write(orjson.dumps(answer) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches this process too: the master says "interrupted"
        code = 130
    sys.exit(code)

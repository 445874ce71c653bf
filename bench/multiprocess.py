"""`--processes N`: N load-generator processes on this host, each with its own event loop and its share of the
connections or rate, started at the same wall-clock instant; their reports merge exactly into one.

The parent starts the embedded emulator once (when the scenario asks for it), launches the workers as
``bench run ... --worker i/N@EPOCH --out PART``, waits, merges the parts and prints one summary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INVALID, InputError, RunInvalid
from bench.scenario import Scenario

__all__ = ["run_parent", "run_worker"]

_URL_ENV = "BENCH_WORKER_TARGET_URL"
_DROP_FLAGS = {"--processes": 1, "--out": 1, "-o": 1, "--json": 0, "--quiet": 0, "-q": 0, "--worker": 1}


def _worker_argv(argv: list[str]) -> list[str]:
    """The parent's `bench run` arguments without the ones the parent owns."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _DROP_FLAGS:
            skip = _DROP_FLAGS[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


def _parse_worker(spec: str) -> tuple[int, int, float]:
    try:
        part, epoch = spec.split("@")
        i, n = part.split("/")
        return int(i), int(n), float(epoch)
    except ValueError:
        raise InputError(f"malformed worker spec {spec!r}", key="--worker") from None


@contextlib.contextmanager
def _shared_target(sc: Scenario) -> Iterator[str | None]:
    if not sc.target.embedded:
        yield None
        return
    from bench.emulator.embedded import EmbeddedEmulator, emulator_config_from_mapping

    with EmbeddedEmulator(emulator_config_from_mapping(sc.tables["emulator"], sc.file)) as emu:
        yield emu.base_url if sc.target.kind == "ubiops" else emu.wallaroo_url


def run_parent(args: argparse.Namespace, sc: Scenario, processes: int) -> int:
    from bench.report.merge import merge_reports
    from bench.report.reader import read_report
    from bench.run_command import finish_run, report_path
    from bench.runner import prepare

    prepared = prepare(sc)  # validates everything once, before any process starts
    out_path = report_path(args, sc)
    argv = _worker_argv(sys.argv[1:])
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, _shared_target(sc) as url:
        env = dict(os.environ)
        if url:
            env[_URL_ENV] = url
        epoch = time.time() + 1.0 + 0.2 * processes  # every worker starts its load at this instant
        parts = [Path(tmp) / f"part-{i}.arrow" for i in range(processes)]
        procs = []
        for i in range(processes):
            cmd = [sys.executable, "-m", "bench", *argv, "--worker", f"{i}/{processes}@{epoch}",
                   "--out", str(parts[i]), "--quiet", "--json"]
            cpu = cpus[i % len(cpus)] if cpus else None
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                          preexec_fn=(lambda c=cpu: os.sched_setaffinity(0, {c}))
                                          if cpu is not None else None))
        interrupted = _wait_all(procs)
        missing = [str(i) for i, p in enumerate(parts) if not p.exists()]
        if missing:
            raise RunInvalid(f"worker process(es) {', '.join(missing)} wrote no report "
                             f"(exit codes {[p.returncode for p in procs]})")
        reports = [read_report(p) for p in parts]
        merged = merge_reports(reports)
        merged.meta.load["processes"] = processes
    facts: dict[str, Any] = {"processes": processes, "interrupted": interrupted or merged.run.partial}
    return finish_run(args, sc, prepared, merged, facts, out_path)


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> bool:
    """Wait for every worker; Ctrl-C is forwarded (they write partial reports) and reported as interrupted."""
    interrupted = False
    for p in procs:
        while True:
            try:
                p.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
                for q in procs:
                    if q.poll() is None:
                        q.send_signal(signal.SIGINT)
    return interrupted


def run_worker(args: argparse.Namespace, sc: Scenario) -> int:
    import anyio

    from bench.run_command import finish_run, report_path, run_unwrapped, use_uvloop
    from bench.runner import RunControl, execute, prepare

    i, n, epoch = _parse_worker(args.worker)
    url = os.environ.get(_URL_ENV)
    if url:  # the parent runs the shared embedded emulator
        tables = {**sc.tables, "emulator": {}}
        sc = replace(sc, target=replace(sc.target, url=url), tables=tables)
    prepared = prepare(sc)
    out_path = report_path(args, sc)
    ctl = RunControl(preflight=False, raw_path=None)
    try:
        run, facts = run_unwrapped(lambda: anyio.run(
            lambda: execute(prepared, ctl, start_at_wall=epoch, worker=(i, n)),
            backend="asyncio", backend_options={"use_uvloop": use_uvloop(sc)}))
    except RunInvalid as exc:
        print(f"bench worker {i}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    facts["worker"] = [i, n]
    from bench.report.build import build_report

    return finish_run(args, sc, prepared, build_report(sc, run, facts), facts, out_path)

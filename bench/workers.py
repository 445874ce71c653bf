"""`--processes N`: N load-generator processes on this host, each with its own event loop and its share of the
connections or rate, started at the same wall-clock instant; their reports (and raw logs) merge exactly into one.

The parent (``run_processes``) has already resolved the target (bench.session.resolved_target: one embedded
emulator for all) and runs the preflight once. Each worker is ``python -m bench.workers`` and gets the *resolved*
run on stdin as one JSON object — the scenario document, where to send (``Endpoints``), its share, the start
instant, where to write — so it re-parses nothing from the command line. Workers die with the parent
(PR_SET_PDEATHSIG on Linux) and write partial reports when stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench.errors import EXIT_OK, BenchError, RunInvalid
from bench.facts import RunFacts
from bench.runner import Endpoints, Prepared, RunControl

__all__ = ["hand_off", "run_processes", "worker_main"]


def hand_off(prepared: Prepared, ep: Endpoints, *, worker: tuple[int, int], start_at_wall: float, out: Path,
             raw: Path | None) -> dict[str, Any]:
    """What a worker receives on stdin: everything it needs, already resolved."""
    sc = prepared.scenario
    return {"doc": dict(sc.source), "file": sc.file, "base_dir": str(sc.base_dir), "endpoints": asdict(ep),
            "worker": list(worker), "start_at_wall": start_at_wall, "out": str(out),
            "raw": str(raw) if raw is not None else None}


def run_processes(prepared: Prepared, opts: Any, out_path: Path) -> tuple[Any, RunFacts]:
    """Run ``prepared`` (resolved) in ``opts.processes`` workers; the merged report (not yet written) and facts."""
    import orjson

    from bench.report.merge import merge_reports
    from bench.report.reader import read_report

    processes = int(opts.processes)
    url = _preflight_once(prepared, opts)
    ep = replace(prepared.endpoints or Endpoints(url), inference_url=url)
    raw = prepared.scenario.report.raw
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        epoch = time.time() + 1.0 + 0.2 * processes  # every worker starts its load at this instant
        parts = [Path(tmp) / f"part-{i}.arrow" for i in range(processes)]
        raws = [Path(tmp) / f"part-{i}.raw" if raw else None for i in range(processes)]
        procs = []
        for i in range(processes):
            spec = hand_off(prepared, ep, worker=(i, processes), start_at_wall=epoch, out=parts[i], raw=raws[i])
            cpu = cpus[i % len(cpus)] if cpus else None
            proc = subprocess.Popen([sys.executable, "-m", "bench.workers"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_child_setup(os.getpid(), cpu))
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(orjson.dumps(spec))
            proc.stdin.close()
        interrupted = _wait_all(procs)
        missing = [str(i) for i, p in enumerate(parts) if not p.exists()]
        if missing:
            raise RunInvalid(f"worker process(es) {', '.join(missing)} wrote no report "
                             f"(exit codes {[p.returncode for p in procs]})")
        reports = [read_report(p) for p in parts]
        merged = merge_reports(reports)
        merged.meta.load["processes"] = processes
        if raw:
            merged.run.raw_path = merge_raw(
                [(r, rep.run.start_unix_ns) for r, rep in zip(raws, reports, strict=True) if r is not None],
                merged.run.start_unix_ns, out_path.with_suffix(".raw.tmp"))
    facts = RunFacts(url=str(merged.meta.target.get("url", "")), processes=processes,
                     interrupted=interrupted or merged.run.partial)
    return merged, facts


def _preflight_once(prepared: Prepared, opts: Any) -> str:
    """The parent checks the deployment once (workers skip it) and hands them the URL it resolved."""
    cfg = prepared.preflight_config
    if not opts.preflight or cfg is None or not cfg.enabled:
        return prepared.scenario.target.url
    from bench.run_loop import run_async
    from bench.runner import preflight_url

    ctl = RunControl(message=lambda m: None if opts.quiet else print(m, file=sys.stderr), preflight=True)
    url: str = run_async(prepared, ctl, lambda: preflight_url(prepared, ctl))
    return url


def merge_raw(parts: list[tuple[Path, int]], start_unix_ns: int, out: Path) -> Path:
    """The workers' raw streams as one, times shifted onto the merged run's start (every request kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc

    writer: Any = None
    try:
        for path, part_start in parts:
            if not path.exists():
                continue
            shift = pa.scalar(part_start - start_unix_ns, pa.int64())
            with pa.OSFile(str(path), "rb") as f:
                try:
                    reader = pyarrow.ipc.open_stream(f)
                except pa.ArrowInvalid:
                    continue
                for batch in _batches(reader):
                    cols = {name: batch.column(name) for name in batch.schema.names}
                    for name in ("intended_ns", "sent_ns", "done_ns"):
                        cols[name] = pc.add(cols[name], shift)
                    shifted = pa.record_batch(cols)
                    if writer is None:
                        writer = pyarrow.ipc.new_stream(str(out), shifted.schema)
                    writer.write_batch(shifted)
    finally:
        if writer is not None:
            writer.close()
    return out


def _batches(reader: Any) -> Iterator[Any]:
    import pyarrow as pa

    while True:
        try:
            yield reader.read_next_batch()
        except (StopIteration, pa.ArrowInvalid, OSError):  # a torn tail (killed worker) ends the stream
            return


def _child_setup(parent: int, cpu: int | None) -> Callable[[], None]:
    """preexec_fn: die with the parent (Linux), pinned to one CPU when there are several."""
    prctl = None
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the worker stops (partial report) if the parent dies
            if os.getppid() != parent:  # the parent died before that took effect
                os._exit(1)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> bool:
    """Wait for every worker; Ctrl-C / SIGTERM are forwarded once (they write partial reports) → interrupted."""
    interrupted = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for p in procs:
            while True:
                try:
                    p.wait()
                    break
                except KeyboardInterrupt:
                    if not interrupted:
                        for q in procs:
                            if q.poll() is None:
                                q.send_signal(signal.SIGINT)
                    else:  # a second Ctrl-C: stop waiting for a drain
                        for q in procs:
                            if q.poll() is None:
                                q.kill()
                    interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    return interrupted


def worker_main() -> int:
    """A worker: read the hand-off from stdin, run its share, write its part report (no SLO gate, no summary)."""
    import orjson

    from bench.facts import build_report
    from bench.report.writer import write_report
    from bench.run_loop import run_once
    from bench.runner import point_at, prepare
    from bench.scenario import parse_scenario

    spec = orjson.loads(sys.stdin.buffer.read())
    i, n = spec["worker"]
    try:
        sc = parse_scenario(spec["doc"], file=spec["file"], base_dir=Path(spec["base_dir"]))
        prepared = point_at(prepare(sc), Endpoints(**spec["endpoints"]))
        ctl = RunControl(preflight=False, raw_path=Path(spec["raw"]) if spec["raw"] else None)
        run, facts = run_once(prepared, ctl, start_at_wall=float(spec["start_at_wall"]), worker=(i, n))
    except BenchError as exc:
        print(f"bench worker {i}: {exc}", file=sys.stderr)
        return exc.exit_code
    facts.worker = (i, n)
    report = build_report(prepared.scenario, run, facts)
    report.run.raw_path = None  # the parent merges the raw streams itself
    write_report(Path(spec["out"]), report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(worker_main())

"""`--processes N`: N load-generator processes on this host, each with its own event loop and its share of the
connections or rate, started at the same wall-clock instant; their reports (and raw logs) merge exactly into one.
That instant is agreed once every worker is ready to send (data prepared, token fetched): each says so on a pipe
of its own and the parent answers on its stdin with the instant (a moment later), so a run waits only as long as
its slowest worker takes to get ready, and a big data set cannot make one worker start behind the others.

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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench.errors import EXIT_INTERRUPTED, EXIT_OK, BenchError, RunInvalid
from bench.facts import RunFacts
from bench.runner import Endpoints, Prepared, RunControl, StartGate
from bench.scratch import scratch_dir
from bench.targets import target_for

__all__ = ["Share", "hand_off", "preflight_once", "preflight_wanted", "run_processes", "run_share", "worker_main"]


@dataclass(frozen=True)
class Share:
    """One worker's part of a run, already resolved: what `--processes` workers read on stdin (``to_json``), and
    what a distributed worker (e.g. a Locust worker) gets from its master."""

    doc: Mapping[str, Any]  # the scenario document, overrides applied
    file: str  # where it came from (error messages) ...
    base_dir: str  # ... and what its relative paths are relative to
    endpoints: Endpoints  # where to send (the parent resolved the emulator and the preflight)
    worker: tuple[int, int]  # (i, n): this share of an n-way run
    start_at_wall: float | None  # every share starts its load at this time.time() instant (None: the parent's go)
    raw: Path | None = None  # keep the raw per-request log here (the parent merges it)
    checkpoint: Path | None = None  # append this share's measurements here once a second (bench.checkpoint) ...
    run_id: str = ""  # ... tagged with the run's id, so a recovery never merges another run's parts

    def to_json(self) -> bytes:
        import orjson

        return orjson.dumps({"doc": dict(self.doc), "file": self.file, "base_dir": self.base_dir,
                             "endpoints": asdict(self.endpoints), "worker": list(self.worker),
                             "start_at_wall": self.start_at_wall, "raw": str(self.raw) if self.raw else None,
                             "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                             "run_id": self.run_id})

    @classmethod
    def from_json(cls, data: bytes) -> Share:
        import orjson

        d = orjson.loads(data)
        i, n = d["worker"]
        return cls(doc=d["doc"], file=d["file"], base_dir=d["base_dir"], endpoints=Endpoints(**d["endpoints"]),
                   worker=(int(i), int(n)),
                   start_at_wall=None if d["start_at_wall"] is None else float(d["start_at_wall"]),
                   raw=Path(d["raw"]) if d["raw"] else None,
                   checkpoint=Path(d["checkpoint"]) if d.get("checkpoint") else None, run_id=str(d.get("run_id", "")))


def hand_off(prepared: Prepared, ep: Endpoints, *, worker: tuple[int, int], start_at_wall: float | None,
             raw: Path | None = None, checkpoint: Path | None = None, run_id: str = "") -> Share:
    """The share of ``prepared`` (resolved, pointed at ``ep``) that worker ``(i, n)`` runs."""
    sc = prepared.scenario
    doc = target_for(sc.target.kind).share_doc(sc, prepared.target_config, worker)  # e.g. UbiOps: its budget
    return Share(doc=doc, file=sc.file, base_dir=str(sc.base_dir), endpoints=ep, worker=worker,
                 start_at_wall=start_at_wall, raw=raw, checkpoint=checkpoint, run_id=run_id)


def run_share(share: Share, controls: list[RunControl] | None = None, go: StartGate | None = None) -> Any:
    """Run one share in this process: the part Report (not written; its raw log, if any, stays at ``share.raw``).
    ``controls`` gets the run's RunControl (the parent watch reads whether a stop reached the load); ``go`` gives
    the start instant when the share has none.

    Raises BenchError for bad input or an invalid run, like any run."""
    from bench.facts import build_report
    from bench.run_loop import run_once
    from bench.runner import point_at, prepare
    from bench.scenario import parse_scenario

    sc = parse_scenario(share.doc, file=share.file, base_dir=Path(share.base_dir))
    prepared = point_at(prepare(sc), share.endpoints)
    tag = {"run_id": share.run_id, "worker": list(share.worker)}
    ctl = RunControl(preflight=False, raw_path=share.raw, checkpoint_path=share.checkpoint, checkpoint_tag=tag)
    if controls is not None:
        controls.append(ctl)
    start = share.start_at_wall if share.start_at_wall is not None else go
    run, facts = run_once(prepared, ctl, start_at_wall=start, worker=share.worker)
    facts.worker = share.worker
    report = build_report(prepared.scenario, run, facts, prepared.target_config)
    from bench.secrets import scrub_report

    prepared.scrubber.add(ctl.secrets())
    scrub_report(report, prepared.scrubber)
    report.run.raw_path = None  # the raw stream is the caller's to merge
    return report


def run_processes(prepared: Prepared, opts: Any, out_path: Path) -> tuple[Any, RunFacts]:
    """Run ``prepared`` (resolved) in ``opts.processes`` workers; the merged report (not yet written) and facts."""

    from bench.checkpoint import recover_part, start_parts
    from bench.report.merge import merge_reports
    from bench.report.reader import read_report
    from bench.report.verdict import not_judged_parts

    processes = int(opts.processes)
    url = preflight_once(prepared, opts)
    run_id, ckpts = start_parts(out_path, processes)  # kill -9 of this process: `bench recover` merges these
    ep = replace(prepared.endpoints or Endpoints(url), inference_url=url)
    raw = prepared.scenario.report.raw
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with scratch_dir("workers") as tmp:
        parts = [Path(tmp) / f"part-{i}.arrow" for i in range(processes)]
        raws = [Path(tmp) / f"part-{i}.raw" if raw else None for i in range(processes)]
        procs = []
        ready: list[int] = []  # each worker's "ready to send" pipe (read end)
        try:
            for i in range(processes):
                share = hand_off(prepared, ep, worker=(i, processes), start_at_wall=None, raw=raws[i],
                                 checkpoint=ckpts[i], run_id=run_id)
                cpu = cpus[i % len(cpus)] if cpus else None
                ready_r, ready_w = os.pipe()
                ready.append(ready_r)
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "bench.workers", str(parts[i]), str(os.getpid()),
                                             str(ready_w)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            pass_fds=(ready_w,), start_new_session=True,
                                            preexec_fn=_child_setup(os.getpid(), cpu))
                finally:
                    os.close(ready_w)
                procs.append(proc)
                assert proc.stdin is not None
                proc.stdin.write(share.to_json() + b"\n")
                proc.stdin.flush()
            started, interrupted = _start_together(procs, ready)
        finally:
            for fd in ready:
                os.close(fd)
        interrupted = _wait_all(procs, interrupted=interrupted)
        if interrupted and not started:  # stopped before the load began: nothing measured, nothing to recover
            from bench.checkpoint import discard

            discard(out_path)
            raise KeyboardInterrupt
        missing = [i for i, p in enumerate(parts) if not p.exists()]
        if missing and not started:  # called off before the load (a worker that could not start): nothing measured
            from bench.checkpoint import discard

            discard(out_path)
            raise _wrote_no_report(missing, procs)
        found: dict[int, Any] = {i: read_report(p) for i, p in enumerate(parts) if p.exists()}
        taken: list[int] = []  # workers whose share comes from their checkpoint
        for i in missing:  # killed by a second Ctrl-C, killed or failed on their own (kill -9, OOM), or starting up
            part = recover_part(ckpts[i], run_id)
            if part is not None:
                found[i] = part
                taken.append(i)
        if not found:  # nothing measured anywhere: nothing to recover either
            from bench.checkpoint import discard

            discard(out_path)
            if interrupted:
                raise KeyboardInterrupt
            raise _wrote_no_report(missing, procs)
        lost = [] if interrupted else missing  # no stop of ours ended them
        raws = [raws[i] if parts[i].exists() else None for i in sorted(found)]
        reports = [found[i] for i in sorted(found)]
        merged = merge_reports(reports)
        merged.meta.load["processes"] = processes
        merged.meta.extra.pop("worker", None)  # the merged report is the whole run, not worker 0's share
        merged.meta.extra.pop("recovered", None)  # ... nor worker 0's recovery
        if taken:  # up to their last checkpoint line (their in-flight requests: kind 'abandoned')
            merged.meta.extra["from_checkpoints"] = taken
            not_judged_parts(merged, [f"worker {i}" for i in taken])
        if lost:
            _mark_lost(merged, {i: procs[i].returncode for i in lost})
        merged.meta.extra["interrupted"] = interrupted or (merged.run.partial and not lost)
        if raw:
            merged.run.raw_path = merge_raw(
                [(r, rep.run.start_unix_ns) for r, rep in zip(raws, reports, strict=True) if r is not None],
                merged.run.start_unix_ns, out_path.with_suffix(".raw.tmp"))
    facts = RunFacts(url=str(merged.meta.target.get("url", "")), processes=processes,
                     interrupted=bool(merged.meta.extra["interrupted"]),
                     abandoned=merged.meta.extra.get("abandoned"))
    return merged, facts


def _wrote_no_report(missing: list[int], procs: list[subprocess.Popen[bytes]]) -> RunInvalid:
    return RunInvalid(f"worker process(es) {', '.join(map(str, missing))} wrote no report "
                      f"(exit codes {[p.returncode for p in procs]})")


def _mark_lost(merged: Any, codes: dict[int, int | None]) -> None:
    """Workers that ended without a part, no stop of ours having reached them (kill -9, the OOM killer, a
    crash): their shares come from their checkpoints and the run is partial (exit 3, bench.session)."""
    def how(code: int | None) -> str:
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return signal.Signals(-code).name
            return f"signal {-code}"
        return f"exit code {code}"

    killed = any(c is not None and c < 0 for c in codes.values())
    names = ", ".join(f"worker {i} ({how(c)})" for i, c in sorted(codes.items()))
    merged.run.partial = True
    merged.meta.extra["workers_lost"] = [{"worker": i, "exit_code": c} for i, c in sorted(codes.items())]
    merged.meta.extra["partial_reason"] = (f"a worker process was {'killed' if killed else 'lost'}: {names}; "
                                           "its share up to its last checkpoint")


def preflight_wanted(prepared: Prepared, enabled: bool) -> bool:
    """Whether the run has a preflight to do (a [wallaroo] deployment check, the target's own, e.g. KServe's)."""
    cfg = prepared.preflight_config
    own = target_for(prepared.scenario.target.kind).has_preflight(prepared.target_config)
    return enabled and ((cfg is not None and cfg.enabled) or own)


def preflight_once(prepared: Prepared, opts: Any) -> str:
    """The parent checks the deployment once (workers skip it) and hands them the URL it resolved (a Locust
    master too: bench.locust._core.preflight)."""
    if not preflight_wanted(prepared, bool(opts.preflight)):
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


GO_MARGIN_S = 0.1  # from the go to the common start: time for every worker to read it and be waiting


def _start_together(procs: list[subprocess.Popen[bytes]], ready: list[int]) -> tuple[bool, bool]:
    """Once every worker says it is ready, tell them all the instant their load starts (a moment from now).
    A worker that ends before it is ready (bad input, a failed token fetch), or a Ctrl-C / SIGTERM meanwhile,
    calls the run off: the others are told so (their stdin closes without an instant) and end without sending.
    (started, interrupted)."""
    import selectors

    interrupted = called_off = False
    try:
        with _stops_raise(), selectors.DefaultSelector() as sel:
            for fd in ready:
                sel.register(fd, selectors.EVENT_READ)
            waiting = len(ready)
            while waiting and not called_off:
                for key, _ in sel.select():
                    sel.unregister(key.fd)
                    waiting -= 1
                    if not os.read(key.fd, 16).startswith(b"ready"):  # EOF: the worker ended before it was ready
                        called_off = True
        go = b"" if called_off else f"{time.time() + GO_MARGIN_S + 0.005 * len(procs)!r}\n".encode()
    except KeyboardInterrupt:
        interrupted, go = True, b""
    for proc in procs:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # a worker already gone
            proc.stdin.write(go)
            proc.stdin.close()
    return bool(go), interrupted


@contextlib.contextmanager
def _stops_raise() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt while the parent waits on its workers. SIGINT explicitly too, as
    a single-process run does: a parent started with SIGINT ignored (a background job of a script, some CI
    runners) would otherwise ignore Ctrl-C / kill -INT and run to the end."""

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _wait_all(procs: list[subprocess.Popen[bytes]], *, interrupted: bool = False) -> bool:
    """Wait for every worker; Ctrl-C / SIGTERM are forwarded once (they write partial reports) → interrupted.
    ``interrupted``: a stop already reached them (a further one ends them)."""
    with _stops_raise():
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
    return interrupted


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m bench.workers PART.arrow [PARENT_PID [READY_FD]]``: read a Share (one line) from stdin, run it,
    write the part report there (no SLO gate, no summary: the parent judges the merged run). A share without a
    start instant says "ready" on READY_FD once it can send and reads the instant from stdin (``_start_together``)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0])
    parent = int(args[1]) if len(args) > 1 else os.getppid()  # given: a parent dead before this line is seen
    ready_fd = int(args[2]) if len(args) > 2 else None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # outside the load too: stop, never just vanish
    controls: list[RunControl] = []  # this worker's run, once it has one
    _watch_parent(parent, controls)
    stdin = _LineReader(sys.stdin.fileno())
    share = Share.from_json(stdin.read_line())
    try:
        report = run_share(share, controls, _go_from_parent(stdin, ready_fd))
    except BenchError as exc:
        print(f"bench worker {share.worker[0]}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # stopped before or after the load (no part report to write)
        if os.getppid() != parent:
            _discard(out, share.raw)
        return EXIT_INTERRUPTED
    if os.getppid() != parent:  # the parent died (PR_SET_PDEATHSIG stopped us): nobody will merge this part;
        _discard(out, share.raw)  # its checkpoint (final line: the drained share) is what `bench recover` reads
        return EXIT_OK
    from bench.report.writer import write_report

    write_report(out, report)
    return EXIT_OK


ORPHAN_GRACE_S = 60.0  # an orphaned worker's stop (drain, checkpoint) may take this long before it is ended
def _watch_parent(parent: int, controls: list[RunControl]) -> None:
    """Backs up PR_SET_PDEATHSIG: a parent killed while its workers started up left one waiting for the start
    instant, then loading the target (its SIGTERM landed while the event loop was being set up and nothing acted
    on it). A daemon thread polls the parent; a second after it is gone, a worker whose load was not told to
    stop gets a SIGTERM of its own (the usual graceful stop: the drained share reaches its checkpoint; one already
    stopping is left to drain), and one still there after ORPHAN_GRACE_S is ended."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        time.sleep(1.0)  # PR_SET_PDEATHSIG's SIGTERM is handled first
        if not any(ctl.interrupted for ctl in controls):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


class _LineReader:
    """Lines from a pipe, unbuffered beyond the line asked for (the share's line, later the go's)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""

    def read_line(self) -> bytes:
        """The next line, blocking (without its newline); what is left at EOF."""
        while b"\n" not in self._buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            self._buf += chunk
        return self._take()

    def _take(self) -> bytes:
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    async def read_line_async(self) -> bytes:
        """The next line without blocking the event loop (b"" at EOF)."""
        import anyio

        while b"\n" not in self._buf:
            await anyio.wait_readable(self.fd)
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return b""
            self._buf += chunk
        return self._take()


def _go_from_parent(stdin: _LineReader, ready_fd: int | None) -> StartGate:
    """The worker's side of ``_start_together``: "ready" on ``ready_fd``, then the start instant from stdin (None:
    the run was called off, or the parent is gone)."""

    async def go() -> float | None:
        if ready_fd is None:
            return None
        try:
            os.write(ready_fd, b"ready\n")
        except OSError:  # the parent is gone
            return None
        finally:
            os.close(ready_fd)
        try:
            return float(await stdin.read_line_async())
        except ValueError:  # EOF without an instant
            return None

    return go


def _discard(out: Path, raw: Path | None) -> None:
    """An orphaned worker leaves nothing behind: its raw log, and the parent's temp directory once empty."""
    for path in (out, raw):
        if path is not None:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last worker out removes it (not empty: another is still writing)
        out.parent.rmdir()


if __name__ == "__main__":
    sys.exit(worker_main())

"""Survive ``kill -9``: a single-process run appends what it measured, once a second, to a checkpoint file next to
its report (``.NAME.arrow.checkpoint``); ``bench recover`` (or the next ``bench run`` with the same ``--out``)
turns that into a valid report marked partial, losing at most the last second or two.

The file is JSON lines, append-only (a torn last line — the kill landed mid-write — is ignored):

* line 1, the header: the report's metadata as built for this run (already scrubbed of secrets), the run's
  wall-clock start and warm-up;
* then one line per second: cumulative totals, errors by kind, counters (small), the per-second rows after the
  last closed second (counts and the encoded latency histogram of the ok requests; open seconds are provisional
  and rewritten by the next line), and the error samples when they changed.

A checkpoint costs one flush of the recorder and a few small histogram encodings a second, off the hot path
(the recorder folds in batches anyway). The recovered report has totals, errors, counters, the per-second
series, each phase's answer span (so req/s is the rate answers came back, as in a finished run) and the latency
histogram of ok requests (merged from the per-second ones; a second straddling the end
of warm-up counts as measured); service-time, schedule-lag and error-latency histograms are not checkpointed
and show as missing ("—").

``--processes N``: the parent writes the checkpoint path as a *manifest* (``{"run_id", "processes", "parts"}``)
before it starts the workers; each worker appends its own checkpoint beside it (``.NAME.arrow.wI.checkpoint``,
its header carrying the run id). Recovering the manifest merges the parts of that run id exactly
(``report.merge``); a part left by another run is skipped. Each part also records the engine's ``sent``
count, so requests on the wire at the kill are counted in flight at the end and ``sent = ok + errors + in
flight`` holds in the recovered report; a worker stopped by its parent's death drains and writes a final line
(the whole of its share) before it exits.

A Locust master (bench.locust.parts) writes the same manifest and parts: its workers' engines checkpoint on
their own hosts and send the lines, which the master appends beside its report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from bench.errors import InputError
from bench.inpath import read_input

if TYPE_CHECKING:
    from bench.prepared import Prepared
    from bench.recorder import Recorder
    from bench.report.model import Report

__all__ = ["Checkpoint", "checkpoint_path", "discard", "part_path", "recover", "recover_leftover", "recover_part",
           "recover_to", "report_path_for", "start_parts"]

_SUFFIX = ".checkpoint"
_SAMPLES_EVERY = 30  # ticks: error samples are rewritten when they change, and at least this often


_PERIOD_NS = 1_000_000_000  # a checkpoint line per second ...
_PHASE_NS = 250_000_000  # ... at this offset from the run's second boundaries (see Checkpoint.run)


def checkpoint_path(report: Path) -> Path:
    """Where the run that writes ``report`` keeps its checkpoint."""
    report = Path(report)
    return report.with_name(f".{report.name}{_SUFFIX}")


def part_path(report: Path, worker: int) -> Path:
    """Where ``--processes`` worker ``worker`` of the run that writes ``report`` keeps its checkpoint."""
    report = Path(report)
    return report.with_name(f".{report.name}.w{worker}{_SUFFIX}")


def report_path_for(checkpoint: Path) -> Path:
    """The report a checkpoint belongs to (inverse of ``checkpoint_path``; one worker's part: ``NAME.wI.arrow``)."""
    name = checkpoint.name
    if name.startswith(".") and name.endswith(_SUFFIX):
        base = name[1:-len(_SUFFIX)]
        head, dot, tail = base.rpartition(".")
        if dot and tail[:1] == "w" and tail[1:].isdigit():  # a worker's part: NAME.arrow.wI
            stem, _, ext = head.rpartition(".")
            return checkpoint.with_name(f"{stem}.{tail}.{ext}" if stem else f"{head}.{tail}")
        return checkpoint.with_name(base)
    return checkpoint.with_name(f"{checkpoint.stem}.recovered.arrow")


def start_parts(report: Path, processes: int, extra: dict[str, Any] | None = None) -> tuple[str, list[Path]]:
    """The parent of a ``--processes`` run (or a Locust master): write the manifest at ``checkpoint_path(report)``
    (run id, part names; ``extra``: added to the recovered report's ``meta.extra``) before any worker starts;
    returns the run id and each worker's checkpoint path."""
    import uuid

    run_id = uuid.uuid4().hex
    parts = [part_path(report, i) for i in range(processes)]
    manifest = {"bench_checkpoint": 1, "run_id": run_id, "processes": processes, "parts": [p.name for p in parts],
                **({"extra": extra} if extra else {})}
    path = checkpoint_path(report)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(manifest) + b"\n")
    tmp.replace(path)
    return run_id, parts


def discard(report: Path) -> None:
    """The report is written: remove the run's checkpoint and, for a manifest, the parts it names."""
    path = checkpoint_path(report)
    try:
        header = _lines(path)[0]
    except InputError:
        header = {}
    for name in header.get("parts", []) if isinstance(header.get("parts"), list) else []:
        path.with_name(str(name)).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


class Checkpoint:
    """The appending writer; ``run`` is the once-a-second task, ``close`` ends it (the file stays until the
    report is written: bench.session removes it then)."""

    def __init__(self, path: Path, header: dict[str, Any], scrub: Callable[[str], str]) -> None:
        self.path = Path(path)
        self._scrub = scrub
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open for the run, closed in close()
        self._after = -1  # highest second already written as closed (final)
        self._ticks = 0
        self._samples_key: Any = None
        self.sent_probe: Callable[[], int] | None = None  # the engine's requests taken on so far (set by the runner)
        self._write(header)

    @classmethod
    def start(cls, path: Path, prepared: Prepared, recorder: Recorder, url: str,
              tag: dict[str, Any] | None = None, issued: Callable[[], Iterable[str]] = tuple) -> Checkpoint:
        """Open the checkpoint of a run whose recorder was just created (header: the report's metadata).
        ``issued``: the tokens issued so far (they change during the run, and a server may echo them)."""
        from bench.facts import RunFacts, build_report
        from bench.rundata import MEASURED, WARMUP, PerSecond, Phase, RunData, Totals

        empty = RunData(start_unix_ns=recorder.start_unix_ns, phases=[Phase(WARMUP, 0.0, 0.0),
                                                                      Phase(MEASURED, 0.0, 0.0)],
                        partial=True, histograms={}, series=PerSecond(),
                        totals={WARMUP: Totals(), MEASURED: Totals()})
        facts = RunFacts(url="embedded" if prepared.embedded else url)
        meta = build_report(prepared.scenario, empty, facts, prepared.target_config).meta
        scrubber = prepared.scrubber
        header = {"bench_checkpoint": 1, "start_unix_ns": recorder.start_unix_ns,
                  "warmup_s": (recorder.warmup_end_ns - recorder.start_ns) / 1e9,
                  "meta": scrubber.data(meta.to_json_dict()), **(tag or {})}

        def scrub(detail: str) -> str:
            scrubber.add(issued())
            return scrubber.sample(detail)

        return cls(path, header, scrub)

    def _write(self, obj: Any) -> None:
        self._file.write(orjson.dumps(obj) + b"\n")
        self._file.flush()  # the page cache survives the process: kill -9 loses nothing written here

    def tick(self, recorder: Recorder, *, final_end_ns: int | None = None, stopping: bool = False) -> None:
        state = recorder.checkpoint(self._after)
        if stopping:
            state["stopping"] = True
        if self.sent_probe is not None and "sent" not in state["counters"]:  # read after the flush: consistent
            state["sent"] = int(self.sent_probe())
        if final_end_ns is not None:
            state["elapsed_s"] = max(0.0, (final_end_ns - recorder.start_ns) / 1e9)
            state["final"] = True
        self._after = max(self._after, int(state["closed_upto"]))
        samples = state.pop("samples")
        key = [(k, st, d) for k, st, d, _ in samples]
        if key != self._samples_key or self._ticks % _SAMPLES_EVERY == 0 or final_end_ns is not None:
            self._samples_key = key
            state["samples"] = [[k, st, self._scrub(d), c] for k, st, d, c in samples]
        self._ticks += 1
        self._write(state)

    def final(self, recorder: Recorder, end_ns: int) -> None:
        """After ``recorder.finish``: the whole run (drained, in-flight-at-end counted) as one last line, then
        close. A worker orphaned by its parent's ``kill -9`` leaves exactly this behind."""
        if not self._file.closed:
            try:
                self.tick(recorder, final_end_ns=end_ns)
            finally:
                self.close()

    async def run(self, recorder: Recorder, stop: anyio.Event) -> None:
        """Once a second until the load stops, and once when it stops (``"stopping"``: the state at a Ctrl-C, in
        case the drain that follows is cut short by a kill); the final line follows the drain.

        A tick blocks the event loop, and sends due meanwhile leave late: so it runs a quarter of a second off the
        run's second boundaries (where the recorder closes seconds and the progress view asks for figures), and
        its slow parts are done ahead in separate loop turns (``Recorder.checkpoint_steps``)."""
        while not stop.is_set():
            wait_ns = _PERIOD_NS - (time.monotonic_ns() - recorder.start_ns - _PHASE_NS) % _PERIOD_NS
            with anyio.move_on_after(wait_ns / 1e9):
                await stop.wait()
            if stop.is_set() or self._file.closed:
                break
            for _ in recorder.checkpoint_steps():
                await anyio.sleep(0)
            if not stop.is_set() and not self._file.closed:
                self.tick(recorder)
        if not self._file.closed:
            self.tick(recorder, stopping=True)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise InputError("no such checkpoint file", file=str(path))
    data = read_input(path)
    out = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            break  # a torn tail: the process died mid-write
        if isinstance(obj, dict):
            out.append(obj)
    if not out or out[0].get("bench_checkpoint") != 1:
        raise InputError("not a bench checkpoint file", file=str(path))
    return out


def recover(path: Path) -> Report:
    """The report a checkpoint holds: partial, with ``extra.recovered`` = the seconds it covers. A ``--processes``
    manifest: the merged parts of its run."""
    return _recover(Path(path))[0]


def recover_part(path: Path, run_id: str) -> Report | None:
    """One worker's part of run ``run_id`` from its checkpoint, or None (missing, another run's, or empty)."""
    try:
        lines = _lines(Path(path))
    except InputError:
        return None
    if lines[0].get("run_id") != run_id or len(lines) < 2:
        return None
    report = _report(Path(path), lines)
    if isinstance(lines[0].get("worker"), list):
        report.meta.extra["worker"] = lines[0]["worker"]  # tells the parts apart (report.merge.run_identity)
    return report


def _recover(path: Path) -> tuple[Report, list[Path]]:
    """The recovered report and the checkpoint files it consumed."""
    lines = _lines(path)
    if "parts" in lines[0]:
        return _recover_parts(path, lines[0])
    return _report(path, lines), [path]


def _recover_parts(path: Path, header: dict[str, Any]) -> tuple[Report, list[Path]]:
    """Merge the workers' checkpoints of the manifest's run (exactly, like the parent merges their reports)."""
    from bench.report.accounting import request_accounting
    from bench.report.merge import merge_reports

    run_id = str(header.get("run_id", ""))
    names = [str(n) for n in header.get("parts", [])]
    parts, used, skipped = [], [], []
    for name in names:
        part = recover_part(path.with_name(name), run_id)
        if part is None:
            skipped.append(name)
        else:
            parts.append(part)
            used.append(path.with_name(name))
    if not parts:
        raise InputError(f"none of the {len(names)} worker checkpoints of this run holds a measurement (missing, "
                         "empty, or another run's): nothing to recover", file=str(path))
    merged = merge_reports(parts)
    merged.meta.load["processes"] = int(header.get("processes", len(names)))
    merged.meta.extra.pop("worker", None)  # the whole run, not worker 0's share
    seconds = max(float(p.meta.extra["recovered"]["seconds"]) for p in parts)
    merged.meta.extra.update(interrupted=True, recovered={
        "from": str(path), "seconds": round(seconds, 3), "workers": len(parts), "processes": len(names),
        **({"skipped": skipped} if skipped else {})})
    merged.meta.extra.pop("merged_from", None)
    if isinstance(header.get("extra"), dict):  # e.g. a Locust master's {"locust": {...}}
        merged.meta.extra.update({str(k): v for k, v in header["extra"].items() if k not in ("recovered",)})
    accounting = request_accounting(merged.run)
    if accounting is not None:
        merged.meta.extra["accounting"] = accounting
    return merged, [path, *used]


def _report(path: Path, lines: list[dict[str, Any]]) -> Report:
    """``_build_report``, with a field of the wrong type (a damaged or hand-edited file) an InputError."""
    try:
        return _build_report(path, lines)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"damaged checkpoint: a field has the wrong type or is missing ({type(exc).__name__}: "
                         f"{exc})", file=str(path)) from None


def _build_report(path: Path, lines: list[dict[str, Any]]) -> Report:
    import numpy as np

    from bench.hdr import Histogram
    from bench.report.accounting import ABANDONED, request_accounting
    from bench.report.model import Report, ReportMeta
    from bench.rundata import MEASURED, WARMUP, ErrorCount, ErrorSample, HistKey, PerSecond, Phase, RunData, Totals

    header, ticks = lines[0], lines[1:]
    if not ticks:
        raise InputError("the run was stopped before its first checkpoint (under a second of load): "
                         "nothing to recover", file=str(path))
    rows: dict[int, dict[str, Any]] = {}
    samples: list[Any] = []
    for tick in ticks:
        for row in tick.get("series", []):
            rows[int(row["second"])] = row
        if "samples" in tick:
            samples = tick["samples"]
    last = ticks[-1]
    warmup_s = float(header.get("warmup_s", 0.0))
    end_s = float(last.get("elapsed_s", 0.0))
    totals = {ph: Totals(**{k: int(v) for k, v in t.items() if k in Totals.__slots__})
              for ph, t in last.get("totals", {}).items()}
    counters = {str(k): int(v) for k, v in last.get("counters", {}).items()}
    errors = {(str(k), int(st), str(ph)): int(c) for k, st, ph, c in last.get("errors", [])}
    if "sent" not in counters and isinstance(last.get("sent"), int):  # killed mid-run: some were on the wire
        counters["sent"] = int(last["sent"])
        in_flight = counters["sent"] - sum(t.ok + t.errors for t in totals.values())
        if in_flight > 0:  # counted like the runner's in-flight-at-end: errors of kind 'abandoned'
            phase = MEASURED if end_s >= warmup_s else WARMUP
            tot = totals.setdefault(phase, Totals())
            tot.requests += in_flight
            tot.errors += in_flight
            errors[(ABANDONED, 0, phase)] = errors.get((ABANDONED, 0, phase), 0) + in_flight
            counters["in_flight_at_end"] = counters.get("in_flight_at_end", 0) + in_flight
            row = rows.setdefault(int(end_s), {"second": int(end_s), "hdr": ""})
            row.update(requests=int(row.get("requests", 0)) + in_flight, errors=int(row.get("errors", 0)) + in_flight)
    seconds = sorted(rows)
    series = PerSecond(second=np.array(seconds, dtype=np.int64),
                       **{c: np.array([int(rows[s].get(c, 0)) for s in seconds], dtype=np.int64)
                          for c in PerSecond.COUNT_COLUMNS},
                       hdr=[str(rows[s].get("hdr", "")) for s in seconds])
    histograms: dict[HistKey, Histogram] = {}
    for phase_name, measured in ((WARMUP, False), (MEASURED, True)):
        h = Histogram.merged(Histogram.decode(rows[s]["hdr"]) for s in seconds
                             if rows[s].get("hdr") and (s + 1 > warmup_s) == measured)
        if h.total:
            histograms[HistKey("latency", phase_name, "ok")] = h
    run = RunData(start_unix_ns=int(header["start_unix_ns"]),
                  phases=[Phase(WARMUP, 0.0, min(warmup_s, end_s)), Phase(MEASURED, min(warmup_s, end_s), end_s)],
                  partial=True, histograms=histograms, series=series, totals=totals, counters=counters,
                  errors=[ErrorCount(k, st, ph, c) for (k, st, ph), c in sorted(errors.items())],
                  error_samples=[ErrorSample(str(k), int(st), str(d), int(c)) for k, st, d, c in samples],
                  done_span={str(ph): (float(lo), float(hi)) for ph, (lo, hi) in last.get("span", {}).items()})
    meta = ReportMeta.from_json_dict(header.get("meta", {}))
    from bench.report.writer import utc_iso

    meta.end_utc = utc_iso(run.start_unix_ns + int(end_s * 1e9))
    meta.extra = {**meta.extra, "interrupted": True,
                  "recovered": {"from": str(path), "seconds": round(end_s, 3)}}
    accounting = request_accounting(run)
    if accounting is not None:  # sent = ok + errors + in flight at the kill (or at the drained end)
        meta.extra["accounting"] = accounting
    return Report(meta=meta, run=run)


def recover_to(checkpoint: Path, out: Path) -> Report:
    """Recover ``checkpoint`` into the report file ``out`` (atomic), then remove the checkpoint(s) it used."""
    from bench.report.writer import write_report

    report, used = _recover(Path(checkpoint))
    write_report(out, report)
    for path in used:
        path.unlink(missing_ok=True)
    return report


def recover_leftover(report: Path, message: Callable[[str], None]) -> Path | None:
    """Before a run writes ``report``: a checkpoint left there by a killed run is recovered beside it
    (``NAME.recovered.arrow``) rather than overwritten; returns where, or None."""
    leftover = checkpoint_path(report)
    if not leftover.exists():
        return None
    out = report.with_name(f"{report.stem}.recovered{report.suffix or '.arrow'}")
    try:
        recover_to(leftover, out)
    except InputError as exc:
        message(f"a checkpoint of an earlier run could not be recovered ({exc.problem}); removed")
        discard(report)
        return None
    message(f"recovered the checkpoint of an earlier, killed run with this --out to {out} (partial)")
    return out

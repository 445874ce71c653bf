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
series and the latency histogram of ok requests (merged from the per-second ones; a second straddling the end
of warm-up counts as measured); service-time, schedule-lag and error-latency histograms are not checkpointed
and show as missing ("—").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from bench.errors import InputError

if TYPE_CHECKING:
    from bench.prepared import Prepared
    from bench.recorder import Recorder
    from bench.report.model import Report

__all__ = ["Checkpoint", "checkpoint_path", "recover", "recover_leftover", "recover_to", "report_path_for"]

_SUFFIX = ".checkpoint"
_SAMPLES_EVERY = 30  # ticks: error samples are rewritten when they change, and at least this often


def checkpoint_path(report: Path) -> Path:
    """Where the run that writes ``report`` keeps its checkpoint."""
    report = Path(report)
    return report.with_name(f".{report.name}{_SUFFIX}")


def report_path_for(checkpoint: Path) -> Path:
    """The report a checkpoint belongs to (inverse of ``checkpoint_path``)."""
    name = checkpoint.name
    if name.startswith(".") and name.endswith(_SUFFIX):
        return checkpoint.with_name(name[1:-len(_SUFFIX)])
    return checkpoint.with_name(f"{checkpoint.stem}.recovered.arrow")


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
        self._write(header)

    @classmethod
    def start(cls, path: Path, prepared: Prepared, recorder: Recorder, url: str) -> Checkpoint:
        """Open the checkpoint of a run whose recorder was just created (header: the report's metadata)."""
        from bench.facts import RunFacts, build_report
        from bench.rundata import MEASURED, WARMUP, PerSecond, Phase, RunData, Totals

        empty = RunData(start_unix_ns=recorder.start_unix_ns, phases=[Phase(WARMUP, 0.0, 0.0),
                                                                      Phase(MEASURED, 0.0, 0.0)],
                        partial=True, histograms={}, series=PerSecond(),
                        totals={WARMUP: Totals(), MEASURED: Totals()})
        facts = RunFacts(url="embedded" if prepared.embedded else url)
        meta = build_report(prepared.scenario, empty, facts).meta
        scrubber = prepared.scrubber
        header = {"bench_checkpoint": 1, "start_unix_ns": recorder.start_unix_ns,
                  "warmup_s": (recorder.warmup_end_ns - recorder.start_ns) / 1e9,
                  "meta": scrubber.data(meta.to_json_dict())}
        return cls(path, header, scrubber.text)

    def _write(self, obj: Any) -> None:
        self._file.write(orjson.dumps(obj) + b"\n")
        self._file.flush()  # the page cache survives the process: kill -9 loses nothing written here

    def tick(self, recorder: Recorder) -> None:
        state = recorder.checkpoint(self._after)
        self._after = max(self._after, int(state["closed_upto"]))
        samples = state.pop("samples")
        key = [(k, st, d) for k, st, d, _ in samples]
        if key != self._samples_key or self._ticks % _SAMPLES_EVERY == 0:
            self._samples_key = key
            state["samples"] = [[k, st, self._scrub(d), c] for k, st, d, c in samples]
        self._ticks += 1
        self._write(state)

    async def run(self, recorder: Recorder, stop: anyio.Event) -> None:
        """Once a second until the load stops (the final report supersedes the checkpoint)."""
        while not stop.is_set():
            with anyio.move_on_after(1.0):
                await stop.wait()
            if not stop.is_set() and not self._file.closed:
                self.tick(recorder)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("no such checkpoint file", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=str(path)) from None
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
    """The report a checkpoint holds: partial, with ``extra.recovered`` = the seconds it covers."""
    import numpy as np

    from bench.hdr import Histogram
    from bench.report.model import Report, ReportMeta
    from bench.rundata import MEASURED, WARMUP, ErrorCount, ErrorSample, HistKey, PerSecond, Phase, RunData, Totals

    lines = _lines(Path(path))
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
    seconds = sorted(rows)
    series = PerSecond(second=np.array(seconds, dtype=np.int64),
                       **{c: np.array([int(rows[s].get(c, 0)) for s in seconds], dtype=np.int64)
                          for c in PerSecond.COUNT_COLUMNS},
                       hdr=[str(rows[s].get("hdr", "")) for s in seconds])
    histograms: dict[HistKey, Histogram] = {}
    for phase, measured in ((WARMUP, False), (MEASURED, True)):
        h = Histogram.merged(Histogram.decode(rows[s]["hdr"]) for s in seconds
                             if rows[s].get("hdr") and (s + 1 > warmup_s) == measured)
        if h.total:
            histograms[HistKey("latency", phase, "ok")] = h
    totals = {ph: Totals(**{k: int(v) for k, v in t.items() if k in Totals.__slots__})
              for ph, t in last.get("totals", {}).items()}
    run = RunData(start_unix_ns=int(header["start_unix_ns"]),
                  phases=[Phase(WARMUP, 0.0, min(warmup_s, end_s)), Phase(MEASURED, min(warmup_s, end_s), end_s)],
                  partial=True, histograms=histograms, series=series, totals=totals,
                  counters={str(k): int(v) for k, v in last.get("counters", {}).items()},
                  errors=[ErrorCount(str(k), int(st), str(ph), int(c)) for k, st, ph, c in last.get("errors", [])],
                  error_samples=[ErrorSample(str(k), int(st), str(d), int(c)) for k, st, d, c in samples])
    meta = ReportMeta.from_json_dict(header.get("meta", {}))
    from bench.report.writer import utc_iso

    meta.end_utc = utc_iso(run.start_unix_ns + int(end_s * 1e9))
    meta.extra = {**meta.extra, "interrupted": True,
                  "recovered": {"from": str(path), "seconds": round(end_s, 3)}}
    return Report(meta=meta, run=run)


def recover_to(checkpoint: Path, out: Path) -> Report:
    """Recover ``checkpoint`` into the report file ``out`` (atomic), then remove the checkpoint."""
    from bench.report.writer import write_report

    report = recover(checkpoint)
    write_report(out, report)
    checkpoint.unlink(missing_ok=True)
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
        leftover.unlink(missing_ok=True)
        return None
    message(f"recovered the checkpoint of an earlier, killed run with this --out to {out} (partial)")
    return out

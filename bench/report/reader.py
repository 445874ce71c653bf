"""Read a report file back into the model (exact round trip of histograms and series).

The raw per-request section is NOT loaded by ``read_report`` (it can be huge); ``iter_raw`` streams it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from bench.errors import InputError
from bench.report.model import (
    SCHEMA_VERSION,
    ErrorCount,
    ErrorSample,
    HistKey,
    Histogram,
    PerSecond,
    Phase,
    Report,
    ReportMeta,
    RunData,
    Totals,
)

__all__ = ["iter_raw", "read_report"]


def _open(path: Path) -> pyarrow.ipc.RecordBatchFileReader:
    if not path.exists():
        raise InputError("no such file", file=str(path))
    try:
        reader = pyarrow.ipc.open_file(str(path))
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InputError(f"not a bench report (not a complete Arrow IPC file; truncated?): {exc}",
                         file=str(path)) from exc
    md = reader.schema.metadata or {}
    version = md.get(b"bench.schema_version")
    if version is None or b"bench.report" not in md:
        raise InputError("not a bench report (Arrow file without bench metadata)", file=str(path))
    if version != str(SCHEMA_VERSION).encode():
        raise InputError(f"report schema version {version.decode(errors='replace')} is not supported "
                         f"(this bench reads version {SCHEMA_VERSION})", file=str(path))
    return reader


def _section_batches(reader: pyarrow.ipc.RecordBatchFileReader, path: Path,
                     skip_raw: bool) -> Iterator[tuple[str, pa.RecordBatch]]:
    for i in range(reader.num_record_batches):
        try:
            b = reader.get_batch(i)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"corrupt report batch {i}: {exc}", file=str(path)) from exc
        if b.num_rows == 0:
            continue
        section = b.column("section")[0].as_py()
        if skip_raw and section == "raw":
            continue
        yield section, b


def _pylist(b: pa.RecordBatch) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = b.to_pylist()
    return rows


def read_report(path: Path | str) -> Report:
    """Load a report (everything but the raw log). Raises InputError for anything that is not one."""
    path = Path(path)
    reader = _open(path)
    meta_json: dict[str, Any] = {}
    phases: list[Phase] = []
    totals: dict[str, Totals] = {}
    hists: dict[HistKey, Histogram] = {}
    counters: dict[str, int] = {}
    gauges: dict[str, dict[int, float]] = {}
    errors: list[ErrorCount] = []
    samples: list[ErrorSample] = []
    series = PerSecond()
    try:
        for section, b in _section_batches(reader, path, skip_raw=False):
            if section == "raw":
                continue  # streamed by iter_raw, never loaded here
            if section == "series":
                cols = {c: np.asarray(b.column(c).to_numpy(zero_copy_only=False), dtype=np.int64)
                        for c in ("second", *PerSecond.COUNT_COLUMNS)}
                part = PerSecond(**cols, hdr=[h or "" for h in b.column("hdr").to_pylist()])
                series = _concat(series, part)
                continue
            for r in _pylist(b):
                if section == "meta":
                    meta_json[r["name"]] = json.loads(r["text"])
                elif section == "phase":
                    phases.append(Phase(r["name"], r["start_s"], r["end_s"]))
                elif section == "total":
                    totals[r["phase"]] = Totals(**{f: r[f] for f in Totals.__slots__})
                elif section == "histogram":
                    hists[HistKey(r["name"], r["phase"], r["outcome"])] = Histogram.decode(
                        r["hdr"], min_us=r["min_us"], max_us=r["max_us"])
                elif section == "counter":
                    counters[r["name"]] = r["count"]
                elif section == "gauge":
                    gauges.setdefault(r["name"], {})[r["second"]] = r["value"]
                elif section == "error":
                    errors.append(ErrorCount(r["name"], r["status"], r["phase"], r["count"]))
                elif section == "error_sample":
                    samples.append(ErrorSample(r["name"], r["status"], r["text"], r["count"]))
                # unknown sections from newer minor additions are ignored
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed bench report: {exc}", file=str(path)) from exc
    partial = bool(meta_json.pop("partial", False))
    start_unix_ns = int(meta_json.pop("start_unix_ns", 0))
    run = RunData(start_unix_ns=start_unix_ns, phases=phases, partial=partial, histograms=hists,
                  series=series, totals=totals, counters=counters, gauges=gauges, errors=errors,
                  error_samples=samples, raw_path=None)
    report = Report(meta=ReportMeta.from_json_dict(meta_json), run=run, path=path)
    return report


def _concat(a: PerSecond, b: PerSecond) -> PerSecond:
    if not len(a):
        return b
    cols = {c: np.concatenate([getattr(a, c), getattr(b, c)]) for c in ("second", *PerSecond.COUNT_COLUMNS)}
    return PerSecond(**cols, hdr=a.hdr + b.hdr)


def iter_raw(path: Path | str) -> Iterator[pa.RecordBatch]:
    """The per-request rows (section 'raw'), batch by batch, in the report's column layout."""
    path = Path(path)
    reader = _open(path)
    for section, b in _section_batches(reader, path, skip_raw=False):
        if section == "raw":
            yield b

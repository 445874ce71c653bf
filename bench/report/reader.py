"""Read a report file back into the model (exact round trip of histograms and series).

The raw per-request section is NOT loaded by ``read_report`` (it can be huge); ``iter_raw`` streams it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.ipc

from bench.errors import InputError
from bench.inpath import input_file
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


# Everything a damaged file can make pyarrow, json, the HDR decoder or the model raise while reading.
_BAD = (pa.ArrowException, KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
        NotImplementedError, OSError, RecursionError)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _open(path: Path) -> pyarrow.ipc.RecordBatchFileReader:
    if not path.exists():
        raise InputError("no such file", file=str(path))
    if path.is_dir():
        raise InputError("is a directory, not a report file", file=str(path))
    input_file(path)  # a FIFO or a device: pyarrow would wait on it forever
    try:
        reader = pyarrow.ipc.open_file(str(path))
    except _BAD as exc:
        raise InputError(f"not a bench report (not a complete Arrow IPC file; truncated?): {_one_line(exc)}",
                         file=str(path)) from exc
    md = reader.schema.metadata or {}
    version = md.get(b"bench.schema_version")
    if version is None or b"bench.report" not in md:
        if b"bench.capacity_version" in md:  # capacity_report.VERSION_KEY (that module imports this one)
            raise InputError("a capacity report (bench capacity), not a run report: view it with `bench report`, or "
                             "compare two runs, e.g. the step-*.arrow reports beside it", file=str(path))
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
            b.validate(full=True)  # before touching any value: a damaged buffer must not crash the process
            if b.num_rows == 0:
                continue
            section = b.column("section")[0].as_py()
        except _BAD as exc:
            raise InputError(f"corrupt report batch {i}: {_one_line(exc)}", file=str(path)) from exc
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
    done_span: dict[str, tuple[float, float]] = {}
    series = PerSecond()
    extra_sections: dict[str, list[dict[str, Any]]] = {}
    try:
        for section, b in _section_batches(reader, path, skip_raw=False):
            if section == "raw":
                continue  # streamed by iter_raw, never loaded here
            if section == "series":
                cols = {c: _int_column(b, c) for c in ("second", *PerSecond.COUNT_COLUMNS)}
                part = PerSecond(**cols, hdr=[h or "" for h in b.column("hdr").to_pylist()])
                for i in range(len(part)):
                    part.histogram(i)  # a damaged per-second histogram fails here, not later in a view
                series = _concat(series, part)
                continue
            for r in _pylist(b):
                if section == "meta":
                    meta_json[_str(r["name"])] = json.loads(_str(r["text"]))
                elif section == "phase":
                    phases.append(Phase(_str(r["name"]), float(r["start_s"]), float(r["end_s"])))
                elif section == "total":
                    totals[_str(r["phase"])] = Totals(**{f: _int(r[f]) for f in Totals.__slots__})
                elif section == "histogram":
                    hists[HistKey(_str(r["name"]), _str(r["phase"]), _str(r["outcome"]))] = Histogram.decode(
                        _str(r["hdr"]), min_us=_int(r["min_us"]), max_us=_int(r["max_us"]))
                elif section == "counter":
                    counters[_str(r["name"])] = _int(r["count"])
                elif section == "gauge":
                    gauges.setdefault(_str(r["name"]), {})[_int(r["second"])] = float(r["value"])
                elif section == "error":
                    errors.append(ErrorCount(_str(r["name"]), _int(r["status"]), _str(r["phase"]), _int(r["count"])))
                elif section == "error_sample":
                    samples.append(ErrorSample(_str(r["name"]), _int(r["status"]), _str(r["text"]), _int(r["count"])))
                elif section == "done_span":
                    done_span[_str(r["phase"])] = (float(r["start_s"]), float(r["end_s"]))
                else:
                    extra_sections.setdefault(section, []).append(r)  # kept as is (newer additions too)
        partial = bool(meta_json.pop("partial", False))
        start_unix_ns = int(meta_json.pop("start_unix_ns", 0))
        meta = _meta(meta_json)
    except InputError:
        raise
    except _BAD as exc:
        raise InputError(f"malformed bench report: {_one_line(exc)}", file=str(path)) from exc
    run = RunData(start_unix_ns=start_unix_ns, phases=phases, partial=partial, histograms=hists,
                  series=series, totals=totals, counters=counters, gauges=gauges, errors=errors,
                  error_samples=samples, raw_path=None, done_span=done_span)
    report = Report(meta=meta, run=run, path=path, sections=extra_sections)
    return report


def _int_column(b: pa.RecordBatch, name: str) -> npt.NDArray[np.int64]:
    col = b.column(name)
    if col.null_count or not pa.types.is_integer(col.type):
        raise TypeError(f"series column {name}: expected whole numbers without gaps")
    out: npt.NDArray[np.int64] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    return out


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, got {type(value).__name__}")
    return value


_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "scenario_name": str, "scenario_text": str, "bench_version": str, "python_version": str, "libraries": dict,
    "host": str, "start_utc": str, "end_utc": str, "load": dict, "target": dict, "generator_bound": bool,
    "generator_bound_reasons": list, "cpu_fraction": (int, float, type(None)), "extra": dict,
    "schema_version": int}


def _meta(data: dict[str, Any]) -> ReportMeta:
    """ReportMeta from the meta rows, every known field of the right JSON type (the views rely on it)."""
    if "scenario_name" not in data:
        raise KeyError("meta field scenario_name missing")
    for key, kind in _META_TYPES.items():
        if key in data and not isinstance(data[key], kind):
            raise TypeError(f"meta field {key}: expected {getattr(kind, '__name__', 'a number')}, "
                            f"got {type(data[key]).__name__}")
    return ReportMeta.from_json_dict(data)


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

"""Write a run's report as ONE Arrow IPC file (long format, one ``section`` column; see docs/report-format.md).

Crash safety: the file is written under a temporary name in the target directory, fsynced, then atomically
renamed, so a report path either holds a complete file or nothing. The rename goes to ``bench.outpath.output_file``:
a symlink's target (the link stays), never over a device, FIFO or directory. The raw per-request log (when the
recorder kept one) is copied batch by batch from the recorder's stream file — never whole in memory.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc

from bench.outpath import output_file
from bench.report.model import SCHEMA_VERSION, Histogram, Report, ReportMeta, RunData
from bench.results import Kind, kind_name
from bench.secrets import SECRET_NAME

__all__ = ["SCHEMA", "default_report_path", "make_meta", "redact_scenario", "utc_iso", "write_arrow_file",
           "write_report"]

META_KEY = b"bench.report"  # schema metadata key holding the JSON metadata
VERSION_KEY = b"bench.schema_version"

SCHEMA = pa.schema([
    ("section", pa.string()),  # meta | phase | total | histogram | series | gauge | counter | error |
                               # error_sample | raw
    ("name", pa.string()),
    ("phase", pa.string()),
    ("outcome", pa.string()),
    ("second", pa.int64()),
    ("text", pa.string()),
    ("hdr", pa.string()),
    ("count", pa.int64()),
    ("min_us", pa.int64()),
    ("max_us", pa.int64()),
    ("min_ms", pa.float64()),
    ("max_ms", pa.float64()),
    ("mean_ms", pa.float64()),
    ("p50_ms", pa.float64()),
    ("p90_ms", pa.float64()),
    ("p99_ms", pa.float64()),
    ("p999_ms", pa.float64()),
    ("value", pa.float64()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("requests", pa.int64()),
    ("ok", pa.int64()),
    ("errors", pa.int64()),
    ("rows", pa.int64()),
    ("bytes_out", pa.int64()),
    ("bytes_in", pa.int64()),
    ("dropped", pa.int64()),
    ("status", pa.int32()),
    ("intended_ns", pa.int64()),
    ("sent_ns", pa.int64()),
    ("done_ns", pa.int64()),
    ("server_ns", pa.int64()),
])

_SECRET_KEY = SECRET_NAME  # the names bench.secrets also refuses as literal headers
_ASSIGN = re.compile(r"""^(?P<lead>\s*(?P<key>[A-Za-z0-9_."'-]+)\s*=\s*)(?P<value>.+?)\s*$""")
_INLINE = re.compile(r"""(?P<key>[A-Za-z0-9_-]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^,}\s]+)""")


def _is_secret_key(key: str) -> bool:
    key = key.strip("\"'")
    if key.lower().endswith(("_env", "_file", "env")):
        return False  # names an env var / file holding the secret, not the secret itself
    return bool(_SECRET_KEY.search(key))


def redact_scenario(text: str) -> str:
    """Blank the values of keys that look secret (token, secret, password, key, authorization, ...).

    Works line by line on TOML-like text: ``key = value`` and inline tables ``{ key = "v" }``; keys that
    name where a secret lives (``token_env``, ``password_file``) are kept. Header lines ("Authorization:
    Bearer x") inside strings are blanked too.
    """
    out = []
    for line in text.splitlines(keepends=True):
        nl = line[len(line.rstrip("\r\n")):]
        body = line.rstrip("\r\n")
        m = _ASSIGN.match(body)
        if m and _is_secret_key(m.group("key")) and not m.group("value").startswith("{"):
            body = f'{m.group("lead")}"***"'
        else:
            body = _INLINE.sub(lambda im: f'{im.group("key")} = "***"' if _is_secret_key(im.group("key"))
                               else im.group(0), body)
            body = re.sub(r"(?i)(authorization\s*:\s*)(bearer\s+|basic\s+|token\s+)?[^\"',\]]+",
                          r"\1\2***", body)
        out.append(body + nl)
    return "".join(out)


def utc_iso(unix_ns: int) -> str:
    return dt.datetime.fromtimestamp(unix_ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")


def default_report_path(reports_dir: Path, scenario_name: str, start_utc: dt.datetime | str | int) -> Path:
    """``reports_dir/20250101T120000Z-<name>.arrow`` (start as datetime, ISO text or unix ns)."""
    if isinstance(start_utc, int):
        when = dt.datetime.fromtimestamp(start_utc / 1e9, tz=dt.UTC)
    elif isinstance(start_utc, str):
        when = dt.datetime.fromisoformat(start_utc)
    else:
        when = start_utc
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario_name).strip("-.") or "run"
    return reports_dir / f"{when.strftime('%Y%m%dT%H%M%SZ')}-{safe}.arrow"


def make_meta(scenario_name: str, *, run: RunData | None = None, end_unix_ns: int | None = None,
              **fields: Any) -> ReportMeta:
    """A ReportMeta with versions and host filled in (and start/end from the run when given)."""
    from bench import __version__

    libs: dict[str, str] = {}
    for mod in ("pyarrow", "numpy", "httpx", "hdrh", "uvloop", "httptools", "orjson", "anyio"):
        try:
            from importlib.metadata import version

            dist = {"hdrh": "hdrhistogram"}.get(mod, mod)
            libs[mod] = version(dist)
        except Exception:
            continue
    meta = ReportMeta(scenario_name=scenario_name, bench_version=__version__,
                      python_version=platform.python_version(), libraries=libs, host=socket.gethostname())
    if run is not None:
        meta.start_utc = utc_iso(run.start_unix_ns)
        end_s = max((p.end_s for p in run.phases), default=0.0)
        meta.end_utc = utc_iso(end_unix_ns if end_unix_ns is not None else run.start_unix_ns + int(end_s * 1e9))
    for k, v in fields.items():
        setattr(meta, k, v)
    return meta


def _batch(section: str, n: int, cols: dict[str, Any]) -> pa.RecordBatch:
    arrays = []
    for f in SCHEMA:
        if f.name == "section":
            arrays.append(pa.array([section] * n, pa.string()))
        elif f.name in cols:
            arrays.append(pa.array(cols[f.name], f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _hist_cols(h: Histogram) -> dict[str, Any]:
    if not h.total:  # no sample: its figures are null (not measured), never 0
        return {"hdr": h.encode(), "count": 0, "min_us": h.min_us, "max_us": h.max_us}
    s = h.summary_ms()
    return {"hdr": h.encode(), "count": h.total, "min_us": h.min_us, "max_us": h.max_us, "min_ms": s["min_ms"],
            "max_ms": s["max_ms"], "mean_ms": s["mean_ms"], "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"],
            "p99_ms": s["p99_ms"], "p999_ms": s["p999_ms"]}


def _rows(section: str, rows: list[dict[str, Any]]) -> pa.RecordBatch | None:
    if not rows:
        return None
    keys = {k for r in rows for k in r}
    return _batch(section, len(rows), {k: [r.get(k) for r in rows] for k in keys})


def _batches(report: Report) -> Iterator[pa.RecordBatch]:
    run, meta = report.run, report.meta
    meta_rows = [{"name": k, "text": json.dumps(v)} for k, v in meta.to_json_dict().items()]
    meta_rows += [{"name": "partial", "text": json.dumps(run.partial)},
                  {"name": "start_unix_ns", "text": json.dumps(run.start_unix_ns)}]
    yield from filter(None, [
        _rows("meta", meta_rows),
        _rows("phase", [{"name": p.name, "start_s": p.start_s, "end_s": p.end_s} for p in run.phases]),
        _rows("total", [{"phase": ph, "requests": t.requests, "ok": t.ok, "errors": t.errors, "rows": t.rows,
                         "bytes_out": t.bytes_out, "bytes_in": t.bytes_in, "dropped": t.dropped}
                        for ph, t in run.totals.items()]),
        _rows("histogram", [{"name": k.metric, "phase": k.phase, "outcome": k.outcome, **_hist_cols(h)}
                            for k, h in run.histograms.items()]),
        _rows("counter", [{"name": k, "count": v} for k, v in run.counters.items()]),
        _rows("gauge", [{"name": k, "second": s, "value": v} for k, sv in run.gauges.items()
                        for s, v in sorted(sv.items())]),
        _rows("error", [{"name": e.kind, "status": e.status, "phase": e.phase, "count": e.count}
                        for e in run.errors]),
        _rows("error_sample", [{"name": e.kind, "status": e.status, "text": e.detail, "count": e.count}
                               for e in run.error_samples]),
        _rows("done_span", [{"phase": ph, "start_s": lo, "end_s": hi} for ph, (lo, hi) in run.done_span.items()]),
    ])
    for section, rows in report.sections.items():
        batch = _rows(section, rows)
        if batch is not None:
            yield batch
    s = run.series
    if len(s):
        pct = s.latency_percentiles_ms()
        cols: dict[str, Any] = {c: getattr(s, c) for c in ("second", *s.COUNT_COLUMNS)}
        cols["count"] = [s.histogram(i).total for i in range(len(s))]
        cols["hdr"] = s.hdr
        cols.update({k: [None if math.isnan(x) else x for x in v.tolist()] for k, v in pct.items()})  # NaN: null
        yield _batch("series", len(s), cols)
    if run.raw_path is not None and run.raw_path.exists():
        yield from _raw_batches(run.raw_path, run)


def _raw_batches(path: Path, run: RunData) -> Iterator[pa.RecordBatch]:
    """Re-emit the recorder's raw stream in report layout, one batch at a time (tolerates a torn tail)."""
    warm_end_ns = int(run.phase("warmup").end_s * 1e9)
    names = pa.array([kind_name(k) for k in range(len(Kind))], pa.string())
    with pa.OSFile(str(path), "rb") as f:
        try:
            reader = pyarrow.ipc.open_stream(f)
        except pa.ArrowInvalid:
            return
        while True:
            try:
                b = reader.read_next_batch()
            except (StopIteration, pa.ArrowInvalid, OSError):
                return
            import pyarrow.compute as pc

            kinds = pc.take(names, b.column("kind").cast(pa.int32()))
            intended = b.column("intended_ns")
            phase = pc.if_else(pc.less(intended, warm_end_ns), "warmup", "measured")
            yield _batch("raw", b.num_rows, {
                "name": kinds, "phase": phase, "status": b.column("status"), "rows": b.column("rows"),
                "bytes_out": b.column("bytes_out"), "bytes_in": b.column("bytes_in"), "intended_ns": intended,
                "sent_ns": b.column("sent_ns"), "done_ns": b.column("done_ns"),
                "server_ns": b.column("server_ns")})


def write_report(path: Path, report: Report) -> Path:
    """Write the report atomically (temp file in the same directory, fsync, rename); returns the path."""
    path = Path(path)
    if not report.meta.extra.get("run_id"):  # lets merge tell two runs from one run given twice
        report.meta.extra["run_id"] = uuid.uuid4().hex
    schema = SCHEMA.with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode(),
                                   META_KEY: json.dumps({**report.meta.to_json_dict(), "partial": report.run.partial,
                                                         "start_unix_ns": report.run.start_unix_ns}).encode()})
    write_arrow_file(path, schema, (b.replace_schema_metadata(schema.metadata) for b in _batches(report)),
                     compression="zstd")
    report.path = path
    return path


def write_arrow_file(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
                     compression: str | None = None) -> None:
    """An Arrow IPC file written atomically: a temp file in the same directory, fsync, rename, fsync of the
    directory — a crash leaves the old file or the new one, never half of one. A symlink at ``path`` is written
    through; a path that is not a regular file is refused (InputError), as the command checked before any load."""
    path = output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    options = pyarrow.ipc.IpcWriteOptions(compression=compression)
    try:
        with open(tmp, "wb") as sink:
            with pyarrow.ipc.new_file(sink, schema, options=options) as writer:
                for b in batches:
                    writer.write_batch(b)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sys.platform != "win32":
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""The capacity report: every step of a sweep in ONE Arrow IPC file, readable without bench.

One row per step (see docs/capacity.md, "The capacity report"); the schema metadata holds
``bench.capacity_version`` and ``bench.capacity`` (JSON: scenario, load kind, SLO, stop reason, and the knee
and highest passing step as computed by bench.capacity). Written atomically like a run report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc

from bench.capacity import highest_pass, knee_index
from bench.errors import InputError
from bench.inpath import input_file, input_problem
from bench.report.model import Report
from bench.report.writer import write_arrow_file

__all__ = ["CAPACITY_SCHEMA", "CAPACITY_VERSION", "CapacityReport", "CapacityStep", "is_capacity_report",
           "read_capacity_report", "step_from_report", "write_capacity_report"]

CAPACITY_VERSION = 1
VERSION_KEY = b"bench.capacity_version"
META_KEY = b"bench.capacity"
LOAD_KINDS = ("rate", "concurrency")

CAPACITY_SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("load_kind", pa.string()),  # rate (offered = target req/s) | concurrency (offered = clients)
    ("offered", pa.float64()),
    ("achieved_rps", pa.float64()),  # answers per second (a rate step: the window shifted by the latency)
    ("requests", pa.int64()),
    ("p50_ms", pa.float64()),  # client latency from the intended send time, ok requests; null: no sample
    ("p99_ms", pa.float64()),
    ("server_p50_ms", pa.float64()),  # server request duration (bucket resolution); null: not scraped
    ("server_p99_ms", pa.float64()),
    ("error_rate", pa.float64()),
    ("verdict", pa.string()),  # pass | fail | harness | interrupted | probe
    ("reasons", pa.string()),  # '; '-joined
    ("report", pa.string()),  # the step's run report (path), '' when not kept
])


@dataclass(frozen=True, slots=True)
class CapacityStep:
    """One step of a sweep. Latency fields are None when nothing was measured (never 0)."""

    step: int
    offered: float
    achieved_rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None
    verdict: str
    load_kind: str = "rate"
    requests: int = 0
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    reasons: tuple[str, ...] = ()
    report: str = ""

    @property
    def goodput(self) -> float | None:
        """ok completions per second."""
        if self.achieved_rps is None:
            return None
        return self.achieved_rps * (1.0 - (self.error_rate or 0.0))


@dataclass(slots=True)
class CapacityReport:
    steps: list[CapacityStep]
    info: dict[str, Any] = field(default_factory=dict)  # scenario_name, load_kind, slo, stop_reason, ...
    path: Path | None = None

    @property
    def knee(self) -> CapacityStep | None:
        i = knee_index([s.offered for s in self.steps], [s.goodput for s in self.steps],
                       [s.p99_ms for s in self.steps])
        return None if i is None else self.steps[i]

    @property
    def best(self) -> CapacityStep | None:
        """The highest load that met the SLO."""
        i = highest_pass([s.offered for s in self.steps], [s.verdict for s in self.steps])
        return None if i is None else self.steps[i]

    @property
    def has_server(self) -> bool:
        return any(s.server_p50_ms is not None or s.server_p99_ms is not None for s in self.steps)


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _point(step: CapacityStep | None) -> dict[str, Any] | None:
    return None if step is None else {"step": step.step, "offered": step.offered, "achieved_rps": step.achieved_rps}


def write_capacity_report(path: Path | str, steps: Sequence[CapacityStep], *, scenario_name: str,
                          load_kind: str = "rate", slo: str = "", stop_reason: str = "",
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Write every step as one Arrow file (temp file, fsync, rename); returns the path.

    ``slo``: the objectives in words (e.g. ``p99_ms ≤ 50, error_rate ≤ 0.01``); ``stop_reason``: why the sweep
    ended; ``extra``: any JSON-ready facts (start rate, precision, replicas …)."""
    if load_kind not in LOAD_KINDS:
        raise ValueError(f"load_kind must be one of {LOAD_KINDS}, got {load_kind!r}")
    path = Path(path)
    report = CapacityReport(list(steps))
    info = {"scenario_name": scenario_name, "load_kind": load_kind, "slo": slo, "stop_reason": stop_reason,
            "knee": _point(report.knee), "highest_pass": _point(report.best), "steps": len(steps),
            **(dict(extra) if extra else {})}
    cols: dict[str, list[Any]] = {f.name: [] for f in CAPACITY_SCHEMA}
    for s in steps:
        row = {"step": s.step, "load_kind": s.load_kind, "offered": float(s.offered),
               "achieved_rps": _finite(s.achieved_rps), "requests": s.requests, "p50_ms": _finite(s.p50_ms),
               "p99_ms": _finite(s.p99_ms), "server_p50_ms": _finite(s.server_p50_ms),
               "server_p99_ms": _finite(s.server_p99_ms), "error_rate": _finite(s.error_rate),
               "verdict": s.verdict, "reasons": "; ".join(s.reasons), "report": s.report}
        for k, v in row.items():
            cols[k].append(v)
    schema = CAPACITY_SCHEMA.with_metadata({VERSION_KEY: str(CAPACITY_VERSION).encode(),
                                            META_KEY: json.dumps(info, default=str).encode()})
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in CAPACITY_SCHEMA}, schema=schema)
    write_arrow_file(path, schema, table.to_batches())
    return path


def step_from_report(step: int, offered: float, report: Report, *, verdict: str, reasons: Sequence[str] = (),
                     load_kind: str = "rate", achieved_rps: float | None = None, path: str = "") -> CapacityStep:
    """A step's row from its run report: client p50/p99 (from the intended time, ok requests; None without
    any), error rate (in-flight-at-end requests included), server p50/p99 when the run scraped them.
    ``achieved_rps``: the sweep's own completions-per-second figure, else the report's measured req/s."""
    from bench.report.server_metrics import server_latency
    from bench.report.summary import summarize

    s = summarize(report)
    srv = server_latency(report)
    return CapacityStep(step=step, offered=offered, load_kind=load_kind, requests=int(s["requests"]),
                        achieved_rps=s["rps"] if achieved_rps is None else achieved_rps,
                        p50_ms=s["latency_ms"]["p50"], p99_ms=s["latency_ms"]["p99"], error_rate=s["error_rate"],
                        server_p50_ms=None if srv is None else srv.p50_ms,
                        server_p99_ms=None if srv is None else srv.p99_ms, verdict=verdict,
                        reasons=tuple(reasons), report=path or (str(report.path) if report.path else ""))


def is_capacity_report(path: Path | str) -> bool:
    """True when ``path`` is an Arrow file carrying capacity-report metadata (False for anything else)."""
    if input_problem(path) is not None:  # a FIFO or a device is no report (and would be read forever)
        return False
    try:
        md = pyarrow.ipc.open_file(str(path)).schema.metadata or {}
    except (pa.ArrowException, OSError, ValueError):
        return False
    return VERSION_KEY in md


def read_capacity_report(path: Path | str) -> CapacityReport:
    """Load a capacity report. Raises InputError (one line) for anything that is not a readable one."""
    path = input_file(path)
    where = str(path)
    try:
        reader = pyarrow.ipc.open_file(str(path))
        md = reader.schema.metadata or {}
        if md.get(VERSION_KEY) != str(CAPACITY_VERSION).encode():
            raise InputError("not a bench capacity report (version "
                             f"{md.get(VERSION_KEY, b'none').decode(errors='replace')})", file=where)
        info = json.loads(md.get(META_KEY, b"{}"))
        table = reader.read_all()
        table.validate(full=True)
        rows = table.to_pylist()
        steps = [_step(r) for r in rows]
    except InputError:
        raise
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a readable capacity report: {' '.join(str(exc).split())[:200]}", file=where) from exc
    if not isinstance(info, dict):
        raise InputError("capacity metadata is not a JSON object", file=where)
    return CapacityReport(steps, info, path)


def _step(r: Mapping[str, Any]) -> CapacityStep:
    return CapacityStep(step=int(r["step"]), offered=float(r["offered"]), achieved_rps=_num(r["achieved_rps"]),
                        p50_ms=_num(r["p50_ms"]), p99_ms=_num(r["p99_ms"]), error_rate=_num(r["error_rate"]),
                        verdict=str(r["verdict"]), load_kind=str(r["load_kind"]), requests=int(r["requests"] or 0),
                        server_p50_ms=_num(r.get("server_p50_ms")), server_p99_ms=_num(r.get("server_p99_ms")),
                        reasons=tuple(x for x in str(r["reasons"] or "").split("; ") if x),
                        report=str(r["report"] or ""))


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None

"""Turn a finished run (RunData + the runner's facts) into a Report with its metadata and verdicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bench.report.model import Report, RunData
from bench.report.verdict import apply_verdict
from bench.report.writer import make_meta, redact_scenario
from bench.scenario import Scenario

__all__ = ["build_report", "scenario_toml"]


def scenario_toml(doc: Mapping[str, Any]) -> str:
    """The effective scenario (file + overrides) as TOML text, secrets blanked by redact_scenario."""
    lines: list[str] = []
    _emit(doc, "", lines)
    return redact_scenario("\n".join(lines).strip() + "\n")


def _emit(table: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        name = f"{prefix}{_key(key)}"
        lines.append(f"\n[{name}]")
        _emit(value, f"{name}.", lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def build_report(sc: Scenario, run: RunData, facts: Mapping[str, Any]) -> Report:
    """Metadata (redacted scenario, versions, host, load, target) plus the generator-bound verdict."""
    load = sc.load
    target_rps = None
    if load.mode == "open" and not load.stages:
        target_rps = load.rate / (facts.get("worker", [0, 1])[1])
    load_meta: dict[str, Any] = {"mode": load.mode, "concurrency": load.concurrency, "rate": load.rate,
                                 "arrival": load.arrival, "stages": [list(s) for s in load.stages],
                                 "duration_s": load.duration_s, "warmup_s": load.warmup_s,
                                 "requests": load.requests, "max_in_flight": load.max_in_flight,
                                 "rows_per_request": sc.data.rows_per_request,
                                 "processes": facts.get("processes", 1)}
    target_meta = {"kind": sc.target.kind, "url": facts.get("url", sc.target.url), "format": sc.target.format,
                   "engine": facts.get("engine", sc.engine.kind), "http2": sc.engine.http2}
    extra = {k: v for k, v in facts.items()
             if k in ("abandoned", "interrupted", "worker", "ubiops", "loop", "slo_aborted") and v is not None}
    meta = make_meta(sc.name, run=run, scenario_text=scenario_toml(sc.source), load=load_meta,
                     target=target_meta, extra=extra)
    report = Report(meta=meta, run=run)
    # the UbiOps data plane is httpx-based and paced in chunks: a millisecond of lag there is not a fault
    lag_bound_ms = 10.0 if sc.target.kind == "ubiops" else 1.0
    apply_verdict(report, target_rps=target_rps, cpu_fraction=float(facts.get("cpu_fraction", 0.0)),
                  lag_bound_ms=lag_bound_ms)
    return report

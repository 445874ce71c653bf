"""What a run knows about itself besides its measurements (``RunFacts``), and how a finished run (RunData +
facts + scenario) becomes a Report with its metadata and verdicts.

Lives beside the session layer, not in bench.report: the report package reads run data only, never the scenario.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.headers import host_header

if TYPE_CHECKING:
    from bench.report.model import Report
    from bench.rundata import RunData
    from bench.scenario import Scenario

__all__ = ["RunFacts", "build_report", "scenario_toml"]


@dataclass
class RunFacts:
    """Facts of one run the recorder does not measure (filled by the runner, the workers and the session)."""

    url: str = ""  # what was loaded ("embedded" for the embedded emulator; never a secret-bearing query)
    interrupted: bool = False  # Ctrl-C / SIGTERM: the report is partial
    slo_aborted: str | None = None  # [slo] abort_on_fail stopped the run early: why
    cpu_fraction: float | None = None  # generator CPU use during the load, as a fraction of one core (None:
    # not measured — a checkpoint's header, a worker known only by its streamed data — never 0)
    engine: str | None = None  # engine class that applied the load (None: the UbiOps runner)
    abandoned: int | None = None  # requests still unanswered after the drain (not recorded)
    target_extras: dict[str, Any] = field(default_factory=dict)  # what the target adds (e.g. "ubiops": stats)
    processes: int = 1  # load-generator processes whose reports were merged into this one
    worker: tuple[int, int] | None = None  # (i, n): this is worker i of an n-process run
    spin_s: float = 0.0  # open loop: seconds the pacer spun instead of sleeping (bench.engine.pacer) ...
    spin_idle_s: float = 0.0  # ... of which idle: left out of cpu_fraction
    connections_opened: int | None = None  # connects the engine attempted (None: not counted, the httpx engine)
    waited_at_cap: int = 0  # open loop: sends that waited for one of the engine.connections connections

    def extra(self) -> dict[str, Any]:
        """What the report's ``extra`` metadata carries (absent facts left out)."""
        out: dict[str, Any] = {"abandoned": self.abandoned, "interrupted": self.interrupted,
                               "worker": list(self.worker) if self.worker else None,
                               "slo_aborted": self.slo_aborted, "connections_opened": self.connections_opened,
                               "waited_at_cap": self.waited_at_cap or None, **self.target_extras}
        if self.spin_s:
            out["pacer_spin_s"] = round(self.spin_s, 3)
            out["pacer_spin_idle_s"] = round(self.spin_idle_s, 3)
        return {k: v for k, v in out.items() if v is not None}


def scenario_toml(doc: Mapping[str, Any]) -> str:
    """The effective scenario (file + overrides) as TOML text, secrets blanked by redact_scenario."""
    from bench.report.writer import redact_scenario

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


def build_report(sc: Scenario, run: RunData, facts: RunFacts, target_config: Any) -> Report:
    """Metadata (redacted scenario, versions, host, load, target) plus the generator-bound verdict.
    ``target_config``: what the target read from the scenario when the run was prepared (its report extras)."""
    from bench.report.model import Report
    from bench.report.verdict import apply_verdict
    from bench.report.writer import make_meta

    load = sc.load
    target_rps = None
    if load.mode == "open" and not load.stages:
        target_rps = load.rate / (facts.worker[1] if facts.worker else 1)
    load_meta: dict[str, Any] = {"mode": load.mode, "concurrency": load.concurrency, "rate": load.rate,
                                 "arrival": load.arrival, "stages": [list(s) for s in load.stages],
                                 "duration_s": load.duration_s, "warmup_s": load.warmup_s,
                                 "requests": load.requests, "max_in_flight": load.max_in_flight,
                                 "rows_per_request": sc.data.rows_per_request,
                                 "processes": facts.processes}
    target_meta = {"kind": sc.target.kind, "url": facts.url or sc.target.url, "format": sc.target.format,
                   "engine": facts.engine or sc.engine.kind, "http2": sc.engine.http2}
    literal = sc.target.raw.get("headers")  # (a Host from headers_env is a secret: not recorded)
    host = host_header(literal) if isinstance(literal, Mapping) else None
    if host:  # the route measured: the URL is only the address connected to
        target_meta["host"] = host
    from bench.targets import target_for

    target = target_for(sc.target.kind)
    meta = make_meta(sc.name, run=run, scenario_text=scenario_toml(sc.source), load=load_meta,
                     target=target_meta, extra={**facts.extra(), **target.report_extras(target_config)})
    report = Report(meta=meta, run=run)
    lag_bound_ms = target.lag_bound_ms
    opened = facts.connections_opened if load.mode == "open" else None
    apply_verdict(report, target_rps=target_rps, cpu_fraction=facts.cpu_fraction, connections=opened,
                  waited_at_cap=(facts.waited_at_cap, sc.engine.connections), lag_bound_ms=lag_bound_ms)
    return report

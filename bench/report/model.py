"""The report model: a run's measurements (bench.rundata) plus its metadata.

The HDR codec lives in bench.hdr and the run data in bench.rundata (the recorder's leaves); they are re-exported
here for the views and for existing imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hdr import (
    HDR_HIGHEST_US,
    HDR_LOWEST_US,
    HDR_SIGNIFICANT_FIGURES,
    Histogram,
    IntArray,
    counts_index,
    value_from_index,
)
from bench.rundata import (
    MEASURED,
    OUTCOMES,
    PHASES,
    WARMUP,
    ErrorCount,
    ErrorSample,
    HistKey,
    PerSecond,
    Phase,
    RunData,
    Totals,
)

__all__ = ["HDR_HIGHEST_US", "HDR_LOWEST_US", "HDR_SIGNIFICANT_FIGURES", "MEASURED", "OUTCOMES", "PHASES",
           "SCHEMA_VERSION", "WARMUP", "ErrorCount", "ErrorSample", "HistKey", "Histogram", "IntArray", "PerSecond",
           "Phase", "Report", "ReportMeta", "RunData", "Totals", "counts_index", "measured_rows_per_s",
           "value_from_index"]

SCHEMA_VERSION = 1


@dataclass(slots=True)
class ReportMeta:
    """Who/what/when of a run. ``scenario_text`` must already be redacted (see writer.redact_scenario)."""

    scenario_name: str
    scenario_text: str = ""
    bench_version: str = ""
    python_version: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    host: str = ""
    start_utc: str = ""  # ISO 8601, UTC
    end_utc: str = ""
    load: dict[str, Any] = field(default_factory=dict)  # mode, rate, concurrency, duration_s, ...
    target: dict[str, Any] = field(default_factory=dict)  # kind, url (no secrets), format, ...
    generator_bound: bool = False
    generator_bound_reasons: list[str] = field(default_factory=list)
    cpu_fraction: float | None = None  # generator CPU use as a fraction of one core
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def rows_counted(self) -> bool:
        """False when the run sent bodies whose rows bench could not count (an ad hoc ``--body`` of a format it
        does not read, ``extra.rows = "not counted"``): rows/s is then not measured (shown as missing)."""
        return self.extra.get("rows") != "not counted"

    def to_json_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ReportMeta:
        known = set(cls.__slots__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class Report:
    """A run's report: metadata plus measurements. ``path`` is where it was read from / written to."""

    meta: ReportMeta
    run: RunData
    path: Path | None = None
    # rows of the sections the run model does not interpret (e.g. server_metric, server_latency), by section
    # name; written and read back as they are (bench.report.server_metrics builds and reads them)
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def measured_rows_per_s(data: Report | RunData) -> float | None:
    """Rows/s of the measured phase; None when the rows were not counted (``ReportMeta.rows_counted``; bare run
    data has no metadata and counts its rows)."""
    if isinstance(data, Report):
        return data.run.rows_per_s(MEASURED) if data.meta.rows_counted else None
    return data.rows_per_s(MEASURED)

"""The ``[slo]`` table: objectives a finished (or running) report is judged against (checked by bench.report.slo)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.config.reader import unknown_key
from bench.errors import InputError

__all__ = ["KEYS", "PCT", "Objective", "SloObjectives", "slo_from_mapping"]

# key -> (label, unit, direction): "max" objectives are upper bounds, "min" ones lower bounds.
KEYS: dict[str, tuple[str, str, str]] = {
    "p50_ms": ("latency p50", "ms", "max"),
    "p90_ms": ("latency p90", "ms", "max"),
    "p99_ms": ("latency p99", "ms", "max"),
    "p999_ms": ("latency p99.9", "ms", "max"),
    "max_ms": ("latency max", "ms", "max"),
    "service_p99_ms": ("service time p99", "ms", "max"),
    "error_rate": ("error rate", "", "max"),
    "min_rps": ("ok req/s", "req/s", "min"),
    "min_rows_per_s": ("rows/s", "rows/s", "min"),
    "max_dropped": ("dropped sends", "", "max"),
}
PCT = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


@dataclass(frozen=True, slots=True)
class Objective:
    key: str  # one of KEYS
    limit: float

    @property
    def is_lower_bound(self) -> bool:
        return KEYS[self.key][2] == "min"


@dataclass(frozen=True, slots=True)
class SloObjectives:
    """A validated ``[slo]`` table."""

    objectives: tuple[Objective, ...]
    abort_on_fail: bool = False



def slo_from_mapping(table: Mapping[str, Any], file: str) -> SloObjectives:
    """Validate a scenario's ``[slo]`` table. Raises InputError naming ``slo.<key>``."""
    objectives: list[Objective] = []
    abort = False
    for key, value in table.items():
        where = f"slo.{key}"
        if key == "abort_on_fail":
            if not isinstance(value, bool):
                raise InputError(f"expected true or false, got {value!r}", file=file, key=where)
            abort = value
            continue
        if key not in KEYS:
            problem = unknown_key(key, [*KEYS, "abort_on_fail"]).replace("key", "objective", 1)
            raise InputError(problem, file=file, key=where)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"expected a number, got {value!r}", file=file, key=where)
        if value < 0:
            raise InputError(f"must be >= 0, got {value!r}", file=file, key=where)
        if key == "error_rate" and value > 1:
            raise InputError(f"a fraction between 0 and 1 (0.01 = 1 %), got {value!r}", file=file, key=where)
        if key == "max_dropped" and float(value) != int(value):
            raise InputError(f"expected a whole number, got {value!r}", file=file, key=where)
        if key.endswith("_ms") and value == 0:
            raise InputError("a latency objective must be > 0", file=file, key=where)
        objectives.append(Objective(key, float(value)))
    return SloObjectives(tuple(objectives), abort)

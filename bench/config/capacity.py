"""The optional ``[capacity]`` table: `bench capacity`'s sweep settings (its flags win over these)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.config.reader import Table

__all__ = ["CapacityConfig", "capacity_config_from_mapping"]


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    """The validated ``[capacity]`` table; None = not given (the command's default or flag applies)."""

    replicas: int | None = None
    target_rps: float | None = None
    start: float | None = None
    max: float | None = None
    step_s: float | None = None
    warmup_s: float | None = None
    precision: float | None = None  # a fraction strictly between 0 and 1


def capacity_config_from_mapping(d: Mapping[str, Any], file: str) -> CapacityConfig:
    """Validate a ``[capacity]`` table; errors name ``capacity.<key>``."""
    tab = Table(d, file, "capacity.")

    def positive(key: str, integer: bool = False) -> Any:
        if tab.get(key) is None:
            return None
        value = tab.integer(key, 0, minimum=1) if integer else tab.number(key, 0.0)
        if value <= 0:
            raise tab.err(key, f"expected a number > 0, got {value!r}")
        return value

    def duration(key: str) -> float | None:
        return None if tab.get(key) is None else tab.duration(key, 0.0)

    cfg = CapacityConfig(replicas=positive("replicas", integer=True), target_rps=positive("target_rps"),
                         start=positive("start"), max=positive("max"), step_s=duration("step"),
                         warmup_s=duration("warmup"), precision=_precision(tab))
    tab.done()
    if cfg.step_s is not None and cfg.step_s <= 0:
        raise tab.err("step", "a step must last > 0 s")
    if cfg.start is not None and cfg.max is not None and cfg.start > cfg.max:
        raise tab.err("start", f"the start rate {cfg.start:g} is above max {cfg.max:g}")
    return cfg


def _precision(tab: Table) -> float | None:
    raw = tab.get("precision")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise tab.err("precision", f"expected a percentage like '5%' or a fraction like 0.05, got {raw!r}")
    text = str(raw).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise tab.err("precision", f"expected a percentage like '5%' or a fraction like 0.05, got {raw!r}") from None
    if not 0 < value < 1:
        raise tab.err("precision", f"must be between 0 and 100 %, got {raw!r}")
    return value

"""A tiny, strict reader of the Prometheus text exposition format (0.0.4) for tests — prometheus_client is not a
dependency. Not a test module itself (imported as ``from prometheus_text import ...``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Family", "parse"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


@dataclass
class Family:
    name: str
    kind: str = "untyped"
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            raise ValueError(f"bad labels: {text!r}")
        out[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        pos = m.end()
    return out


def _family_of(sample: str, families: dict[str, Family]) -> Family:
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if suffix and not sample.endswith(suffix):
            continue
        base = sample[: len(sample) - len(suffix)] if suffix else sample
        if base in families:
            return families[base]
    raise ValueError(f"sample {sample!r} has no # TYPE line before it")


def parse(text: str) -> dict[str, Family]:
    """Families by name; raises ValueError on anything malformed (and checks histogram consistency)."""
    if not text.endswith("\n"):
        raise ValueError("exposition must end with a newline")
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, Family(name)).help = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if kind not in ("counter", "gauge", "histogram", "summary", "untyped"):
                raise ValueError(f"bad type {kind!r}")
            families.setdefault(name, Family(name)).kind = kind
        elif line.startswith("#"):
            continue
        else:
            m = _SAMPLE.match(line)
            if m is None:
                raise ValueError(f"bad sample line: {line!r}")
            value = float(m.group(4))
            _family_of(m.group(1), families).samples.append((m.group(1), _labels(m.group(3) or ""), value))
    for fam in families.values():
        if fam.kind == "histogram":
            _check_histogram(fam)
        if fam.kind == "counter":  # 0.0.4: the TYPE line names the counter's sample, ``_total`` and all
            for sample, _, value in fam.samples:
                if sample != fam.name or not sample.endswith("_total") or value < 0 or math.isnan(value):
                    raise ValueError(f"bad counter sample {sample} {value}")
    return families


def _check_histogram(fam: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample, labels, value in fam.samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if sample.endswith("_bucket"):
            series.setdefault(key, []).append((float(labels["le"]), value))
        elif sample.endswith("_count"):
            counts[key] = value
    for key, buckets in series.items():
        bounds = [b for b, _ in buckets]
        values = [v for _, v in buckets]
        if bounds != sorted(bounds) or bounds[-1] != math.inf:
            raise ValueError(f"{fam.name}{key}: buckets not ascending or no +Inf")
        if values != sorted(values):
            raise ValueError(f"{fam.name}{key}: bucket counts not cumulative")
        if counts.get(key) != values[-1]:
            raise ValueError(f"{fam.name}{key}: _count differs from the +Inf bucket")

"""A small reader of the Prometheus text exposition format (0.0.4): what a server's ``/metrics`` says.

Written here rather than taken from ``prometheus_client`` (not one of bench's dependencies, and its parser
pulls in the whole client) because bench needs only samples and ``# TYPE`` lines. ``parse`` is strict on the
sample syntax so that an HTML error page or JSON is refused (``PromError``), not read as zero metrics;
``fold`` turns one scrape into the counters, gauges and histograms bench.report.server_metrics stores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["STATUS_LABELS", "Folded", "PromError", "Sample", "fold", "format_labels", "parse"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\Z)')
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_UNESCAPE = re.compile(r"\\(.)")


class PromError(ValueError):
    """The text is not in the Prometheus text format (line number and reason)."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by label name
    value: float


def _value(text: str, lineno: int) -> float:
    t = text.strip()
    special = {"+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if t in special:
        return special[t]
    try:
        return float(t)
    except ValueError:
        raise PromError(f"line {lineno}: {t[:40]!r} is not a number") from None


def _labels(body: str, lineno: int) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        m = _LABEL.match(body, pos)
        if m is None:
            if body[pos:].strip() in ("", ","):
                break
            raise PromError(f"line {lineno}: bad label set near {body[pos:pos + 30]!r}")
        value = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        out.append((m.group(1), value))
        pos = m.end()
    return tuple(sorted(out))


def parse(text: str) -> tuple[dict[str, str], list[Sample]]:
    """(metric family → type from ``# TYPE``, samples); PromError on anything not in the format."""
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for lineno, raw in enumerate(text.split("\n"), 1):  # only \n ends a line (not \x1e, \x85 ...)
        line = raw.strip(" \t\r")
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                if parts[3].strip() not in _TYPES or not _NAME.fullmatch(parts[2]):
                    raise PromError(f"line {lineno}: bad TYPE line")
                types[parts[2]] = parts[3].strip()
            continue
        m = _NAME.match(line)
        if m is None:
            raise PromError(f"line {lineno}: {line[:40]!r} does not start with a metric name")
        name, rest = m.group(0), line[m.end():]
        labels: tuple[tuple[str, str], ...] = ()
        if rest.startswith("{"):
            end = _closing(rest, lineno)
            labels = _labels(rest[1:end], lineno)
            rest = rest[end + 1:]
        if not rest[:1].isspace():
            raise PromError(f"line {lineno}: no value after {name}")
        fields = rest.split()
        if len(fields) not in (1, 2):
            raise PromError(f"line {lineno}: expected a value and an optional timestamp")
        samples.append(Sample(name, labels, _value(fields[0], lineno)))
    return types, samples


def _closing(rest: str, lineno: int) -> int:
    """Index of the ``}`` closing the label set (quotes and escapes respected)."""
    quoted = escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "}" and not quoted:
            return i
    raise PromError(f"line {lineno}: unclosed label set")


def format_labels(name: str, labels: Sequence[tuple[str, str]]) -> str:
    """``name{a="x",b="y"}`` (``name`` alone without labels): the key a labelled series is stored under."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


@dataclass(frozen=True, slots=True)
class Folded:
    counters: dict[str, float]
    gauges: dict[str, float]
    histograms: dict[str, dict[float, float]]  # family → {le (its unit): cumulative count}, summed over label sets
    # histogram families whose every kept series carried a status label (so only the 2xx ones were kept)
    ok_only: frozenset[str] = frozenset()
    # every histogram family with a bucket sample, before the path filter, with the `path` labels it had: what a
    # warning names when ``latency_metric`` or ``path_contains`` matches nothing
    seen: dict[str, frozenset[str]] = field(default_factory=dict)


STATUS_LABELS = ("status_code", "code", "status")  # MLServer, prometheus-fastapi-instrumentator, others


def _family(name: str, types: Mapping[str, str]) -> tuple[str, str, str]:
    """(family, type, suffix) of a sample name: ``x_bucket`` of histogram ``x`` → (x, histogram, _bucket)."""
    if name.endswith("_created"):
        # a counter's, histogram's or summary's creation time (epoch seconds), even when the exporter gives it a
        # TYPE line of its own (prometheus_client: ``# TYPE x_created gauge``): never a gauge of the server's
        base = name[:-8]
        for family in (f"{base}_total", base):
            if types.get(family) in ("counter", "histogram", "summary"):
                return family, types[family], "_created"
    if name in types:
        return name, types[name], ""
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix) and name[: -len(suffix)] in types:
            base = name[: -len(suffix)]
            return base, types[base], suffix
    return name, "untyped", ""


def _status(labels: Mapping[str, str]) -> str | None:
    for key in STATUS_LABELS:
        if key in labels:
            return labels[key]
    return None


def fold(types: Mapping[str, str], samples: Sequence[Sample], *, path_contains: str = "") -> Folded:
    """Counters (``*_total``, histogram ``*_count``) and gauges keyed by ``name{labels}``; histogram buckets
    summed over label sets. A series with a ``path`` label not containing ``path_contains`` is left out of the
    histograms (so the request-duration histogram is the inference route's, not the health checks'), and so is
    one whose status label (``status_code``, ``code`` or ``status``) is not 2xx: the client's latency counts ok
    answers only, and an instant 500 would pass for a fast handler. A family whose series are all non-2xx is kept
    with zero counts (it exists; it answered no request well)."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    histograms: dict[str, dict[float, float]] = {}
    seen: dict[str, set[str]] = {}
    unlabelled: set[str] = set()  # families with a kept series that had no status label
    for s in samples:
        family, kind, suffix = _family(s.name, types)
        if suffix == "_created" or (not math.isfinite(s.value) and kind != "histogram"):
            continue
        if kind == "histogram" or kind == "summary":
            if suffix == "_count":
                counters[format_labels(s.name, s.labels)] = s.value
            if kind == "histogram" and suffix == "_bucket":
                labels = dict(s.labels)
                paths = seen.setdefault(family, set())
                if "path" in labels:
                    paths.add(labels["path"])
                if path_contains and path_contains not in labels.get("path", path_contains):
                    continue
                try:
                    le = float(labels["le"].replace("+Inf", "inf"))
                except (KeyError, ValueError):
                    continue
                bucket = histograms.setdefault(family, {})
                status = _status(labels)
                if status is None:
                    unlabelled.add(family)
                elif not status.startswith("2"):
                    bucket.setdefault(le, 0.0)
                    continue
                bucket[le] = bucket.get(le, 0.0) + s.value
        elif kind == "counter":
            counters[format_labels(s.name, s.labels)] = s.value
        else:
            gauges[format_labels(s.name, s.labels)] = s.value
    return Folded(counters, gauges, histograms, frozenset(histograms) - unlabelled,
                  {k: frozenset(v) for k, v in seen.items()})

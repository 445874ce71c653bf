"""Every request accounted for, on the view side: errors the recorder did not count but the run's facts name.

``sent = ok + errors by kind + in flight at the end``. Requests still in flight when a run ended never reach
the recorder today; the runner stores how many in the report's metadata (``extra.abandoned`` for the
engines; ``extra.ubiops.abandoned`` / ``.cancelled`` for UbiOps, whose failed requests are recorded already).
The views, the SLO gate and ``compare`` add them to the measured phase as error kinds ``abandoned`` and
``cancelled``. When the recorder itself counts a kind (an ``error`` row of that kind in any phase), the
metadata figure for it is ignored, so nothing is counted twice. A merged report stores the sum of its parts'
figures as ``extra.unrecorded_errors`` (kind -> count), which then replaces every other source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.report.model import MEASURED, Report, RunData, Totals

__all__ = ["ABANDONED", "CANCELLED", "MISSING", "ErrorKind", "accounted_errors_by_kind", "accounted_totals",
           "accounting_text", "request_accounting", "scrub_detail", "top_errors", "unrecorded_errors"]

ABANDONED = "abandoned"  # in flight at the end of the run: sent, never answered before the drain ended
CANCELLED = "cancelled"  # UbiOps batch: created, then cancelled by the run's end (never completed)
MISSING = "missing"  # UbiOps batch: created, then unknown to the platform (a collect of that id alone: 404)
SAMPLE_CHARS = 160
_IN_FLIGHT_TEXT = {ABANDONED: "no answer before the run's end and drain (in flight at the end)",
                   CANCELLED: "created but cancelled at the run's end (never completed)",
                   MISSING: "created, then unknown to the platform (collect answered 404 for that id)"}
_SECRET = re.compile(r"(?i)(authorization[\"'=:\s]+(?:(?:bearer|basic|token)\s+)?|bearer\s+|basic\s+|"
                     r"token[\"'=:\s]+|secret[\"'=:\s]+|passw(?:or)?d[\"'=:\s]+|api[_-]?key[\"'=:\s]+|"
                     r"signature[\"'=:\s]+|sig=)[^\s\"',}&]+")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _recorded_kinds(run: RunData) -> set[str]:
    return {e.kind for e in run.errors}


def unrecorded_errors(report: Report) -> dict[str, int]:
    """kind -> count of errors named by the run's facts that the recorder did not count (see module doc)."""
    extra: Mapping[str, Any] = report.meta.extra if isinstance(report.meta.extra, Mapping) else {}
    merged = extra.get("unrecorded_errors")
    found: dict[str, int] = {}
    if isinstance(merged, Mapping):
        found = {str(k): _count(v) for k, v in merged.items()}
    else:
        ubiops = extra.get("ubiops")
        ubiops = ubiops if isinstance(ubiops, Mapping) else {}
        found[ABANDONED] = _count(extra.get(ABANDONED)) + _count(ubiops.get(ABANDONED))
        found[CANCELLED] = _count(ubiops.get(CANCELLED))
        found[MISSING] = _count(ubiops.get(MISSING))
    recorded = _recorded_kinds(report.run)
    return {k: n for k, n in sorted(found.items()) if n and k not in recorded}


def _extra_errors(report: Report | RunData) -> dict[str, int]:
    return unrecorded_errors(report) if isinstance(report, Report) else {}


def accounted_totals(report: Report | RunData, phase: str = MEASURED) -> Totals:
    """The phase's totals with the unrecorded errors added (measured phase only) to requests and errors."""
    run = report.run if isinstance(report, Report) else report
    tot = run.total(phase)
    out = Totals(**{f: getattr(tot, f) for f in Totals.__slots__})
    if phase == MEASURED:
        n = sum(_extra_errors(report).values())
        out.requests += n
        out.errors += n
    return out


def accounted_errors_by_kind(report: Report | RunData, phase: str = MEASURED) -> dict[str, int]:
    """``RunData.errors_by_kind`` plus the unrecorded kinds (measured phase)."""
    run = report.run if isinstance(report, Report) else report
    out = run.errors_by_kind(phase)
    if phase == MEASURED:
        for k, n in _extra_errors(report).items():
            out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


def scrub_detail(text: str, limit: int = SAMPLE_CHARS) -> str:
    """One line of error evidence fit to print: credentials blanked, whitespace folded, cut at ``limit``."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _SECRET.sub(lambda m: m.group(1) + "***", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One error kind of the measured phase: its count and one sample of the reason given."""

    kind: str  # 'kind' or 'kind:status'
    count: int
    sample: str  # '' when no sample was kept

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "sample": self.sample}


def top_errors(report: Report, limit: int = 5) -> list[ErrorKind]:
    """The commonest error kinds (most first), each with its commonest stored sample, scrubbed and truncated."""
    by_kind = accounted_errors_by_kind(report)
    samples: dict[str, tuple[int, str]] = {}
    for sm in report.run.error_samples:
        key = f"{sm.kind}:{sm.status}" if sm.status else sm.kind  # the same key as errors_by_kind
        if key not in samples or sm.count > samples[key][0]:
            samples[key] = (sm.count, sm.detail)
    out = []
    for kind, n in sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
        text = samples.get(kind, (0, ""))[1]
        out.append(ErrorKind(kind, n, scrub_detail(text or _IN_FLIGHT_TEXT.get(kind, ""))))
    return out


def request_accounting(run: RunData) -> dict[str, Any] | None:
    """The run's own check of ``sent = ok + errors (by kind) + in flight at the end``, over both phases.

    ``sent`` is counted by the data plane (the engine's requests taken on; UbiOps: direct requests, or batch items
    in create calls), independently of the recorder's ok/error counts; ``in_flight_at_end`` are the requests the
    recorder holds as kind ``abandoned``. ``holds`` is False when a request was lost on the way (a bug: shown in
    the summary). None for a report whose run did not count its sends (older reports).
    """
    sent = run.counters.get("sent")
    if sent is None:
        return None
    ok = sum(t.ok for t in run.totals.values())
    errors = sum(t.errors for t in run.totals.values())
    in_flight = run.counters.get("in_flight_at_end", 0)
    return {"sent": sent, "ok": ok, "errors": errors - in_flight, "in_flight_at_end": in_flight,
            "dropped": sum(t.dropped for t in run.totals.values()), "holds": sent == ok + errors}


def accounting_text(acc: Mapping[str, Any]) -> str:
    """One line: 'sent 8 = ok 0 + errors 0 + in flight at end 8 (holds)'."""
    line = (f"sent {acc['sent']:,} = ok {acc['ok']:,} + errors {acc['errors']:,} + in flight at end "
            f"{acc['in_flight_at_end']:,}")
    if acc["holds"]:
        return line + " (holds)"
    return line.replace(" = ", " ≠ ", 1) + " — MISMATCH: requests were lost from the counts (a bench bug)"

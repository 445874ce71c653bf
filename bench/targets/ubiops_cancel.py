"""Cancelling a batch run's leftovers at its end, on the route the platform has.

Today's API cancels up to 250 requests per ``POST …/requests/cancel``; the older one (and installs without that
route) has only ``PATCH …/requests/{id}`` with ``{"status": "cancelled"}``. The batch route is tried first; a
404 or 405 from it switches the rest of the run to per-request PATCH. Every call draws on the request budget.
The counts are truthful: a request is *confirmed* cancelled when the platform says so (the batch answer's
``cancelled`` count, or a PATCH answer whose status is ``cancelled`` / ``cancelled_pending``; a batch answer
without a count confirms its whole group, the platform having accepted it); everything else asked for (route
refused, out of time, already finished) is *unconfirmed* — it may keep running on the platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from bench.targets.ubiops import MAX_BATCH, UbiOpsConfig, error_message_of
from bench.targets.ubiops_plane import RateGate, UbiOpsSink, UbiOpsStats, now_ns

__all__ = ["cancel_requests"]

_GONE = (404, 405)  # the batch route is missing (older API)


async def cancel_requests(cfg: UbiOpsConfig, client: httpx.AsyncClient, gate: RateGate, sink: UbiOpsSink,
                          stats: UbiOpsStats, ids: Sequence[str], deadline_ns: int) -> None:
    """Ask the platform to cancel ``ids``; fills stats.cancel_requested / _confirmed / _unconfirmed."""
    stats.cancel_requested += len(ids)
    confirmed = 0
    route = stats.cancel_route or "batch"
    todo = list(ids)
    done = 0
    while done < len(todo):
        group = todo[done:done + (MAX_BATCH if route == "batch" else 1)]
        if route == "batch":
            resp = await _call(client, gate, sink, stats, "POST", cfg.cancel_url(), list(group), deadline_ns)
            if resp is None:
                break
            if resp.status_code in _GONE:
                route = "patch"
                sink.count("cancel_route_missing")
                continue
            done += len(group)
            if 200 <= resp.status_code < 300:
                confirmed += _batch_count(resp.content, len(group))
            else:
                _note(sink, stats, resp)
        else:
            resp = await _call(client, gate, sink, stats, "PATCH", cfg.request_url(group[0]),
                               {"status": "cancelled"}, deadline_ns)
            if resp is None:
                break
            done += 1
            if 200 <= resp.status_code < 300:
                confirmed += _patched(resp.content)
            else:
                _note(sink, stats, resp)
    stats.cancel_route = route
    stats.cancel_confirmed += confirmed
    stats.cancel_unconfirmed += len(todo) - confirmed
    sink.count("cancel_confirmed", confirmed)
    sink.count("cancel_unconfirmed", len(todo) - confirmed)


async def _call(client: httpx.AsyncClient, gate: RateGate, sink: UbiOpsSink, stats: UbiOpsStats, method: str,
                url: str, body: Any, deadline_ns: int) -> httpx.Response | None:
    """One cancel call within the budget, retried after a 429; None when out of time or the call broke."""
    while True:
        if not await gate.acquire(None, deadline_ns, purpose="cancel"):
            return None
        try:
            resp = await client.request(method, url, content=orjson.dumps(body))
        except httpx.HTTPError as exc:
            stats.note_error(f"cancel: {type(exc).__name__}: {exc}".encode()[:512])
            sink.count("cancel_errors")
            return None
        finally:
            gate.release()
        stats.cancel_calls += 1
        gate.observe(resp.headers, resp.status_code)
        if resp.status_code != 429:
            return resp
        if now_ns() >= deadline_ns:
            return None


def _batch_count(content: bytes, asked: int) -> int:
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return asked
    n = doc.get("cancelled") if isinstance(doc, dict) else None
    if isinstance(n, int) and not isinstance(n, bool):
        return max(0, min(n, asked))
    return asked


def _patched(content: bytes) -> int:
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return 0
    return 1 if isinstance(doc, dict) and doc.get("status") in ("cancelled", "cancelled_pending") else 0


def _note(sink: UbiOpsSink, stats: UbiOpsStats, resp: httpx.Response) -> None:
    sink.count("cancel_errors")
    stats.note_error(b"cancel: " + error_message_of(resp.content))

"""Cancelling a batch run's leftovers at its end, on the route the platform has.

Today's API cancels up to 250 requests per ``POST …/requests/cancel``; the older one (and installs without that
route) has only ``PATCH …/requests/{id}`` with ``{"status": "cancelled"}``. The batch route is tried first; a
405, or a 404 that is not about a request (a missing route), switches the rest of the run to per-request PATCH.
A refusal that is about a request (one unknown id refuses the whole call, 404 or 400 as the platform words it)
is bisected instead, so the others are still cancelled and the run does not spend one call per request. Every
call draws on the request budget. The counts are truthful: a request is *confirmed* cancelled when the platform
says so (the batch answer's ``cancelled`` count, or a PATCH answer whose status is ``cancelled`` /
``cancelled_pending``; a batch answer without a count confirms its whole group, the platform having accepted
it); everything else asked for (route refused, out of time, already finished, unknown) is *unconfirmed* — it
may keep running on the platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from bench.targets.ubiops import MAX_BATCH, UbiOpsConfig, error_message_of, may_concern_ids, mentions_a_request
from bench.targets.ubiops_plane import RateGate, UbiOpsSink, UbiOpsStats, now_ns

__all__ = ["cancel_requests"]


class _RouteGone(Exception):
    """The batch cancel route is missing (an older API): 405, or a 404 that is not about a request."""


class _OutOfTime(Exception):
    """The deadline passed, or a call broke: stop asking."""


async def cancel_requests(cfg: UbiOpsConfig, client: httpx.AsyncClient, gate: RateGate, sink: UbiOpsSink,
                          stats: UbiOpsStats, ids: Sequence[str], deadline_ns: int) -> None:
    """Ask the platform to cancel ``ids``; fills stats.cancel_requested / _confirmed / _unconfirmed."""
    stats.cancel_requested += len(ids)
    run = _Cancelling(cfg, client, gate, sink, stats, deadline_ns)
    route = stats.cancel_route or "batch"
    todo = list(ids)
    done = 0
    while done < len(todo):
        group = todo[done:done + (MAX_BATCH if route == "batch" else 1)]
        try:
            if route == "batch":
                await run.batch(group)
            else:
                await run.patch(group[0])
        except _RouteGone:
            route = "patch"
            sink.count("cancel_route_missing")
            continue
        except _OutOfTime:
            break
        done += len(group)
    stats.cancel_route = route
    stats.cancel_confirmed += run.confirmed
    stats.cancel_unconfirmed += len(todo) - run.confirmed
    sink.count("cancel_confirmed", run.confirmed)
    sink.count("cancel_unconfirmed", len(todo) - run.confirmed)


class _Cancelling:
    """The calls of one cancel_requests, and how many cancels the platform confirmed so far."""

    def __init__(self, cfg: UbiOpsConfig, client: httpx.AsyncClient, gate: RateGate, sink: UbiOpsSink,
                 stats: UbiOpsStats, deadline_ns: int) -> None:
        self.cfg, self.client, self.gate, self.sink, self.stats = cfg, client, gate, sink, stats
        self.deadline_ns = deadline_ns
        self.confirmed = 0

    async def batch(self, group: Sequence[str], *, bisecting: bool = False) -> None:
        """Cancel ``group`` on the batch route. A refusal about a request (one unknown id refuses the call) is
        bisected down to the ids it concerns, which stay unconfirmed; a missing route raises _RouteGone."""
        resp = await self._call("POST", self.cfg.cancel_url(), list(group))
        if 200 <= resp.status_code < 300:
            self.confirmed += _batch_count(resp.content, len(group))
            return
        about_a_request = mentions_a_request(resp.content, group)
        if not bisecting and (resp.status_code == 405 or (resp.status_code == 404 and not about_a_request)):
            raise _RouteGone
        if len(group) > 1 and about_a_request and may_concern_ids(resp.status_code):
            half = len(group) // 2
            await self.batch(group[:half], bisecting=True)
            await self.batch(group[half:], bisecting=True)
            return
        _note(self.sink, self.stats, resp)

    async def patch(self, request_id: str) -> None:
        resp = await self._call("PATCH", self.cfg.request_url(request_id), {"status": "cancelled"})
        if 200 <= resp.status_code < 300:
            self.confirmed += _patched(resp.content)
        else:
            _note(self.sink, self.stats, resp)

    async def _call(self, method: str, url: str, body: Any) -> httpx.Response:
        """One cancel call within the budget, retried after a 429; _OutOfTime when time is up or it broke."""
        while True:
            if not await self.gate.acquire(None, self.deadline_ns, purpose="cancel"):
                raise _OutOfTime
            try:
                resp = await self.client.request(method, url, content=orjson.dumps(body))
            except httpx.HTTPError as exc:
                self.stats.note_error(f"cancel: {type(exc).__name__}: {exc}".encode()[:512])
                self.sink.count("cancel_errors")
                raise _OutOfTime from None
            finally:
                self.gate.release()
            self.stats.cancel_calls += 1
            self.gate.observe(resp.headers, resp.status_code)
            if resp.status_code != 429:
                return resp
            if now_ns() >= self.deadline_ns:
                raise _OutOfTime


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

"""The emulated UbiOps platform's request records: their life cycle, the list filters, and truthful cancels.

Kept apart from the HTTP routing (bench.emulator.ubiops) so the rules the reference states — which statuses
combine in a list, which filters only apply to finished requests, what a cancel does to each status — sit in
one place. Memory is bounded: finished requests beyond ``keep_finished`` are forgotten, oldest first.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bench.emulator.asgi import HttpError

__all__ = ["FINISHED", "STATUSES", "Key", "RequestStore", "UbiOpsRequest", "iso"]

Key = tuple[str, str, str]  # (project, deployment, version)

FINISHED = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "cancelled_pending")
_OPEN = frozenset({"pending", "processing"})


def iso(t: float | None) -> str | None:
    """Epoch seconds as the platform writes times: ISO-8601, milliseconds, with offset."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _parse_date(name: str, raw: str) -> float:
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "+"))  # a '+' in a query string arrives as ' '
    except ValueError:
        raise HttpError(400, f"{name} must be an ISO-8601 date or datetime, got {raw!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class UbiOpsRequest:
    """One deployment request; ``plain`` requests keep their input and output as strings."""

    __slots__ = ("cancel_asked", "data", "deployment", "error_message", "id", "input_size", "key", "output_size",
                 "plain", "result", "status", "time_completed", "time_created", "time_started", "timeout")

    def __init__(self, key: Key, data: Any, input_size: int, timeout: int, *, plain: bool = False) -> None:
        self.id = str(uuid.uuid4())
        self.key = key
        self.deployment = key[1]
        self.data = data
        self.plain = plain
        self.input_size = input_size
        self.timeout = timeout
        self.status = "pending"
        self.time_created = time.time()
        self.time_started: float | None = None
        self.time_completed: float | None = None
        self.result: Any = None
        self.error_message: str | None = None
        self.output_size: int | None = None
        self.cancel_asked = False

    def details(self, *, data: bool = True, extra: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "deployment": self.deployment, "version": self.key[2], "status": self.status,
            "success": self.status == "completed", "time_created": iso(self.time_created),
            "time_started": iso(self.time_started), "time_completed": iso(self.time_completed),
            "timeout": self.timeout, "input_size": self.input_size, "output_size": self.output_size,
        }
        if data:
            out["request_data"] = self.data
            out["result"] = self.result
            out["error_message"] = self.error_message
        if extra:
            out["origin"] = {"created_by": "emulator@bench.local"}
            out["retries"] = 0
        return out


class RequestStore:
    """Every request the emulated platform knows, by id, with the reference's list and cancel rules."""

    def __init__(self, keep_finished: int = 100_000) -> None:
        self._requests: dict[str, UbiOpsRequest] = {}
        self._finished: deque[str] = deque()
        self._keep_finished = keep_finished

    def add(self, req: UbiOpsRequest) -> None:
        self._requests[req.id] = req

    def get(self, request_id: str) -> UbiOpsRequest | None:
        return self._requests.get(request_id)

    def find(self, key: Key, request_id: str, status: int = 404) -> UbiOpsRequest:
        """The request, or HttpError ``status`` (unknown id, or an id of another deployment version)."""
        req = self._requests.get(request_id)
        if req is None or req.key != key:
            raise HttpError(status, f"Request {request_id!r} not found")
        return req

    def forget(self, req: UbiOpsRequest) -> None:
        req.cancel_asked = True  # a queued one is skipped by the workers
        self._requests.pop(req.id, None)

    def finished(self, req: UbiOpsRequest) -> None:
        """Note a request reached a final status; forget the oldest finished ones beyond the cap."""
        if req.time_completed is None:
            req.time_completed = time.time()
        self._finished.append(req.id)
        while len(self._finished) > self._keep_finished:
            old = self._requests.get(self._finished.popleft())
            if old is not None and old.status in FINISHED:
                del self._requests[old.id]

    def open_count(self, key: Key) -> int:
        """Requests of this deployment version not yet finished (the pending cap counts these)."""
        return sum(1 for r in self._requests.values() if r.key == key and r.status in _OPEN)

    def cancel(self, req: UbiOpsRequest) -> bool:
        """Cancel one request as the platform does: pending → cancelled, processing → cancelled_pending (the
        worker finishes it as cancelled); a finished one is left alone. True when the cancel took effect."""
        if req.status == "pending":
            req.status, req.cancel_asked = "cancelled", True
            self.finished(req)
            return True
        if req.status == "processing":
            req.status, req.cancel_asked = "cancelled_pending", True
            return True
        return False

    def cancel_many(self, key: Key, targets: Iterable[UbiOpsRequest]) -> int:
        return sum(1 for r in targets if r.key == key and self.cancel(r))

    def with_status(self, key: Key, status: str) -> list[UbiOpsRequest]:
        return [r for r in self._requests.values() if r.key == key and r.status == status]

    def listing(self, key: Key, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """``GET …/requests``: newest first, filtered by status (default completed), dates and id substring."""
        wanted = {s.strip() for s in query.get("status", "completed").split(",") if s.strip()}
        bad = wanted - set(STATUSES)
        if bad or not wanted:
            raise HttpError(400, f"Unknown status {sorted(bad)[0] if bad else ''!r}")
        if len(wanted) > 1 and wanted & _OPEN:
            raise HttpError(400, "'pending' and 'processing' requests cannot be combined with other statuses")
        try:
            limit = int(query.get("limit", "50"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise HttpError(400, "limit and offset must be integers") from None
        if limit < 1 or offset < 0:
            raise HttpError(400, "limit must be >= 1 and offset >= 0")
        start = _parse_date("start_date", query["start_date"]) if "start_date" in query else None
        end = _parse_date("end_date", query["end_date"]) if "end_date" in query else None
        search = query.get("search_id")
        if (start is not None or end is not None or search is not None) and not wanted <= FINISHED:
            raise HttpError(400, "start_date, end_date and search_id are only available for completed, failed "
                            "and cancelled requests")
        matches = [r for r in reversed(self._requests.values())
                   if r.key == key and r.status in wanted
                   and (start is None or r.time_created >= start) and (end is None or r.time_created <= end)
                   and (search is None or search in r.id)]
        return [r.details(data=False) for r in matches[offset:offset + limit]]

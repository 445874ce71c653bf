"""Emulated UbiOps deployment-request API (targets.md §2) as a plain ASGI app.

Mounted by bench.emulator.app for paths under /v2/ and /v2.1/. Batch requests go into an asyncio queue served
by ``replicas`` worker tasks through the shared capacity model (ctx.model.serve), so direct and batch requests
compete for the same service slots, as on the platform. Memory is bounded: finished requests beyond
``keep_finished`` are forgotten, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, header, read_body, send_json
from bench.emulator.config import UbiOpsDeployment
from bench.emulator.context import EmulatorContext

__all__ = ["UbiOpsEmulator"]

MAX_ITEMS = 250
MAX_BODY = 64 * 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "cancelled_pending")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _score(values: list[float]) -> float:
    """The ccfraud model's score when bench.emulator.model is there, else a deterministic stand-in."""
    try:
        from bench.emulator.model import FEATURES, predict

        if len(values) == FEATURES:
            return float(predict([values])[0])
    except (ImportError, ValueError):
        pass
    z = sum(values) * 0.01 - 3.0
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def _numbers(value: Any, out: list[float]) -> None:
    if isinstance(value, int | float):  # bool is an int too
        out.append(float(value))
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)


class _Request:
    __slots__ = ("cancel_asked", "data", "deployment", "error_message", "id", "input_size", "key", "output_size",
                 "result", "status", "time_completed", "time_created", "time_started", "timeout")

    def __init__(self, key: tuple[str, str, str], data: Any, input_size: int, timeout: int) -> None:
        self.id = str(uuid.uuid4())
        self.key = key  # (project, deployment, version)
        self.deployment = key[1]
        self.data = data
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
            "success": self.status == "completed", "time_created": _iso(self.time_created),
            "time_started": _iso(self.time_started), "time_completed": _iso(self.time_completed),
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


class _RateLimiter:
    """Fixed windows per client address: ``limit`` requests per ``window_s``."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, client: str) -> tuple[bool, list[tuple[bytes, bytes]]]:
        now = time.monotonic()
        start, used = self._windows.get(client, (now, 0))
        if now - start >= self.window_s:
            start, used = now, 0
        allowed = used < self.limit
        if allowed:
            used += 1
        self._windows[client] = (start, used)
        if len(self._windows) > 10_000:  # bounded: forget the oldest windows
            for k in list(self._windows)[:1000]:
                del self._windows[k]
        reset = max(1, math.ceil(start + self.window_s - now))
        headers = [(b"x-ratelimit-limit", str(self.limit).encode()),
                   (b"x-ratelimit-remaining", str(self.limit - used).encode()),
                   (b"x-ratelimit-reset", str(reset).encode())]
        return allowed, headers


class UbiOpsEmulator(SubApp):
    """ASGI app: ``UbiOpsEmulator(ctx)``; ``window_s`` shortens the rate-limit window for tests."""

    def __init__(self, ctx: EmulatorContext, *, window_s: float = 60.0, keep_finished: int = 100_000) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self._deployments: dict[tuple[str, str], UbiOpsDeployment] = {
            (d.project, d.name): d for d in cfg.ubiops_deployments}
        token = cfg.ubiops_token.strip()
        self._expected_auth = token if token[:6].lower() == "token " else f"Token {token}"
        self._limiter = _RateLimiter(cfg.rate_limit_per_min, window_s) if cfg.rate_limit_per_min > 0 else None
        self._requests: dict[str, _Request] = {}
        self._finished: deque[str] = deque()
        self._keep_finished = keep_finished
        self._rng = random.Random(cfg.seed)
        self._queue: asyncio.Queue[_Request] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- ASGI ---------------------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = []
        try:
            if self._limiter is not None:
                client = (scope.get("client") or ("?", 0))[0]
                allowed, headers = self._limiter.take(str(client))
                if not allowed:
                    raise HttpError(429, "Rate limit exceeded, try again later")
            self._check_auth(scope)
            body = await read_body(receive, MAX_BODY)
            status, answer = await self._route(scope, body)
        except HttpError as exc:
            status, answer = exc.status, {"error": exc.message}
        await send_json(send, status, answer, headers)

    async def aclose(self) -> None:
        """Stop the queue workers (the core app calls this on shutdown, if it wants to)."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _check_auth(self, scope: Scope) -> None:
        value = (header(scope, b"authorization") or "").strip()
        if not value:
            raise HttpError(401, "Authentication credentials were not provided.")
        if value != self._expected_auth:
            raise HttpError(401, "Invalid token.")

    # --- routing ------------------------------------------------------------------------------------------
    async def _route(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        path: str = scope["path"]
        method: str = scope["method"].upper()
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts and parts[0] in ("v2", "v2.1"):
            parts = parts[1:]
        if len(parts) < 5 or parts[0] != "projects" or parts[2] != "deployments":
            raise HttpError(404, f"Not found: {path}")
        project, name, rest = parts[1], parts[3], parts[4:]
        dep = self._deployments.get((project, name))
        if dep is None:
            raise HttpError(404, f"Deployment {name!r} not found in project {project!r}")
        if rest[0] == "versions":
            if len(rest) < 2 or rest[1] != dep.version:
                raise HttpError(404, f"Version {rest[1] if len(rest) > 1 else ''!r} not found")
            rest = rest[2:]
        if not rest or rest[0] != "requests":
            raise HttpError(404, f"Not found: {path}")
        rest = rest[1:]
        key = (dep.project, dep.name, dep.version)
        if not rest:
            if method == "POST":
                return await self._direct(dep, key, body, query)
            if method == "GET":
                return self._list(key, query)
        elif len(rest) == 1 and rest[0] in ("batch", "collect", "cancel", "delete") and method == "POST":
            if rest[0] == "batch":
                return self._batch(dep, key, body, query)
            if rest[0] == "collect":
                return self._collect(key, body)
            if rest[0] == "cancel":
                return self._cancel_many(key, body, query)
            return self._delete_many(key, body)
        elif len(rest) == 1:
            if method == "GET":
                req = self._find(key, rest[0])
                return 200, req.details(data=query.get("metadata_only", "false").lower() != "true", extra=True)
            if method == "PATCH":
                return self._patch(key, rest[0], body)
            if method == "DELETE":
                req = self._find(key, rest[0])
                self._forget(req)
                return 204, None
        raise HttpError(405, f"Method {method} not allowed on {path}")

    # --- handlers -----------------------------------------------------------------------------------------
    async def _direct(self, dep: UbiOpsDeployment, key: tuple[str, str, str], body: bytes,
                      query: dict[str, str]) -> tuple[int, Any]:
        timeout = _timeout(query, 300, 10, 3600)
        data = _json(body)
        items = data if isinstance(data, list) else [data]
        for item in items:
            self._check_item(dep, item)
        req = _Request(key, data, len(body), timeout)
        self._store(req)
        rows = max(1, len(items))
        req.status, req.time_started = "processing", time.time()
        await self.ctx.model.serve(rows)
        self._finish(dep, req, items, batch_function=isinstance(data, list))
        answer = {"id": req.id, "deployment": req.deployment, "version": key[2], "status": req.status,
                  "success": req.status == "completed", "result": req.result,
                  "error_message": req.error_message, "timeout": timeout}
        return 200, answer

    def _batch(self, dep: UbiOpsDeployment, key: tuple[str, str, str], body: bytes,
               query: dict[str, str]) -> tuple[int, Any]:
        timeout = _timeout(query, 14400, 1, 172800)
        data = _json(body)
        items = data if isinstance(data, list) else [data]
        if not items:
            raise HttpError(400, "Provide at least one request")
        if len(items) > MAX_ITEMS:
            raise HttpError(400, f"The maximum number of requests per batch is {MAX_ITEMS}, got {len(items)}")
        for item in items:  # one bad item rejects all
            self._check_item(dep, item)
        queue = self._ensure_workers()
        created = []
        for item in items:
            req = _Request(key, item, len(orjson.dumps(item)), timeout)
            self._store(req)
            queue.put_nowait(req)
            created.append({"id": req.id, "deployment": req.deployment, "version": key[2],
                            "status": req.status, "time_created": _iso(req.time_created)})
        return 201, created

    def _collect(self, key: tuple[str, str, str], body: bytes) -> tuple[int, Any]:
        ids = _id_list(body)
        found = [self._find(key, i) for i in ids]
        out = [r.details() for r in found]
        self._rng.shuffle(out)  # the platform does not keep the input order
        return 200, out

    def _list(self, key: tuple[str, str, str], query: dict[str, str]) -> tuple[int, Any]:
        wanted = set(query.get("status", "completed").split(","))
        bad = wanted - set(STATUSES)
        if bad:
            raise HttpError(400, f"Unknown status {sorted(bad)[0]!r}")
        try:
            limit = int(query.get("limit", "50"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise HttpError(400, "limit and offset must be integers") from None
        if limit < 1 or offset < 0:
            raise HttpError(400, "limit must be >= 1 and offset >= 0")
        matches = [r for r in reversed(self._requests.values()) if r.key == key and r.status in wanted]
        return 200, [r.details(data=False) for r in matches[offset:offset + limit]]

    def _patch(self, key: tuple[str, str, str], request_id: str, body: bytes) -> tuple[int, Any]:
        doc = _json(body)
        if not isinstance(doc, dict) or doc.get("status") != "cancelled":
            raise HttpError(400, "The status can only be updated to 'cancelled'")
        req = self._find(key, request_id)
        self._cancel(req)
        return 200, req.details(data=False)

    def _cancel_many(self, key: tuple[str, str, str], body: bytes, query: dict[str, str]) -> tuple[int, Any]:
        status = query.get("status")
        if status is not None and not body.strip():
            if status not in ("pending", "processing"):
                raise HttpError(400, "status must be 'pending' or 'processing'")
            targets = [r for r in self._requests.values() if r.key == key and r.status == status]
        else:
            targets = [r for r in (self._requests.get(i) for i in _id_list(body)) if r is not None and r.key == key]
        for req in targets:
            self._cancel(req)
        return 200, {"cancelled": len(targets)}

    def _delete_many(self, key: tuple[str, str, str], body: bytes) -> tuple[int, Any]:
        found = [self._find(key, i) for i in _id_list(body)]  # one unknown id: nothing is deleted
        for req in found:
            self._forget(req)
        return 200, {"deleted": len(found)}

    # --- state --------------------------------------------------------------------------------------------
    def _check_item(self, dep: UbiOpsDeployment, item: Any) -> None:
        if dep.input_type == "plain":
            if not isinstance(item, str):
                raise HttpError(400, "A plain deployment takes a string as input")
        elif not isinstance(item, dict):
            raise HttpError(400, "A structured deployment takes a JSON object of input fields")

    def _find(self, key: tuple[str, str, str], request_id: str) -> _Request:
        req = self._requests.get(request_id)
        if req is None or req.key != key:
            raise HttpError(404, f"Request {request_id!r} not found")
        return req

    def _store(self, req: _Request) -> None:
        self._requests[req.id] = req

    def _forget(self, req: _Request) -> None:
        req.cancel_asked = True  # a queued one is skipped by the workers
        self._requests.pop(req.id, None)

    def _mark_finished(self, req: _Request) -> None:
        self._finished.append(req.id)
        while len(self._finished) > self._keep_finished:
            old = self._requests.get(self._finished.popleft())
            if old is not None and old.status in TERMINAL:
                del self._requests[old.id]

    def _cancel(self, req: _Request) -> None:
        if req.status == "pending":
            req.status, req.time_completed, req.cancel_asked = "cancelled", time.time(), True
            self._mark_finished(req)
        elif req.status == "processing":
            req.status, req.cancel_asked = "cancelled_pending", True

    def _finish(self, dep: UbiOpsDeployment, req: _Request, items: list[Any], *, batch_function: bool) -> None:
        req.time_completed = time.time()
        if req.cancel_asked:
            req.status = "cancelled"
        else:
            results: list[Any] = []
            error = None
            for item in items:
                result, error = self._infer(dep, item)
                if error:
                    break
                results.append(result)
            if error is None and self.ctx.config.error_rate > 0 and self._rng.random() < self.ctx.config.error_rate:
                error = "Emulated deployment error (error_rate)"
            if error is not None:
                req.status, req.error_message = "failed", error
            else:
                req.status = "completed"
                req.result = results if batch_function else results[0]
                req.output_size = len(orjson.dumps(req.result))
        self._mark_finished(req)

    def _infer(self, dep: UbiOpsDeployment, item: Any) -> tuple[Any, str | None]:
        if dep.input_type == "plain":
            return item, None
        missing = [f for f in dep.fields if f not in item]
        if missing:
            return None, f"Missing input field(s): {', '.join(missing)}"
        values: list[float] = []
        for f in dep.fields or tuple(item):
            _numbers(item[f], values)
        return {"dense_1": [_score(values)]}, None

    def _ensure_workers(self) -> asyncio.Queue[_Request]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._workers = [loop.create_task(self._work(self._queue))
                             for _ in range(max(1, self.ctx.config.replicas))]
        return self._queue

    async def _work(self, queue: asyncio.Queue[_Request]) -> None:
        while True:
            req = await queue.get()
            if req.cancel_asked or req.status != "pending":
                continue
            dep = self._deployments[(req.key[0], req.key[1])]
            req.status, req.time_started = "processing", time.time()
            try:
                await self.ctx.model.serve(1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pragma: no cover - the model should not fail; keep the worker alive
                req.status, req.error_message, req.time_completed = "failed", str(exc), time.time()
                self._mark_finished(req)
                continue
            self._finish(dep, req, [req.data], batch_function=False)


def _timeout(query: dict[str, str], default: int, lo: int, hi: int) -> int:
    raw = query.get("timeout")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"timeout must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise HttpError(400, f"timeout must be between {lo} and {hi}, got {value}")
    return value


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HttpError(400, "The request body is not valid JSON") from None


def _id_list(body: bytes) -> list[str]:
    ids = _json(body)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise HttpError(400, "Provide a list of request ids")
    if len(ids) > MAX_ITEMS:
        raise HttpError(400, f"A maximum of {MAX_ITEMS} requests can be given, got {len(ids)}")
    return ids

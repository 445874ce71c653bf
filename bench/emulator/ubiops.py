"""Emulated UbiOps deployment-request API (targets.md §2) as a plain ASGI app.

Mounted by bench.emulator.app for paths under /v2/ and /v2.1/. Batch requests go into an asyncio queue served
by ``replicas`` worker tasks through the shared capacity model (ctx.model.serve), so direct and batch requests
compete for the same service slots, as on the platform. What the official ``ubiops`` client sends is accepted
as it sends it: a plain input arrives as a raw ``text/plain`` body. Request timeouts are enforced (a batch
request's clock starts when it is processed), unfinished batch requests can be capped, and the requests
endpoint group can be rate limited per source IP (bench.emulator.ratelimit). Request records and the list and
cancel rules live in bench.emulator.ubiops_store.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, header, read_body, send_json, send_response
from bench.emulator.config import UbiOpsDeployment
from bench.emulator.context import EmulatorContext
from bench.emulator.ratelimit import FixedWindowLimiter, Header
from bench.emulator.ubiops_input import input_problem
from bench.emulator.ubiops_store import Key, RequestStore, UbiOpsRequest, iso

__all__ = ["MAX_ITEMS", "UbiOpsEmulator", "timeout_message"]

MAX_ITEMS = 250
MAX_BODY = 64 * 1024 * 1024
_TEXT = "text/plain; charset=utf-8"


def timeout_message(timeout: int) -> str:
    """The error message of a request that ran past its timeout (the platform's wording is unverified)."""
    return f"Request timed out: it did not finish within its timeout of {timeout} seconds"


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


class _Raw:
    """An answer that is not JSON (a plain request's input or output, as the platform stores it)."""

    __slots__ = ("body", "content_type")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type


class UbiOpsEmulator(SubApp):
    """ASGI app: ``UbiOpsEmulator(ctx)``; ``window_s`` overrides the config's rate-limit window (tests)."""

    def __init__(self, ctx: EmulatorContext, *, window_s: float | None = None, keep_finished: int = 100_000) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self._deployments: dict[tuple[str, str], UbiOpsDeployment] = {
            (d.project, d.name): d for d in cfg.ubiops_deployments}
        token = cfg.ubiops_token.strip()
        self._expected_auth = token if token[:6].lower() == "token " else f"Token {token}"
        window = cfg.rate_limit_window_s if window_s is None else window_s
        self._limiter = FixedWindowLimiter(cfg.rate_limit_per_min, window) if cfg.rate_limit_per_min > 0 else None
        self._store = RequestStore(keep_finished)
        self._rng = random.Random(cfg.seed)
        self._queue: asyncio.Queue[UbiOpsRequest] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- ASGI ---------------------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[Header] = []
        try:
            if self._limiter is not None:  # every call here is in the requests endpoint group
                client = (scope.get("client") or ("?", 0))[0]
                allowed, headers = self._limiter.take(str(client))
                if not allowed:
                    raise HttpError(429, "Rate limit exceeded, try again later")
            self._check_auth(scope)
            body = await read_body(receive, MAX_BODY)
            status, answer = await self._route(scope, body)
        except HttpError as exc:
            status, answer = exc.status, {"error": exc.message}
        if isinstance(answer, _Raw):
            await send_response(send, status, answer.body, answer.content_type, headers)
        else:
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
        plain_body = "text/plain" in (header(scope, b"content-type") or "")
        if not rest:
            if method == "POST":
                return await self._direct(dep, key, body, query, plain_body)
            if method == "GET":
                return 200, self._store.listing(key, query)
        elif len(rest) == 1 and rest[0] in ("batch", "collect", "cancel", "delete") and method == "POST":
            if rest[0] == "batch":
                return self._batch(dep, key, body, query, plain_body)
            if rest[0] == "collect":
                return self._collect(key, body)
            if rest[0] == "cancel":
                return self._cancel_many(key, body, query)
            return self._delete_many(key, body)
        elif len(rest) == 1:
            if method == "GET":
                req = self._store.find(key, rest[0])
                return 200, req.details(data=query.get("metadata_only", "false").lower() != "true", extra=True)
            if method == "PATCH":
                return self._patch(key, rest[0], body)
            if method == "DELETE":
                self._store.forget(self._store.find(key, rest[0]))
                return 204, None
        elif len(rest) == 2 and rest[1] in ("input", "output") and method == "GET":
            return self._file(self._store.find(key, rest[0]), rest[1])
        raise HttpError(405, f"Method {method} not allowed on {path}")

    # --- handlers -----------------------------------------------------------------------------------------
    async def _direct(self, dep: UbiOpsDeployment, key: Key, body: bytes, query: dict[str, str],
                      plain_body: bool) -> tuple[int, Any]:
        timeout = _timeout(query, 300, 10, 3600)
        data = _text(body) if plain_body else _json(body)
        items = data if isinstance(data, list) else [data]
        _check_items(dep, items)
        req = UbiOpsRequest(key, data, len(body), timeout, plain=dep.input_type == "plain")
        self._store.add(req)
        req.status, req.time_started = "processing", time.time()
        try:
            await asyncio.wait_for(self.ctx.model.serve(max(1, len(items))), timeout)
        except TimeoutError:
            req.status, req.error_message = "failed", timeout_message(timeout)
            self._store.finished(req)
        else:
            self._finish(dep, req, items, batch_function=isinstance(data, list))
        answer = {"id": req.id, "deployment": req.deployment, "version": key[2], "status": req.status,
                  "success": req.status == "completed", "result": req.result,
                  "error_message": req.error_message, "timeout": timeout}
        return 200, answer

    def _batch(self, dep: UbiOpsDeployment, key: Key, body: bytes, query: dict[str, str],
               plain_body: bool) -> tuple[int, Any]:
        cfg = self.ctx.config
        timeout = _timeout(query, 14400, 1, cfg.ubiops_max_batch_timeout_s)
        data = _text(body) if plain_body else _json(body)
        items = data if isinstance(data, list) else [data]
        if not items:
            raise HttpError(400, "Provide at least one request")
        if len(items) > MAX_ITEMS:
            raise HttpError(400, f"The maximum number of requests per batch is {MAX_ITEMS}, got {len(items)}")
        _check_items(dep, items)  # one bad item rejects all
        if cfg.ubiops_max_pending > 0:
            open_now = self._store.open_count(key)
            if open_now + len(items) > cfg.ubiops_max_pending:
                raise HttpError(400, f"The maximum queue size of this deployment version has been reached: "
                                f"{open_now} requests are pending or processing, the maximum is "
                                f"{cfg.ubiops_max_pending}")
        queue = self._ensure_workers()
        plain = dep.input_type == "plain"
        created = []
        for item in items:
            size = len(item.encode()) if isinstance(item, str) else len(orjson.dumps(item))
            req = UbiOpsRequest(key, item, size, timeout, plain=plain)
            self._store.add(req)
            queue.put_nowait(req)
            created.append({"id": req.id, "deployment": req.deployment, "version": key[2],
                            "status": req.status, "time_created": iso(req.time_created)})
        return 201, created

    def _collect(self, key: Key, body: bytes) -> tuple[int, Any]:
        ids = _id_list(body)
        unknown = self.ctx.config.ubiops_unknown_id_status
        found = [self._store.find(key, i, unknown) for i in ids]  # one unknown id: nothing is returned
        out = [r.details() for r in found]
        self._rng.shuffle(out)  # the platform does not keep the input order
        return 200, out

    def _file(self, req: UbiOpsRequest, which: str) -> tuple[int, Any]:
        """``GET …/requests/{id}/input`` and ``…/output``: the stored input or result, as it was sent/produced."""
        if which == "output" and req.status != "completed":
            raise HttpError(404, f"Request {req.id!r} has no output (status {req.status})")
        value = req.data if which == "input" else req.result
        if req.plain and isinstance(value, str):
            return 200, _Raw(value.encode(), _TEXT)
        return 200, value

    def _patch(self, key: Key, request_id: str, body: bytes) -> tuple[int, Any]:
        doc = _json(body)
        if not isinstance(doc, dict) or doc.get("status") != "cancelled":
            raise HttpError(400, "The status can only be updated to 'cancelled'")
        req = self._store.find(key, request_id)
        self._store.cancel(req)  # a finished request keeps its status: the answer shows it was not cancelled
        return 200, req.details(data=False)

    def _cancel_many(self, key: Key, body: bytes, query: dict[str, str]) -> tuple[int, Any]:
        missing = self.ctx.config.ubiops_batch_cancel_status
        if missing == 405:
            raise HttpError(405, 'Method "POST" not allowed.')
        if missing:
            raise HttpError(missing, "Not found.")
        status = query.get("status")
        ids = _id_list(body) if body.strip() else []
        if status is not None and not ids:  # an empty body (the official client sends []): all of a status
            if status not in ("pending", "processing"):
                raise HttpError(400, "status must be 'pending' or 'processing'")
            targets = self._store.with_status(key, status)
        elif self.ctx.config.ubiops_cancel_unknown_ids:  # one unknown id: nothing is cancelled
            targets = [self._store.find(key, i, self.ctx.config.ubiops_unknown_id_status) for i in ids]
        else:
            targets = [r for r in (self._store.get(i) for i in ids) if r is not None]
        return 200, {"cancelled": self._store.cancel_many(key, targets)}  # finished ones are not cancelled

    def _delete_many(self, key: Key, body: bytes) -> tuple[int, Any]:
        unknown = self.ctx.config.ubiops_unknown_id_status
        found = [self._store.find(key, i, unknown) for i in _id_list(body)]  # one unknown id: nothing is deleted
        for req in found:
            self._store.forget(req)
        return 200, {"deleted": len(found)}

    # --- processing ---------------------------------------------------------------------------------------
    def _finish(self, dep: UbiOpsDeployment, req: UbiOpsRequest, items: list[Any], *, batch_function: bool) -> None:
        if req.cancel_asked:
            req.status = "cancelled"
        else:
            results = [self._infer(dep, item) for item in items]  # the inputs were checked at create
            if self.ctx.config.error_rate > 0 and self._rng.random() < self.ctx.config.error_rate:
                req.status, req.error_message = "failed", "Emulated deployment error (error_rate)"
            else:
                req.status = "completed"
                req.result = results if batch_function else results[0]
                req.output_size = len(req.result.encode()) if isinstance(req.result, str) \
                    else len(orjson.dumps(req.result))
        self._store.finished(req)

    def _infer(self, dep: UbiOpsDeployment, item: Any) -> Any:
        if dep.input_type == "plain":
            return item
        values: list[float] = []
        for f in dep.fields or tuple(item):
            _numbers(item[f], values)
        return {"dense_1": [_score(values)]}

    def _ensure_workers(self) -> asyncio.Queue[UbiOpsRequest]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._workers = [loop.create_task(self._work(self._queue))
                             for _ in range(max(1, self.ctx.config.replicas))]
        return self._queue

    async def _work(self, queue: asyncio.Queue[UbiOpsRequest]) -> None:
        while True:
            req = await queue.get()
            if req.cancel_asked or req.status != "pending":
                continue
            dep = self._deployments[(req.key[0], req.key[1])]
            req.status, req.time_started = "processing", time.time()  # a batch timeout starts here
            try:
                await asyncio.wait_for(self.ctx.model.serve(1), req.timeout)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                req.status = "cancelled" if req.cancel_asked else "failed"
                req.error_message = None if req.cancel_asked else timeout_message(req.timeout)
                self._store.finished(req)
                continue
            except Exception as exc:  # pragma: no cover - the model should not fail; keep the worker alive
                req.status, req.error_message = "failed", str(exc)
                self._store.finished(req)
                continue
            self._finish(dep, req, [req.data], batch_function=False)


def _check_items(dep: UbiOpsDeployment, items: list[Any]) -> None:
    """400 for the whole call when one input misses a field or has the wrong type (nothing is created)."""
    problem = input_problem(dep.input_type, dep.fields, dep.field_types, items)
    if problem is not None:
        raise HttpError(400, problem[:1].upper() + problem[1:])


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


def _text(body: bytes) -> str:
    """A raw ``text/plain`` body, as the official client sends a plain input."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "The request body is not valid UTF-8 text") from None

"""Fault injection for the emulator: the fault spec (``--fault`` / ``[emulator] faults``) and the seeded plan.

A spec is a comma-separated list of ``name:value[:key=value...]`` items, e.g.
``stall:0.01,reset:0.02,5xx:0.01:burst=20:status=503,close_after:100``; in a scenario it may also be a table
(``faults = { stall = 0.01, "5xx" = { p = 0.01, burst = 20 } }``). ``value`` is the probability that a request
gets the fault (``close_after`` takes a request count instead). Probabilities add up to at most 1: each request
draws once from one RNG seeded by the emulator's ``seed``, so the sequence of decisions reproduces run after run
(which request gets which decision still depends on arrival order under concurrency).

Byte-level faults (stall, reset, accept_reset, garbage, bad_length, close_after) are applied by
bench.emulator.faultserver, a small HTTP/1.1 server below ASGI that owns the sockets; with ``http2`` the ASGI-level
subset runs as :class:`FaultMiddleware` inside hypercorn. ``/metrics`` and ``/health`` are never faulted, so
tests can always scrape and probe the emulator.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.emulator.asgi import AsgiApp, Message, Receive, Scope, Send

__all__ = ["ASGI_FAULTS", "EXEMPT_PATHS", "FAULTS", "Decision", "FaultMiddleware", "FaultPlan", "FaultSpec",
           "FaultSpecError", "canonical_faults", "describe", "error_answer", "fault_problem", "faults_to_string",
           "pad_json", "parse_faults", "plan_from_config"]

# name -> (parameter defaults, help); every probability fault also takes its probability as ``value``
FAULTS: dict[str, tuple[dict[str, float], str]] = {
    "stall": ({}, "accept the request, never answer"),
    "reset": ({}, "close the connection with a TCP RST instead of answering"),
    "accept_reset": ({"spare": 0.0}, "reset a new connection (TCP RST) before reading anything; drawn per "
                     "connection, the first `spare` connections (e.g. a metrics scraper's) are never reset"),
    "slow": ({"ms": 300.0}, "trickle the answer's body over `ms` milliseconds"),
    "garbage": ({"bytes": 64.0}, "answer `bytes` of non-HTTP junk, then close"),
    "5xx": ({"burst": 10.0, "status": 503.0}, "start a burst of `burst` answers with `status` (500-599)"),
    "429": ({"burst": 10.0, "retry_after": 1.0}, "start a burst of `burst` 429 answers with Retry-After"),
    "bad_length": ({"extra": 100.0}, "announce a Content-Length `extra` bytes longer than the body sent"),
    "chunked": ({"chunks": 4.0}, "send the answer with Transfer-Encoding: chunked in `chunks` pieces"),
    "huge": ({"bytes": 1048576.0}, "pad JSON answers with whitespace to `bytes` (still valid JSON)"),
    "close_after": ({}, "close each connection after N answers (value = N), without Connection: close"),
}
# what FaultMiddleware can do inside an ASGI server (HTTP/2 via hypercorn)
ASGI_FAULTS = frozenset({"stall", "slow", "5xx", "429", "chunked", "huge"})
EXEMPT_PATHS = frozenset({"/metrics", "/health"})
_PER_CONNECTION = frozenset({"close_after", "accept_reset"})  # not drawn per request
_ORDER = ("stall", "reset", "garbage", "bad_length", "5xx", "429", "slow", "huge", "chunked")


class FaultSpecError(ValueError):
    """A bad fault spec; the message names the item and the problem (one line)."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    name: str
    value: float  # probability (0..1), or N for close_after
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str) -> float:
        for k, v in self.params:
            if k == key:
                return v
        return FAULTS[self.name][0][key]


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"{where}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise FaultSpecError(f"{where}: must be finite, got {text!r}")
    return value


def _item(name: str, value: float, params: Mapping[str, float], where: str) -> FaultSpec:
    if name not in FAULTS:
        raise FaultSpecError(f"{where}: unknown fault {name!r} (known: {', '.join(FAULTS)})")
    defaults = FAULTS[name][0]
    for key, v in params.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise FaultSpecError(f"{where}: unknown parameter {key!r} for {name} (known: {known})")
        floor = 1 if key in ("burst", "chunks") else 0  # a count of 0 is refused too: say so
        if v < floor:
            raise FaultSpecError(f"{where}: {key} must be >= {floor}, got {v:g}")
    if name == "close_after":
        if value < 1 or value != int(value):
            raise FaultSpecError(f"{where}: close_after takes a request count >= 1, got {value:g}")
    elif not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"{where}: probability must be between 0 and 1, got {value:g}")
    merged = {**defaults, **params}
    if name == "5xx" and not 500 <= merged["status"] <= 599:
        raise FaultSpecError(f"{where}: status must be 500..599, got {merged['status']:g}")
    for key in ("burst", "chunks"):
        if key in merged and merged[key] < 1:
            raise FaultSpecError(f"{where}: {key} must be >= 1, got {merged[key]:g}")
    return FaultSpec(name, value, tuple(sorted(params.items())))


def _from_string(text: str) -> list[FaultSpec]:
    out: list[FaultSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, *rest = item.split(":")
        if not rest:
            raise FaultSpecError(f"{item!r}: expected name:value (e.g. {name}:0.01)")
        value = _number(rest[0], item)
        params: dict[str, float] = {}
        for kv in rest[1:]:
            key, eq, v = kv.partition("=")
            if not eq:
                raise FaultSpecError(f"{item!r}: expected key=value after the value, got {kv!r}")
            params[key.strip()] = _number(v, item)
        out.append(_item(name.strip(), value, params, item))
    return out


def _from_table(table: Mapping[str, object]) -> list[FaultSpec]:
    out: list[FaultSpec] = []
    for name, entry in table.items():
        if isinstance(entry, Mapping):
            p_key = "n" if name == "close_after" else "p"
            if p_key not in entry:
                raise FaultSpecError(f"{name}: table needs {p_key!r}")
            rest = {k: v for k, v in entry.items() if k != p_key}
            for k, v in [(p_key, entry[p_key]), *rest.items()]:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise FaultSpecError(f"{name}.{k}: must be a number, got {v!r}")
            out.append(_item(name, float(entry[p_key]), {k: float(v) for k, v in rest.items()}, name))
        elif isinstance(entry, int | float) and not isinstance(entry, bool):
            out.append(_item(name, _number(str(entry), name), {}, name))
        else:
            raise FaultSpecError(f"{name}: must be a number or a table, got {entry!r}")
    return out


def parse_faults(spec: str | Mapping[str, object]) -> tuple[FaultSpec, ...]:
    """The faults of a spec string or table; raises FaultSpecError (one line) on any problem."""
    items = _from_string(spec) if isinstance(spec, str) else _from_table(spec)
    names = [f.name for f in items]
    for name in names:
        if names.count(name) > 1:
            raise FaultSpecError(f"{name}: given more than once")
    total = sum(f.value for f in items if f.name not in _PER_CONNECTION)
    if total > 1.0 + 1e-9:
        raise FaultSpecError(f"probabilities add up to {total:g}, more than 1")
    return tuple(items)


def _fmt(value: float) -> str:
    """Exact and short: integers without a decimal point, other values as repr (round-trips)."""
    return str(int(value)) if value == int(value) else repr(value)


def faults_to_string(faults: tuple[FaultSpec, ...]) -> str:
    """The canonical spec string (what EmulatorConfig.faults stores); parse_faults reads it back."""
    parts = []
    for f in faults:
        parts.append(":".join([f.name, _fmt(f.value), *(f"{k}={_fmt(v)}" for k, v in f.params)]))
    return ",".join(parts)


def canonical_faults(value: object) -> str:
    """A spec string or table as the canonical string EmulatorConfig.faults stores (FaultSpecError if bad)."""
    if isinstance(value, str):
        return faults_to_string(parse_faults(value))
    if isinstance(value, Mapping):
        return faults_to_string(parse_faults(value))
    raise FaultSpecError(f"must be a string like 'stall:0.01,reset:0.02' or a table, got {value!r}")


def fault_problem(spec: str, http2: bool) -> str | None:
    """Why a canonical spec cannot be served (None when it can); with ``http2`` only ASGI_FAULTS work."""
    try:
        faults = parse_faults(spec)
    except FaultSpecError as exc:
        return str(exc)
    if http2:
        wire = [f.name for f in faults if f.name not in ASGI_FAULTS]
        if wire:
            return (f"{', '.join(wire)} need the HTTP/1.1 fault server; with http2 only "
                    f"{', '.join(sorted(ASGI_FAULTS))} can be injected")
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: ``fault`` is None (answer normally) or a fault name; ``spec`` its parameters."""

    fault: str | None
    spec: FaultSpec | None = None


NO_FAULT = Decision(None)


class FaultPlan:
    """Seeded per-request decisions, bursts included. One per server; not thread-safe (one event loop)."""

    def __init__(self, faults: tuple[FaultSpec, ...], seed: int,
                 on_fault: Callable[[str], None] | None = None) -> None:
        self.faults = {f.name: f for f in faults}
        self._rng = random.Random(f"faults-{seed}")
        self._cumulative: list[tuple[float, FaultSpec]] = []
        acc = 0.0
        for name in _ORDER:
            f = self.faults.get(name)
            if f is not None and f.value > 0:
                acc += f.value
                self._cumulative.append((acc, f))
        self._burst: FaultSpec | None = None
        self._burst_left = 0
        self.on_fault = on_fault
        close = self.faults.get("close_after")
        self.close_after = int(close.value) if close is not None else 0
        accept = self.faults.get("accept_reset")
        self.accept_reset = accept.value if accept is not None else 0.0
        self._spare = int(accept.param("spare")) if accept is not None else 0

    @property
    def active(self) -> bool:
        return bool(self._cumulative) or self.close_after > 0 or self.accept_reset > 0

    def reset_on_accept(self) -> bool:
        """Whether a new connection is reset before anything is read (draws only when accept_reset is set)."""
        if self.accept_reset <= 0:
            return False
        if self._spare > 0:
            self._spare -= 1
            return False
        if self._rng.random() >= self.accept_reset:
            return False
        if self.on_fault is not None:
            self.on_fault("accept_reset")
        return True

    def decide(self, path: str) -> Decision:
        """The decision for the next request (exempt paths always answer normally and draw nothing)."""
        if path in EXEMPT_PATHS:
            return NO_FAULT
        if self._burst_left > 0 and self._burst is not None:
            self._burst_left -= 1
            return self._hit(self._burst)
        if not self._cumulative:
            return NO_FAULT
        x = self._rng.random()
        for bound, spec in self._cumulative:
            if x < bound:
                if spec.name in ("5xx", "429"):
                    self._burst, self._burst_left = spec, int(spec.param("burst")) - 1
                return self._hit(spec)
        return NO_FAULT

    def _hit(self, spec: FaultSpec) -> Decision:
        if self.on_fault is not None:
            self.on_fault(spec.name)
        return Decision(spec.name, spec)

    def junk(self, size: int) -> bytes:
        """Seeded non-HTTP bytes (never starting with 'HTTP/')."""
        return b"\x00\xff" + self._rng.randbytes(max(0, size - 2))


def error_answer(spec: FaultSpec) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, JSON body, extra headers) of an injected 5xx or 429 answer."""
    if spec.name == "429":
        retry = f"{spec.param('retry_after'):g}".encode()
        return 429, b'{"error":"injected fault: rate limited"}', [(b"retry-after", retry)]
    status = int(spec.param("status"))
    return status, b'{"error":"injected fault: %d burst"}' % status, []


def pad_json(body: bytes, content_type: bytes, size: int) -> bytes:
    """A JSON body padded with trailing whitespace to ``size`` bytes (still valid JSON); others unchanged."""
    if b"json" not in content_type.lower() or len(body) >= size:
        return body
    return body + b" " * (size - len(body))


class FaultMiddleware:
    """The ASGI-level faults (ASGI_FAULTS) around an app, for servers bench does not own (hypercorn, HTTP/2).
    Wrapped in ``body_read_before_answer`` there, as every app served by hypercorn is."""

    def __init__(self, app: AsgiApp, plan: FaultPlan, on_received: Callable[[], None] | None = None) -> None:
        self.app, self.plan, self.on_received = app, plan, on_received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.on_received is not None and path not in EXEMPT_PATHS:
            self.on_received()
        decision = self.plan.decide(path)
        spec = decision.spec
        if spec is None:
            return await self.app(scope, receive, send)
        name = spec.name
        if name == "stall":
            await asyncio.Event().wait()  # until the server cancels us (client gone or shutdown)
        if name in ("5xx", "429"):
            status, body, extra = error_answer(spec)
            head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
            await send({"type": "http.response.start", "status": status, "headers": head})
            return await send({"type": "http.response.body", "body": body})
        start, body = await _collect(self.app, scope, receive)
        await _send_shaped(send, start, body, spec)


async def _collect(app: AsgiApp, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
    start: Message = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start, b"".join(chunks)


async def _send_shaped(send: Send, start: Message, body: bytes, spec: FaultSpec) -> None:
    """slow / chunked / huge as ASGI messages (the server frames them: DATA frames or chunked encoding)."""
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if spec.name == "huge":
        body = pad_json(body, ctype, int(spec.param("bytes")))
    pieces = _split(body, 10 if spec.name == "slow" else int(spec.param("chunks")) if spec.name == "chunked" else 1)
    if spec.name != "chunked":
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
    pause = spec.param("ms") / 1000 / max(1, len(pieces)) if spec.name == "slow" else 0.0
    for i, piece in enumerate(pieces):
        if pause:
            await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": piece, "more_body": i < len(pieces) - 1})


def _split(body: bytes, n: int) -> list[bytes]:
    """``body`` in ``n`` nearly equal pieces (one empty piece for an empty body)."""
    if not body or n <= 1:
        return [body]
    step = -(-len(body) // n)
    return [body[i:i + step] for i in range(0, len(body), step)]


def describe() -> list[str]:
    """One help line per fault (``bench serve --help`` and docs)."""
    out = []
    for name, (params, text) in FAULTS.items():
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        out.append(f"{name}: {text}" + (f" (defaults {extra})" if extra else ""))
    return out


def plan_from_config(spec: str, seed: int, on_fault: Callable[[str], None] | None = None) -> FaultPlan:
    """The plan of an EmulatorConfig's canonical ``faults`` string."""
    return FaultPlan(parse_faults(spec), seed, on_fault)

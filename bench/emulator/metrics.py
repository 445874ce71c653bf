"""The emulator's own Prometheus metrics (``GET /metrics``, text exposition format 0.0.4), named like MLServer's.

Server-side figures to put beside the client's: every request through the app is counted by method, route and
status, timed into a bucketed histogram, and tracked in an in-progress gauge; inference routes also time the model
step. Routes are labelled by template (ids and names become ``{}``) so label cardinality stays bounded. Counting
costs a dict update and a bisect per request; there is no background work.

Metric families (seconds throughout):

- ``rest_server_requests_total{method,path,status_code}`` counter
- ``rest_server_request_duration_seconds{method,path,status_code}`` histogram (time in the app, first byte in → last
  byte out; by status, as MLServer's, so a server view can keep the 2xx answers)
- ``rest_server_requests_in_progress{method,path}`` gauge
- ``model_infer_request_duration_seconds{model,version}`` histogram (capacity-model wait + scoring)
- ``model_infer_request_success_total`` / ``model_infer_request_failure_total{model,version}`` counters
- ``emulator_requests_received_total`` counter: requests parsed by the fault server before any fault is applied
  (only with faults on HTTP/1.1; ``/metrics`` and ``/health`` not counted)
- ``emulator_faults_injected_total{fault}`` counter
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping
from typing import Any

from bench.emulator.asgi import AsgiApp, Message, Receive, Scope, Send

__all__ = ["BUCKETS", "Metrics", "MetricsMiddleware", "route_template"]

# seconds; finer than Prometheus' default below 10 ms, where the emulator's service times sit
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
           7.5, 10.0)
METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATIC = frozenset({
    "api", "pipelines", "infer", "models", "health", "live", "ready", "versions", "projects",
    "deployments", "deployment_requests", "requests", "batch", "status", "admin", "auth", "realms", "protocol",
    "openid-connect", "token", "metrics", "environments", "pipeline_versions", "get_pipeline", "list_pipelines",
    "deployment_versions", "batch_requests", "cancel", "generate",
})
_ROOTS = frozenset({"v1", "v2", "v2.1"})  # kept only as the first segment (elsewhere "v1" is a version name)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_MAX_SEGMENTS = 10
_CACHE_MAX = 4096


def route_template(path: str) -> str:
    """``/v2/models/ccfraud/infer`` → ``/v2/models/{}/infer``: known words stay, every other segment is ``{}``."""
    segments = path.strip("/").split("/")
    if len(segments) > _MAX_SEGMENTS:
        segments = [*segments[:_MAX_SEGMENTS], "..."]
    return "/" + "/".join(s if s in _STATIC or s == "..." or not s or (i == 0 and s in _ROOTS) else "{}"
                          for i, s in enumerate(segments))


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # last = above every bucket (+Inf only)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


class Metrics:
    """All the emulator's metrics, in one object owned by the server's context (no module state)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str, str], _Histogram] = {}
        self.in_progress: dict[tuple[str, str], int] = {}
        self.infer: dict[tuple[str, str], _Histogram] = {}
        self.infer_ok: dict[tuple[str, str], int] = {}
        self.infer_failed: dict[tuple[str, str], int] = {}
        self.received = 0
        self.faults: dict[str, int] = {}
        self._templates: dict[str, str] = {}

    def template(self, path: str) -> str:
        cached = self._templates.get(path)
        if cached is None:
            cached = route_template(path)
            if len(self._templates) < _CACHE_MAX:
                self._templates[path] = cached
        return cached

    def started(self, key: tuple[str, str]) -> None:
        self.in_progress[key] = self.in_progress.get(key, 0) + 1

    def finished(self, key: tuple[str, str], status: int, seconds: float) -> None:
        self.in_progress[key] -= 1
        rkey = (key[0], key[1], str(status))
        self.requests[rkey] = self.requests.get(rkey, 0) + 1
        hist = self.durations.get(rkey)
        if hist is None:
            hist = self.durations[rkey] = _Histogram()
        hist.observe(seconds)

    def model_infer(self, model: str, version: str, seconds: float, ok: bool) -> None:
        key = (model, version)
        hist = self.infer.get(key)
        if hist is None:
            hist = self.infer[key] = _Histogram()
        hist.observe(seconds)
        counts = self.infer_ok if ok else self.infer_failed
        counts[key] = counts.get(key, 0) + 1

    def model_failed(self, model: str, version: str) -> None:
        key = (model, version)
        self.infer_failed[key] = self.infer_failed.get(key, 0) + 1

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    def render(self) -> bytes:
        """The text exposition of every family (families with no samples still get HELP/TYPE)."""
        out: list[str] = []
        self._counter(out, "rest_server_requests_total", "REST requests answered by the app",
                      ("method", "path", "status_code"), self.requests)
        self._histograms(out, "rest_server_request_duration_seconds", "time from request to last answer byte",
                         ("method", "path", "status_code"), self.durations)
        self._gauge(out, "rest_server_requests_in_progress", "requests being handled by the app",
                    ("method", "path"), self.in_progress)
        self._histograms(out, "model_infer_request_duration_seconds",
                         "model step: wait for a service slot plus scoring", ("model", "version"), self.infer)
        self._counter(out, "model_infer_request_success_total", "inferences answered",
                      ("model", "version"), self.infer_ok)
        self._counter(out, "model_infer_request_failure_total", "inferences refused or failed",
                      ("model", "version"), self.infer_failed)
        self._counter(out, "emulator_requests_received_total", "requests parsed by the fault server",
                      (), {(): self.received} if self.received else {})
        self._counter(out, "emulator_faults_injected_total", "faults injected, by fault",
                      ("fault",), {(k,): v for k, v in self.faults.items()})
        return ("\n".join(out) + "\n").encode()

    @staticmethod
    def _head(out: list[str], name: str, help_text: str, kind: str) -> None:
        """HELP and TYPE name the family as the 0.0.4 text format does: a counter by its sample's own name,
        ``_total`` included, as prometheus_client (and so MLServer) writes it; the bare name is OpenMetrics' style,
        and a strict 0.0.4 reader took the ``_total`` samples under it for untyped."""
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    def _counter(self, out: list[str], name: str, help_text: str, names: tuple[str, ...],
                 values: Mapping[Any, int]) -> None:
        self._head(out, name, help_text, "counter")
        for key, v in sorted(values.items()):
            out.append(f"{name}{_labels(names, key)} {v}")

    def _gauge(self, out: list[str], name: str, help_text: str, names: tuple[str, ...],
               values: dict[tuple[str, str], int]) -> None:
        self._head(out, name, help_text, "gauge")
        for key, v in sorted(values.items()):
            out.append(f"{name}{_labels(names, key)} {v}")

    def _histograms(self, out: list[str], name: str, help_text: str, names: tuple[str, ...],
                    hists: Mapping[Any, _Histogram]) -> None:
        self._head(out, name, help_text, "histogram")
        for key, h in sorted(hists.items()):
            acc = 0
            for bound, count in zip(BUCKETS, h.counts, strict=False):
                acc += count
                out.append(f"{name}_bucket{_labels((*names, 'le'), (*key, _num(bound)))} {acc}")
            total = acc + h.counts[-1]
            out.append(f"{name}_bucket{_labels((*names, 'le'), (*key, '+Inf'))} {total}")
            out.append(f"{name}_sum{_labels(names, key)} {h.sum!r}")
            out.append(f"{name}_count{_labels(names, key)} {total}")




class MetricsMiddleware:
    """Counts and times every HTTP request through ``app``; answers ``GET /metrics`` itself."""

    def __init__(self, app: AsgiApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        method: str = scope["method"]
        if path == METRICS_PATH and method == "GET":
            body = self.metrics.render()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        key = (method if method in _METHODS else "OTHER", self.metrics.template(path))
        status = 0  # no answer started yet
        metrics = self.metrics
        metrics.started(key)
        t0 = time.perf_counter()

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer started (nginx's code for it)
            raise
        finally:
            metrics.finished(key, status or 500, time.perf_counter() - t0)

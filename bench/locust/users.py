"""Bench users for existing locustfiles: ``from bench.locust import WallarooUser, UbiOpsUser, HttpUser``.

A user is built from a bench scenario file (``scenario = "path.toml"``) or from class attributes, and sends
bench's pre-encoded payloads (pandas-records / Arrow IPC, UbiOps structured or plain) over geventhttpclient
(the client under Locust's FastHttpUser). Every answer is classified the bench way -- a UbiOps
``"status": "failed"`` is a failure even with HTTP 200 -- and recorded twice: in Locust's stats (the request
event) and in this process's bench recorder (exact HDR histograms). At test stop a bench report is written:
by a single-process locust directly, by a master after merging every worker's recorder (bench.locust.collect).
Importing this module imports locust (gevent).
"""

from __future__ import annotations

import itertools
import socket
import sys
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from geventhttpclient import HTTPClient
from locust import User, constant, events, task

from bench.locust import _core, collect
from bench.results import Kind, kind_name

__all__ = ["BenchUser", "HttpUser", "UbiOpsUser", "WallarooUser"]

_PLANS: dict[type, _core.UserPlan] = {}


def _plan(cls: type[BenchUser]) -> _core.UserPlan:
    """Built once per user class and process: data read and every body encoded before the first request."""
    plan = _PLANS.get(cls)
    if plan is None:
        module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
        here = Path(module_file).resolve().parent if module_file else Path.cwd()  # the locustfile's directory
        if cls.scenario:
            from bench.scenario import read_scenario_file

            path = here / cls.scenario
            doc, file, base = read_scenario_file(path), str(cls.scenario), path.parent
        else:
            doc, file, base = cls.scenario_doc(), f"{cls.__module__}.{cls.__name__}", here
        plan = _PLANS[cls] = _core.user_plan(doc, file, base)
    return plan


def _failure_kind(exc: BaseException) -> int:
    if isinstance(exc, ConnectionRefusedError):
        return Kind.CONNECT_REFUSED
    if isinstance(exc, TimeoutError | socket.timeout):
        return Kind.READ_TIMEOUT
    if isinstance(exc, ConnectionError):
        return Kind.RESET
    return Kind.PROTOCOL_ERROR


def _tls_options(plan: _core.UserPlan) -> dict[str, Any]:
    """geventhttpclient options for the scenario's ``[engine] insecure`` / ``ca_bundle`` (bench.tlstrust), as
    bench's own engines have them; none when it set neither (the client's default trust store)."""
    trust = plan.scenario.engine.trust()
    if not plan.url.startswith("https:") or trust.default:
        return {}
    import gevent.ssl

    from bench.tlstrust import client_context

    def factory(**_: Any) -> gevent.ssl.SSLContext:
        return client_context(not trust.insecure, trust.ca_bundle, gevent.ssl.SSLContext)

    return {"ssl_context_factory": factory, "insecure": trust.insecure}


class BenchUser(User):
    """A closed-loop user sending bench's payloads as fast as answers come back (override ``wait_time``)."""

    abstract = True
    wait_time = constant(0)
    scenario: ClassVar[str | None] = None  # a bench scenario TOML ([target], [data], [auth]); relative paths
    # here and in the attributes of subclasses (data, body) are relative to the locustfile's directory
    name: ClassVar[str | None] = None  # the name in Locust's stats (default: the class name)
    timeout_s: ClassVar[float] = 60.0

    @classmethod
    def scenario_doc(cls) -> dict[str, Any]:
        """The [target] / [data] tables when no scenario file is given (subclasses build it from attributes)."""
        raise NotImplementedError(f"{cls.__name__}: set scenario = 'file.toml' or the target attributes")

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._plan = _plan(type(self))
        self._next = itertools.cycle(range(len(self._plan.bodies)))
        parts = urlsplit(self._plan.url)
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._client = HTTPClient.from_url(self._plan.url, concurrency=1, connection_timeout=self.timeout_s,
                                           network_timeout=self.timeout_s, **_tls_options(self._plan))
        self._label = self.name or type(self).__name__
        self._bench = collect.collector_for(environment, self._plan)
        self._headers = dict(self._plan.headers)
        self._tokens = self._bench.tokens

    def on_stop(self) -> None:
        self._client.close()

    @task
    def infer(self) -> None:
        """One request: send a pre-encoded body, classify the answer, record it in bench and in Locust."""
        plan = self._plan
        i = next(self._next)
        body, rows = plan.bodies[i], plan.rows[i]
        bench = self._bench
        tokens = self._tokens
        if tokens is not None:
            self._headers["Authorization"] = tokens.authorization()
        bench.in_flight += 1
        if bench.recorder is not None:
            bench.sent += 1
        sent = time.monotonic_ns()
        status, answer, failure = 0, b"", None
        try:
            resp = self._client.request(plan.method, self._path, body=body, headers=self._headers)
            status = resp.status_code
            answer = resp.read()
            resp.release()
            kind, rows_out, server_ns = plan.classify(status, answer, rows)
        except Exception as exc:  # a target fault: counted by kind, never a crash of the user
            kind, rows_out, server_ns, failure = _failure_kind(exc), 0, 0, exc
        done = time.monotonic_ns()
        bench.in_flight -= 1
        if status == 401 and tokens is not None:
            tokens.unauthorized()
        recorder = bench.recorder
        if recorder is not None:  # None once this process's report is made (the test is stopping)
            recorder.record(sent, sent, done, kind, status, rows_out if kind == Kind.OK else rows, len(body),
                            len(answer), server_ns)
            if kind != Kind.OK:
                recorder.error_detail(kind, status, answer[:512] or str(failure).encode())
        self.environment.events.request.fire(
            request_type=plan.method, name=self._label, response_time=(done - sent) / 1e6,
            response_length=len(answer), context={},
            exception=None if kind == Kind.OK else (failure or RuntimeError(f"{kind_name(kind)} {status}")))


class WallarooUser(BenchUser):
    """A Wallaroo pipeline: ``url`` (its inference URL), ``data`` (dataset file), ``format``
    ("pandas-records" | "arrow"), ``rows_per_request``, ``token_env`` (env var holding a bearer token)."""

    abstract = True
    url: ClassVar[str] = ""
    data: ClassVar[str] = ""
    format: ClassVar[str] = "pandas-records"
    rows_per_request: ClassVar[int] = 1
    token_env: ClassVar[str | None] = None

    @classmethod
    def scenario_doc(cls) -> dict[str, Any]:
        target: dict[str, Any] = {"kind": "wallaroo", "url": cls.url or cls.host or "", "format": cls.format}
        if cls.token_env:
            target["token_env"] = cls.token_env
        return {"name": cls.__name__, "target": target,
                "data": {"path": cls.data, "rows_per_request": cls.rows_per_request}}


class UbiOpsUser(BenchUser):
    """A UbiOps deployment (direct requests): ``base_url``, ``project``, ``deployment``, ``token_env``,
    ``data``, ``input`` ("structured" | "plain"), ``fields`` (dataset column → input field)."""

    abstract = True
    base_url: ClassVar[str] = ""
    project: ClassVar[str] = ""
    deployment: ClassVar[str] = ""
    version: ClassVar[str | None] = None
    token_env: ClassVar[str] = "UBIOPS_TOKEN"
    data: ClassVar[str] = ""
    input: ClassVar[str] = "structured"
    fields: ClassVar[dict[str, str]] = {}
    rows_per_request: ClassVar[int] = 1

    @classmethod
    def scenario_doc(cls) -> dict[str, Any]:
        target: dict[str, Any] = {"kind": "ubiops", "url": cls.base_url or cls.host or "", "project": cls.project,
                                  "deployment": cls.deployment, "token_env": cls.token_env, "input": cls.input,
                                  "fields": dict(cls.fields)}
        if cls.version:
            target["version"] = cls.version
        return {"name": cls.__name__, "target": target,
                "data": {"path": cls.data, "rows_per_request": cls.rows_per_request}}


class HttpUser(BenchUser):
    """Any HTTP endpoint: ``url``, ``body`` (file sent as is), ``method``, ``headers``; 2xx is success."""

    abstract = True
    url: ClassVar[str] = ""
    body: ClassVar[str] = ""
    method: ClassVar[str] = "POST"
    headers: ClassVar[dict[str, str]] = {}

    @classmethod
    def scenario_doc(cls) -> dict[str, Any]:
        return {"name": cls.__name__, "data": {"body": cls.body},
                "target": {"kind": "http", "url": cls.url or cls.host or "", "method": cls.method,
                           "headers": dict(cls.headers)}}


events.init.add_listener(collect.on_init)  # type: ignore[no-untyped-call]
events.init_command_line_parser.add_listener(collect.add_arguments)  # type: ignore[no-untyped-call]

"""UbiOps deployment requests as a target: configuration, URLs, body encoders and answer classification.

UbiOps has two request modes with different latency meanings (targets.md §2): a direct request is one
synchronous round trip; a batch request is queued and collected later. This module is pure (no sockets); the
data plane lives in bench.targets.ubiops_runner; the registry entry in bench.targets.ubiops_target.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import orjson

from bench.errors import InputError
from bench.results import Kind, PreparedBody
from bench.units import parse_duration

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BATCH",
    "TARGET_KEYS",
    "UbiOpsConfig",
    "authorization_value",
    "batch_body",
    "build_ubiops_bodies",
    "chunks",
    "classify_direct",
    "encode_plain",
    "encode_plain_direct",
    "encode_structured",
    "error_message_of",
    "may_concern_ids",
    "mentions_a_request",
    "plain_text",
    "read_token",
    "ubiops_config_from_mapping",
]

DEFAULT_BASE_URL = "https://api.ubiops.com/v2.1"
MAX_BATCH = 250  # items per batch create / collect / cancel / delete call
DIRECT_TIMEOUT_RANGE = (10, 3600)
BATCH_TIMEOUT_MAX = 259_200  # 72 h, as the platform documents now (the older reference: 172,800 s)
DEFAULT_CALLS_PER_MINUTE = 300  # the platform's documented per-IP limit on the requests endpoint group
UBIOPS_KEYS = frozenset({"calls_per_minute"})
TARGET_KEYS = frozenset({"kind", "url", "project", "deployment", "version", "token_env", "input", "fields",
                         "timeout", "mode", "batch_size", "poll_interval", "drain_timeout", "on_rate_limit"})

InputType = Literal["structured", "plain"]
Mode = Literal["direct", "batch"]
OnRateLimit = Literal["count", "backoff"]


@dataclass(frozen=True, slots=True)
class UbiOpsConfig:
    """A UbiOps deployment (or one of its versions) and how to load it.

    ``base_url`` is "embedded" until the runner substitutes the emulator's URL (``with_endpoint``).
    ``timeout_s`` None leaves the platform default (direct 300 s, batch 14400 s).
    """

    project: str
    deployment: str
    token: str = ""
    base_url: str = DEFAULT_BASE_URL
    version: str | None = None
    input_type: InputType = "structured"
    field_map: Mapping[str, str] = field(default_factory=dict)  # dataset column -> input field name
    timeout_s: int | None = None
    mode: Mode = "direct"
    batch_size: int = MAX_BATCH
    poll_interval_s: float = 0.5
    drain_timeout_s: float = 60.0
    on_rate_limit: OnRateLimit = "count"
    token_env: str | None = None
    calls_per_minute: int = DEFAULT_CALLS_PER_MINUTE  # the request budget ([ubiops] table); 0 = no budget
    # batch create / collect / cancel calls: the run's [engine] timeouts (set by the target from the scenario),
    # so a stalled platform call ends as a timeout and never holds the run past them
    call_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0

    def with_endpoint(self, base_url: str, token: str) -> UbiOpsConfig:
        """The same config pointed at another base URL (e.g. the embedded emulator) with its token."""
        return replace(self, base_url=_normalise_base(base_url), token=token)

    def __repr__(self) -> str:  # never show the token
        return (f"UbiOpsConfig(project={self.project!r}, deployment={self.deployment!r}, "
                f"version={self.version!r}, base_url={self.base_url!r}, mode={self.mode!r}, "
                f"input_type={self.input_type!r}, token={'<set>' if self.token else '<unset>'})")

    # --- paths --------------------------------------------------------------------------------------------
    @property
    def scope_url(self) -> str:
        """…/projects/{p}/deployments/{d}[/versions/{v}]"""
        url = f"{self.base_url}/projects/{_seg(self.project)}/deployments/{_seg(self.deployment)}"
        if self.version:
            url += f"/versions/{_seg(self.version)}"
        return url

    @property
    def requests_url(self) -> str:
        return f"{self.scope_url}/requests"

    def direct_url(self) -> str:
        return self.requests_url + _timeout_query(self.timeout_s)

    def batch_url(self) -> str:
        return f"{self.requests_url}/batch" + _timeout_query(self.timeout_s)

    def collect_url(self) -> str:
        return f"{self.requests_url}/collect"

    def cancel_url(self) -> str:
        return f"{self.requests_url}/cancel"

    def delete_url(self) -> str:
        return f"{self.requests_url}/delete"

    def request_url(self, request_id: str, *, metadata_only: bool | None = None) -> str:
        url = f"{self.requests_url}/{_seg(request_id)}"
        if metadata_only is not None:
            url += "?metadata_only=" + ("true" if metadata_only else "false")
        return url

    def list_url(self, status: str | None = None, limit: int | None = None, offset: int | None = None) -> str:
        params = {k: v for k, v in (("status", status), ("limit", limit), ("offset", offset)) if v is not None}
        return self.requests_url + ("?" + urlencode(params) if params else "")

    def headers(self) -> dict[str, str]:
        """A plain direct request is a raw ``text/plain`` body, as the official client sends it; the rest JSON."""
        plain = self.input_type == "plain" and self.mode == "direct"
        return {"Authorization": authorization_value(self.token),
                "Content-Type": "text/plain" if plain else "application/json", "Accept": "application/json"}

    def control_headers(self) -> dict[str, str]:
        """Headers of the JSON control calls (batch create, collect, cancel, get, PATCH)."""
        return {"Authorization": authorization_value(self.token), "Content-Type": "application/json",
                "Accept": "application/json"}


def _seg(value: str) -> str:
    return quote(value, safe="")


def _timeout_query(timeout_s: int | None) -> str:
    return f"?timeout={timeout_s}" if timeout_s is not None else ""


def authorization_value(token: str) -> str:
    """``Token <token>``; a value that already starts with 'Token ' is sent as is."""
    token = token.strip()
    if token[:6].lower() == "token ":
        return "Token " + token[6:].strip()
    return f"Token {token}"


def read_token(env_name: str, *, file: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The token from the environment variable ``env_name``; the error names the variable, never a value."""
    from bench.secrets import env_header_value

    return env_header_value(env_name, os.environ if environ is None else environ, file=file,
                            key="target.token_env", holds="the UbiOps API token")


def _normalise_base(url: str) -> str:
    url = url.rstrip("/")
    if url == "embedded":
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL like {DEFAULT_BASE_URL}, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the base URL takes no query or fragment: {url!r}")
    if not parts.path:
        return url + "/v2.1"
    if not (parts.path.endswith("/v2.1") or parts.path.endswith("/v2")):
        raise ValueError(f"the base URL should end in /v2.1 (or /v2), e.g. {DEFAULT_BASE_URL}; got {url!r}")
    return url


# --- scenario [target] table ------------------------------------------------------------------------------

class _Reader:
    def __init__(self, target: Mapping[str, Any], file: str) -> None:
        self.t, self.file = target, file

    def err(self, key: str, problem: str) -> InputError:
        return InputError(problem, file=self.file, key=f"target.{key}")

    def string(self, key: str, default: str | None = None, choices: Sequence[str] = ()) -> str | None:
        value = self.t.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.err(key, f"expected a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.err(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value.strip()

    def seconds(self, key: str, default: float | None) -> float | None:
        if key not in self.t:
            return default
        try:
            return parse_duration(self.t[key])
        except ValueError as exc:
            raise self.err(key, str(exc)) from None

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.err(key, f"must be between {lo} and {hi}, got {value}")
        return value


def _calls_per_minute(table: Mapping[str, Any], file: str) -> int:
    unknown = sorted(set(table) - UBIOPS_KEYS)
    if unknown:
        raise InputError(f"unknown key (known: {', '.join(sorted(UBIOPS_KEYS))})", file=file,
                         key=f"ubiops.{unknown[0]}")
    value = table.get("calls_per_minute", DEFAULT_CALLS_PER_MINUTE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"expected the calls per minute the requests API allows (an integer >= 0; 0 = no "
                         f"budget), got {value!r}", file=file, key="ubiops.calls_per_minute")
    return value


def ubiops_config_from_mapping(target: Mapping[str, Any], file: str, *,
                               environ: Mapping[str, str] | None = None,
                               ubiops: Mapping[str, Any] | None = None) -> UbiOpsConfig:
    """Validate a scenario's ``[target]`` table (kind = "ubiops") and its ``[ubiops]`` table (the budget).

    The token is read from ``token_env`` unless url = "embedded" (the runner then injects the emulator's
    token with ``with_endpoint``).
    """
    r = _Reader(target, file)
    unknown = sorted(set(target) - TARGET_KEYS)
    if unknown:
        raise r.err(unknown[0], f"unknown key for kind = 'ubiops' (known: {', '.join(sorted(TARGET_KEYS))})")
    r.string("kind", "ubiops", ("ubiops",))
    url = r.string("url", DEFAULT_BASE_URL) or DEFAULT_BASE_URL
    try:
        base_url = _normalise_base(url)
    except ValueError as exc:
        raise r.err("url", str(exc)) from None
    project = r.string("project")
    if project is None:
        raise r.err("project", "required: the UbiOps project name")
    deployment = r.string("deployment")
    if deployment is None:
        raise r.err("deployment", "required: the deployment name")
    version = r.string("version")
    input_type = r.string("input", "structured", ("structured", "plain")) or "structured"
    mode = r.string("mode", "direct", ("direct", "batch")) or "direct"
    on_rate_limit = r.string("on_rate_limit", "count", ("count", "backoff")) or "count"

    fields = target.get("fields", {})
    if not isinstance(fields, Mapping):
        raise r.err("fields", "expected a table mapping dataset columns to input field names")
    field_map: dict[str, str] = {}
    for column, name in fields.items():
        if not isinstance(name, str) or not name:
            raise r.err(f"fields.{column}", f"expected an input field name (string), got {name!r}")
        field_map[str(column)] = name
    if input_type == "plain" and len(field_map) > 1:
        raise r.err("fields", "a plain deployment takes one string per request: map at most one column")

    timeout_s: int | None = None
    raw_timeout = r.seconds("timeout", None)
    if raw_timeout is not None:
        timeout_s = round(raw_timeout)
        lo, hi = DIRECT_TIMEOUT_RANGE if mode == "direct" else (1, BATCH_TIMEOUT_MAX)
        if not lo <= timeout_s <= hi:
            raise r.err("timeout", f"UbiOps allows {lo}–{hi} s for {mode} requests, got {timeout_s} s")
    batch_size = r.integer("batch_size", MAX_BATCH, 1, MAX_BATCH)
    poll = r.seconds("poll_interval", 0.5)
    assert poll is not None
    if not 0.001 <= poll <= 60:
        raise r.err("poll_interval", f"must be between 1ms and 60s, got {poll}s")
    drain = r.seconds("drain_timeout", 60.0)
    assert drain is not None

    token_env = r.string("token_env")
    token = ""
    if base_url != "embedded":
        if token_env is None:
            raise r.err("token_env", "required: the name of the environment variable holding the API token")
        token = read_token(token_env, file=file, environ=environ)
    return UbiOpsConfig(project=project, deployment=deployment, token=token, base_url=base_url,
                        version=version, input_type=input_type,  # type: ignore[arg-type]
                        field_map=field_map, timeout_s=timeout_s, mode=mode,  # type: ignore[arg-type]
                        batch_size=batch_size, poll_interval_s=poll, drain_timeout_s=drain,
                        on_rate_limit=on_rate_limit, token_env=token_env,  # type: ignore[arg-type]
                        calls_per_minute=_calls_per_minute(ubiops or {}, file))


# --- encoders ---------------------------------------------------------------------------------------------

def _structured_item(record: Mapping[str, Any], field_map: Mapping[str, str]) -> dict[str, Any]:
    if not field_map:
        return dict(record)
    return {name: record.get(column) for column, name in field_map.items()}


def encode_structured(records: Sequence[Mapping[str, Any]], field_map: Mapping[str, str]) -> bytes:
    """One record -> a JSON object of input fields; several -> a list of objects (the deployment's
    batch ``requests()`` function)."""
    items = [_structured_item(r, field_map) for r in records]
    return orjson.dumps(items[0] if len(items) == 1 else items, option=orjson.OPT_SERIALIZE_NUMPY)


def plain_text(records: Sequence[Mapping[str, Any]], field_map: Mapping[str, str]) -> str:
    """A plain input: the mapped column's value for a single row, else the rows as pandas-records JSON."""
    if len(records) == 1 and len(field_map) == 1:
        (column,) = field_map
        value = records[0].get(column)
        return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return orjson.dumps([dict(r) for r in records], option=orjson.OPT_SERIALIZE_NUMPY).decode()


def encode_plain(records: Sequence[Mapping[str, Any]], field_map: Mapping[str, str]) -> bytes:
    """A plain batch item: the text as a JSON string (a batch body is a JSON list of strings)."""
    return orjson.dumps(plain_text(records, field_map))


def encode_plain_direct(records: Sequence[Mapping[str, Any]], field_map: Mapping[str, str]) -> bytes:
    """A plain direct request: the raw text (sent as ``text/plain``, as the official client does)."""
    return plain_text(records, field_map).encode()


def batch_body(items: Sequence[bytes]) -> bytes:
    """A batch create / collect / cancel body from pre-encoded JSON values."""
    return b"[" + b",".join(items) + b"]"


def build_ubiops_bodies(cfg: UbiOpsConfig, table: Any, rows_per_request: int) -> Sequence[PreparedBody]:
    """Every input, encoded once, on first use (a ``LazyBodies``: a big data set starts at once; the first
    block is encoded now so bad data fails before any load). Direct mode: a whole request body each. Batch mode:
    one batch item each (a structured batch item is a single object, so rows_per_request must be 1)."""
    if cfg.mode == "batch" and cfg.input_type == "structured" and rows_per_request != 1:
        raise InputError("batch mode with structured input sends one object per request; use 1",
                         key="data.rows_per_request")
    if rows_per_request < 1:
        raise InputError("must be >= 1", key="data.rows_per_request")
    if not table.num_rows:
        raise InputError("the dataset has no rows", key="data.path")
    from bench.bodies import BLOCK, LazyBodies
    from bench.data import records_from_table

    encode = (encode_structured if cfg.input_type == "structured"
              else encode_plain_direct if cfg.mode == "direct" else encode_plain)
    if cfg.field_map:
        columns = set(table.slice(0, 1).to_pylist()[0])
        missing = sorted(set(cfg.field_map) - columns)
        if missing:
            raise InputError(f"dataset has no column {missing[0]!r} (columns: {', '.join(sorted(columns))})",
                             key=f"target.fields.{missing[0]}")
    field_map = cfg.field_map

    def block(part: Any) -> list[bytes]:
        every = records_from_table(part)  # float32 written as float32 text (not float64: 1.75x the bytes)
        return [encode(every[s:s + rows_per_request], field_map) for s in range(0, len(every), rows_per_request)]

    bodies = LazyBodies(table, rows_per_request, block)
    bodies.prepare(BLOCK)
    return bodies


# --- classification ---------------------------------------------------------------------------------------

def classify_direct(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    """(kind, rows_out, server_ns) of a direct request's answer. A body with "status": "failed" is an error
    even with HTTP 200; UbiOps reports no server-side time for direct requests (server_ns = 0)."""
    if status == 429:
        return Kind.RATE_LIMITED, rows_in, 0
    if not 200 <= status < 300:
        return Kind.HTTP_ERROR, rows_in, 0
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Kind.BAD_RESPONSE, rows_in, 0
    if not isinstance(doc, dict):
        return Kind.BAD_RESPONSE, rows_in, 0
    state = doc.get("status")
    if state == "failed":
        return Kind.REQUEST_FAILED, rows_in, 0
    if state == "completed":
        return Kind.OK, rows_in, 0
    return Kind.BAD_RESPONSE, rows_in, 0


def error_message_of(body: bytes) -> bytes:
    """The evidence worth keeping from a non-ok answer: its error_message / error, else the body's start."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:512]
    if isinstance(doc, dict):
        for key in ("error_message", "error"):
            msg = doc.get(key)
            if msg:
                return str(msg).encode()[:512]
    return body[:512]


# 4xx answers that say nothing about the ids given: authentication, the method, a proxy, a timeout, the rate
_NOT_ABOUT_IDS = frozenset({401, 403, 405, 407, 408, 429})


def may_concern_ids(status: int) -> bool:
    """Whether a refused call on a list of ids may be refused for one of them (the reference: if one id does not
    exist "an error message is given" and nothing is returned, with no status named): any 4xx but the ones
    that concern the caller or the connection."""
    return 400 <= status < 500 and status not in _NOT_ABOUT_IDS


def mentions_a_request(body: bytes, ids: Iterable[str]) -> bool:
    """Whether an error answer is about a request (names one of ``ids``, or says "request"): a 404 that is not
    is about the route, as an older API without it answers."""
    message = error_message_of(body).decode("utf-8", "replace")
    return _REQUEST_WORD.search(message) is not None or any(i in message for i in ids)


_REQUEST_WORD = re.compile(r"\brequests?\b", re.IGNORECASE)


def chunks(items: Sequence[str], size: int = MAX_BATCH) -> Iterable[Sequence[str]]:
    """Consecutive slices of at most ``size`` items (the API's per-call cap)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]

"""Load and validate TOML scenarios into typed config. Every error names the file, the key and the problem.

Sections validated here: top level, [target] (wallaroo / http), [data], [load], [engine], [report]. Sections
owned by other modules ([target] for kind = "ubiops", [auth], [wallaroo], [emulator], [slo], [capacity]) are kept as raw
tables and validated by those modules before the run starts (see bench.plan).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.errors import InputError
from bench.secrets import credential_header_problem, env_name_problem, url_problem
from bench.targets import KINDS, target_for
from bench.units import parse_duration

__all__ = [
    "DataConfig",
    "EngineSettings",
    "LoadConfig",
    "ReportConfig",
    "Scenario",
    "TargetConfig",
    "apply_overrides",
    "load_scenario",
    "parse_scenario",
    "read_scenario_file",
    "with_values",
]

TARGET_KINDS = KINDS  # the target registry's kinds
SECTIONS = ("target", "data", "load", "engine", "report", "auth", "wallaroo", "emulator", "slo", "capacity", "ubiops",
            "server_metrics")


@dataclass(frozen=True)
class TargetConfig:
    kind: str = "wallaroo"
    url: str = "embedded"  # "embedded" starts the built-in emulator
    format: str = "pandas-records"
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    dataset_params: bool = False  # send the SDK's dataset[]=* / dataset.separator=. query parameters
    token_env: str | None = None  # static token from this environment variable (Bearer)
    headers_env: Mapping[str, str] = field(default_factory=dict)  # header -> env var holding its (secret) value
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole [target] table (ubiops reads it)

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True)
class DataConfig:
    path: Path | None = None  # dataset file (relative paths are relative to the scenario file)
    column: str = "tensor"
    rows_per_request: int = 1
    generate_rows: int = 0  # > 0: synthesise this many ccfraud rows instead of reading a file
    seed: int = 42
    body: Path | None = None  # http kind: a raw body file sent as is


@dataclass(frozen=True)
class LoadConfig:
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop when > 0 (requests/s)
    arrival: str = "constant"  # "constant" | "poisson"
    stages: tuple[tuple[float, float], ...] = ()  # open-loop ramp: (duration_s, target rate) pairs
    max_in_flight: int = 0  # open loop cap (0 = automatic)
    duration_s: float = 10.0
    warmup_s: float = 0.0
    requests: int = 0  # stop after this many sends (0 = no limit)
    seed: int = 1
    processes: int = 1
    drain_s: float = 5.0

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency > 0 else "open"


@dataclass(frozen=True)
class EngineSettings:
    kind: str = "auto"
    http2: bool = False
    connections: int = 0
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    insecure: bool = False
    ca_bundle: str | None = None
    loop: str = "auto"


@dataclass(frozen=True)
class ReportConfig:
    dir: Path = Path("reports")
    raw: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str  # where it came from (for error messages)
    base_dir: Path  # relative paths resolve against this
    target: TargetConfig
    data: DataConfig
    load: LoadConfig
    engine: EngineSettings
    report: ReportConfig
    tables: Mapping[str, Mapping[str, Any]]  # raw [auth], [wallaroo], [emulator], [slo] tables
    source: Mapping[str, Any]  # the whole parsed document after overrides (redact before storing)


class _Table:
    """Reads typed keys from one TOML table and rejects keys nobody read."""

    def __init__(self, data: Mapping[str, Any], file: str, prefix: str) -> None:
        self.data, self.file, self.prefix = data, file, prefix
        self.seen: set[str] = set()

    def err(self, key: str, problem: str) -> InputError:
        return InputError(problem, file=self.file, key=f"{self.prefix}{key}")

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None, choices: Sequence[str] = ()) -> str | None:
        value = self.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.err(key, f"expected a string, got {_type(value)}")
        if choices and value not in choices:
            raise self.err(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected an integer, got {_type(value)}")
        if value < minimum:
            raise self.err(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.err(key, f"expected a number, got {_type(value)}")
        if not math.isfinite(value) or value < minimum:
            raise self.err(key, f"must be a finite number >= {minimum:g}, got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {_type(value)}")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.get(key, default)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.err(key, str(exc)) from None

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, Mapping):
            raise self.err(key, f"expected a table, got {_type(value)}")
        return value

    def done(self, allowed_extra: Sequence[str] = ()) -> None:
        for key in self.data:
            if key not in self.seen and key not in allowed_extra:
                raise self.err(key, "unknown key")


def _type(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    """The TOML document of a scenario file; a missing or unreadable file or bad TOML is an InputError."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=file) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=file) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", file=file) from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a scenario file, apply ``--set key=value`` overrides, validate."""
    file = str(path)
    doc = apply_overrides(read_scenario_file(path), overrides, file)
    return parse_scenario(doc, file=file, base_dir=Path(path).resolve().parent)


def apply_overrides(doc: Mapping[str, Any], overrides: Sequence[str], file: str) -> dict[str, Any]:
    """``--set load.concurrency=16`` style overrides; values are TOML literals, else plain strings."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set expects key=value, got {item!r}", file=file)
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return with_values(doc, values, file)


def with_values(doc: Mapping[str, Any], values: Mapping[str, Any], file: str) -> dict[str, Any]:
    """A copy of ``doc`` with dotted keys set to typed values (CLI flags; ``None`` removes the key). The result
    is validated by ``parse_scenario`` like any scenario, so a bad value names its key."""
    out: dict[str, Any] = _deep_copy(doc)
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"cannot set {key!r}: {part!r} is not a table", file=file, key=key)
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def _deep_copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in doc.items()}


def parse_scenario(doc: Mapping[str, Any], *, file: str, base_dir: Path) -> Scenario:
    top = _Table(doc, file, "")
    name = top.string("name", Path(file).stem) or "run"
    top.get("description")
    tables = {s: top.table(s) for s in SECTIONS}
    top.done()

    target = _parse_target(tables["target"], file)
    data = _parse_data(tables["data"], file, base_dir, target)
    load = _parse_load(tables["load"], file)
    engine = _parse_engine(tables["engine"], file)
    report = _parse_report(tables["report"], file)
    raw = {k: tables[k] for k in ("auth", "wallaroo", "emulator", "slo", "capacity", "ubiops", "server_metrics")}
    return Scenario(name=name, file=file, base_dir=base_dir, target=target, data=data, load=load,
                    engine=engine, report=report, tables=raw, source=doc)


def _parse_target(t: Mapping[str, Any], file: str) -> TargetConfig:
    tab = _Table(t, file, "target.")
    kind = tab.string("kind", "wallaroo", TARGET_KINDS) or "wallaroo"
    url = tab.string("url", "embedded") or "embedded"
    rules = target_for(kind).rules
    if rules.owns_section:
        # the target validates the rest of its section (bench.targets: Target.config); only the URL is checked here
        if url != "embedded":
            _check_url(url, tab, "url")
        return TargetConfig(kind=kind, url=url, raw=t)
    if url != "embedded":
        _check_url(url, tab, "url")
    elif not rules.embeddable:
        embeddable = ", ".join(k for k in TARGET_KINDS if target_for(k).rules.embeddable)
        raise tab.err("url", f"kind = '{kind}' needs a real URL ('embedded' is for {embeddable})")
    fmt = tab.string("format", rules.formats[0] if rules.formats else "pandas-records", rules.formats) or ""
    method = (tab.string("method", "POST") or "POST").upper()
    headers = tab.table("headers")
    for hk, hv in headers.items():
        if not isinstance(hv, str):
            raise tab.err(f"headers.{hk}", f"expected a string, got {_type(hv)}")
        problem = credential_header_problem(hk)
        if problem:
            raise tab.err(f"headers.{hk}", problem)
    headers_env = tab.table("headers_env")
    for hk, hv in headers_env.items():
        if not isinstance(hv, str) or env_name_problem(hv):
            raise tab.err(f"headers_env.{hk}", "expected the name of an environment variable")
    token_env = tab.string("token_env")
    if token_env is not None and env_name_problem(token_env):
        raise tab.err("token_env", env_name_problem(token_env) or "")
    dataset_params = tab.boolean("dataset_params", False)
    for key in ("dataset", "dataset_exclude", "dataset_separator"):
        tab.get(key)  # the target checks them (bench.targets.wallaroo: dataset query parameters)
    tab.done()
    return TargetConfig(kind=kind, url=url, format=fmt, method=method, headers=dict(headers),
                        dataset_params=dataset_params, token_env=token_env, headers_env=dict(headers_env), raw=t)


def _check_url(url: str, tab: _Table, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise tab.err(key, f"URL needs an http:// or https:// scheme, got {url!r}")
    if url_problem(url):
        raise tab.err(key, url_problem(url) or "")
    if not parts.hostname:
        raise tab.err(key, f"URL has no host: {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise tab.err(key, f"URL has an invalid port: {url!r}") from None


def _parse_data(t: Mapping[str, Any], file: str, base_dir: Path, target: TargetConfig) -> DataConfig:
    tab = _Table(t, file, "data.")
    path = tab.string("path")
    body = tab.string("body")
    generate = tab.integer("generate", 0)
    column = tab.string("column", "tensor") or "tensor"
    rows = tab.integer("rows_per_request", 1, minimum=1)
    seed = tab.integer("seed", 42)
    tab.done()
    if target_for(target.kind).rules.needs_body:
        if not body:
            raise tab.err("body", f"kind = '{target.kind}' needs data.body (a file sent as the request body)")
    elif not path and not generate:
        if target.embedded:
            generate = 1001
        else:
            raise tab.err("path", "missing: give a dataset file (or data.generate = N for synthetic rows)")
    resolved = (base_dir / path) if path else None
    body_path = (base_dir / body) if body else None
    for key, p in (("path", resolved), ("body", body_path)):
        if p is not None and not p.is_file():
            raise tab.err(key, f"file not found: {p}")
    return DataConfig(path=resolved, column=column, rows_per_request=rows, generate_rows=generate, seed=seed,
                      body=body_path)


def _parse_load(t: Mapping[str, Any], file: str) -> LoadConfig:
    tab = _Table(t, file, "load.")
    concurrency = tab.integer("concurrency", 0)
    rate = tab.number("rate", 0.0)
    arrival = tab.string("arrival", "constant", ("constant", "poisson")) or "constant"
    stages_raw = tab.get("stages", [])
    stages: list[tuple[float, float]] = []
    if not isinstance(stages_raw, list):
        raise tab.err("stages", "expected an array of {duration, rate} tables")
    for i, st in enumerate(stages_raw):
        if not isinstance(st, Mapping):
            raise tab.err(f"stages[{i}]", "expected a table like {duration = '10s', rate = 100}")
        stage = _Table(st, file, f"load.stages[{i}].")
        stages.append((stage.duration("duration", 0.0), stage.number("rate", 0.0)))
        stage.done()
    max_in_flight = tab.integer("max_in_flight", 0)
    duration = tab.duration("duration", 10.0)
    warmup = tab.duration("warmup", 0.0)
    requests = tab.integer("requests", 0)
    seed = tab.integer("seed", 1)
    processes = tab.integer("processes", 1, minimum=1)
    drain = tab.duration("drain", 5.0)
    tab.done()
    modes = sum(1 for v in (concurrency > 0, rate > 0, bool(stages)) if v)
    if modes == 0:
        raise tab.err("concurrency", "set one of load.concurrency (closed loop), load.rate or load.stages "
                      "(open loop)")
    if modes > 1:
        raise tab.err("rate", "load.concurrency, load.rate and load.stages are exclusive: choose one")
    if stages:
        duration = sum(d for d, _ in stages)
    if duration <= 0 and requests == 0:
        raise tab.err("duration", "must be > 0 (or set load.requests)")
    return LoadConfig(concurrency=concurrency, rate=rate, arrival=arrival, stages=tuple(stages),
                      max_in_flight=max_in_flight, duration_s=duration, warmup_s=warmup, requests=requests,
                      seed=seed, processes=processes, drain_s=drain)


def _parse_engine(t: Mapping[str, Any], file: str) -> EngineSettings:
    tab = _Table(t, file, "engine.")
    kind = tab.string("kind", "auto", ("auto", "fast", "httpx")) or "auto"
    http2 = tab.boolean("http2", False)
    connections = tab.integer("connections", 0)
    timeout = tab.duration("timeout", 30.0)
    connect_timeout = tab.duration("connect_timeout", 5.0)
    insecure = tab.boolean("insecure", False)
    ca_bundle = tab.string("ca_bundle")
    loop = tab.string("loop", "auto", ("auto", "asyncio", "uvloop")) or "auto"
    tab.done()
    if kind == "fast" and http2:
        raise tab.err("http2", "the fast engine speaks HTTP/1.1 only; use kind = 'httpx' or 'auto' for HTTP/2")
    if timeout <= 0 or connect_timeout <= 0:
        raise tab.err("timeout", "timeouts must be > 0")
    return EngineSettings(kind=kind, http2=http2, connections=connections, timeout_s=timeout,
                          connect_timeout_s=connect_timeout, insecure=insecure, ca_bundle=ca_bundle, loop=loop)


def _parse_report(t: Mapping[str, Any], file: str) -> ReportConfig:
    tab = _Table(t, file, "report.")
    directory = tab.string("dir")
    raw = tab.boolean("raw", False)
    tab.done()
    return ReportConfig(dir=Path(directory) if directory else Path("reports"), raw=raw)

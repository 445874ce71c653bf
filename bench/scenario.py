"""The one scenario reader: a TOML file (plus CLI overrides) parsed once into a fully typed ``Scenario``.

Every section is read here — [target], [data], [load], [engine], [report] by this module, [auth], [wallaroo],
[slo], [capacity] by the pure parsers of ``bench.config`` — and every problem is one ``InputError`` naming the
file, the key and the problem (exit 2, no traceback). Unknown keys are refused with a did-you-mean.

The one section left as a table is ``[emulator]``: its parser belongs to the emulator (only bench.session may
import it), which validates it in ``session.prepare`` before any load. A target kind that ``owns_section``
(UbiOps) reads the rest of its [target] table in its ``Target.config``.

``Scenario.source`` is the document every typed field was parsed from (what `--processes` workers and the
report's scenario copy get). Typed fields are never edited beside it: ``revised`` applies new values to the
document and parses again, so the two cannot drift.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bench.config.auth import AuthConfig, auth_config_from_mapping
from bench.config.capacity import CapacityConfig, capacity_config_from_mapping
from bench.config.reader import Table, check_url, type_name
from bench.config.slo import SloObjectives, slo_from_mapping
from bench.config.wallaroo import EMBEDDED_PLACEHOLDER, PreflightConfig, preflight_config_from_mapping
from bench.errors import InputError
from bench.inpath import input_problem, read_input
from bench.secrets import (
    credential_header_problem,
    env_name_problem,
    header_name_problem,
    header_value_problem,
    host_value_problem,
    literal_header_problem,
    looks_like_credential,
    scenario_urls,
    url_problem,
)
from bench.targets import KINDS, target_for
from bench.tlstrust import TlsTrust, ca_bundle_problem

__all__ = [
    "COMMAND_LINE",
    "OPEN_LOOP_ONLY",
    "SECTIONS",
    "SECTION_PARSERS",
    "DataConfig",
    "EngineSettings",
    "LoadConfig",
    "ReportConfig",
    "Scenario",
    "TargetConfig",
    "apply_overrides",
    "closed_loop_clears",
    "closed_loop_concurrency",
    "is_http2",
    "load_scenario",
    "override_values",
    "parse_scenario",
    "read_scenario_file",
    "split_limit",
    "split_problem",
    "with_values",
]

_T = TypeVar("_T")
TARGET_KINDS = KINDS  # the target registry's kinds
SECTIONS = ("target", "data", "load", "engine", "report", "auth", "wallaroo", "emulator", "slo", "capacity", "ubiops",
            "server_metrics")
# the sections bench.config parses into the Scenario field of the same name (a new section: a line here + a field)
SECTION_PARSERS: Mapping[str, Callable[[Mapping[str, Any], str], object]] = {
    "auth": auth_config_from_mapping, "wallaroo": preflight_config_from_mapping, "slo": slo_from_mapping,
    "capacity": capacity_config_from_mapping}

COMMAND_LINE = "<command line>"  # the file of an ad-hoc run (--url): its --header values may be credentials
MAX_CONCURRENCY = 100_000  # closed-loop clients (each a connection and a task) on one host
MAX_RATE = 10_000_000.0  # req/s: no single host issues more; a larger value is a typo
MAX_PROCESSES = 1024


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
    pacing: str = "auto"

    def trust(self) -> TlsTrust:
        """The certificates every HTTPS client of the run trusts (bench.tlstrust)."""
        return TlsTrust(self.insecure, self.ca_bundle)


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
    auth: AuthConfig | None = None  # [auth]
    wallaroo: PreflightConfig | None = None  # [wallaroo]: the preflight (api_url "embedded" → EMBEDDED_PLACEHOLDER)
    slo: SloObjectives | None = None  # [slo]
    capacity: CapacityConfig | None = None  # [capacity] (bench capacity)
    emulator: Mapping[str, Any] = field(default_factory=dict)  # [emulator] table: the emulator validates it
    ubiops: Mapping[str, Any] = field(default_factory=dict)  # [ubiops] table: the UbiOps target's config reads it
    server_metrics: Mapping[str, Any] = field(default_factory=dict)  # [server_metrics]: bench.scrape, in prepare
    source: Mapping[str, Any] = field(default_factory=dict)  # the document all of the above was parsed from

    def revised(self, values: Mapping[str, Any]) -> Scenario:
        """This scenario with dotted keys set (``None`` removes one), parsed again from its document: the typed
        fields and ``source`` stay one thing. A resolved ``target.url`` (point_at) is kept unless set here."""
        doc = with_values(self.source, values, self.file)
        out = parse_scenario(doc, file=self.file, base_dir=self.base_dir)
        return out if "target.url" in values else replace(out, target=replace(out.target, url=self.target.url))


def _type(value: object) -> str:
    return type_name(value)


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    """The TOML document of a scenario file; a missing or unreadable file or bad TOML is an InputError."""
    file = str(path)
    raw = read_input(path)  # not a FIFO or /dev/zero: those never end
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows Notepad) is no TOML error: "Invalid statement" at 1:1
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (bad byte 0x{raw[exc.start]:02x} on line {line}); TOML files are UTF-8",
                         file=file) from None
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
    values = override_values(overrides, file)
    return with_values(doc, {**_other_load_modes_cleared(doc, values), **values}, file)


def override_values(overrides: Sequence[str], file: str) -> dict[str, Any]:
    """``--set key=value`` items as typed dotted keys (TOML literals, else plain strings)."""
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
    return values


_LOAD_MODE_KEYS = ("load.concurrency", "load.rate", "load.stages")

# keys that shape an open loop only, with the value that changes nothing: any other value on a closed loop would be
# ignored, so the run would not be the test asked for
OPEN_LOOP_ONLY = (("load", "arrival", "constant"), ("load", "max_in_flight", 0), ("engine", "pacing", "auto"))


def _other_load_modes_cleared(doc: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, None]:
    """``--set`` of one load mode replaces the file's other one, as ``-c``/``--rate`` do: ``--set load.rate=50``
    on a closed-loop scenario is an open loop, not a conflict. Two modes in ``--set`` still conflict."""
    chosen = [k for k in _LOAD_MODE_KEYS if values.get(k) is not None]  # --set load.rate=0 asks for rate 0
    if len(chosen) != 1:
        return {}
    cleared: dict[str, None] = {k: None for k in _LOAD_MODE_KEYS if k != chosen[0]}
    if chosen[0] == "load.concurrency":
        http2 = values["engine.http2"] is True if "engine.http2" in values else None
        cleared.update(closed_loop_clears(doc, http2=http2))
    return cleared


def closed_loop_clears(doc: Mapping[str, Any], *, http2: bool | None = None) -> dict[str, None]:
    """The open-loop keys to drop when the command line makes ``doc`` a closed loop: they were written for the
    file's open loop (or for `bench capacity`'s rate steps), and mean nothing to the closed loop asked for. A file
    that is a closed loop already keeps them, so its own contradiction is refused as written. engine.connections
    is one of them over HTTP/1.1 only (an HTTP/2 closed loop shares its connections): ``http2`` is the run's
    engine.http2 when the command line sets it, else ``doc``'s counts."""
    if closed_loop_concurrency(doc):
        return {}
    cleared: dict[str, None] = {f"{section}.{key}": None for section, key, _ in OPEN_LOOP_ONLY}
    if not (is_http2(doc) if http2 is None else http2):
        cleared["engine.connections"] = None
    return cleared


def is_http2(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` asks for HTTP/2 (engine.http2 = true; any other value is the scenario reader's to refuse)."""
    engine = doc.get("engine")
    return isinstance(engine, Mapping) and engine.get("http2") is True


def closed_loop_concurrency(doc: Mapping[str, Any]) -> int | None:
    """``doc``'s load.concurrency when it is a closed loop's (an int >= 1), else None (an open loop, or a value the
    scenario reader refuses with its own message)."""
    load = doc.get("load")
    concurrency = load.get("concurrency") if isinstance(load, Mapping) else None
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency > 0:
        return concurrency
    return None


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
    """Every section of ``doc`` parsed once into typed config; the first problem raises an InputError."""
    if not isinstance(doc, Mapping):
        raise InputError(f"expected a TOML document (a table), got {_type(doc)}", file=file)
    top = Table(doc, file, "")
    name = top.string("name", Path(file).stem or "run") or ""
    if not name.strip() or len(name) > 200:
        raise top.err("name", "must be a non-empty name of at most 200 characters")
    top.string("description")
    tables = {s: top.table(s) for s in SECTIONS}
    top.done()
    for key, url in scenario_urls(doc):  # every URL key, before its section's own checks (which may echo it)
        if problem := url_problem(url):
            raise InputError(problem, file=file, key=key)

    target = _parse_target(tables["target"], file)
    data = _parse_data(tables["data"], file, base_dir, target)
    load = _parse_load(tables["load"], file)
    engine = _parse_engine(tables["engine"], file, base_dir)
    if engine.kind == "fast" and not engine.http2 and target.method == "HEAD":
        raise InputError("the fast HTTP/1.1 engine cannot read answers to HEAD (its parser would wait for the body "
                         "their Content-Length announces): use kind = 'auto' or 'httpx'", file=file, key="engine.kind")
    if load.mode == "closed":
        _refuse_open_loop_keys(tables, load.concurrency, file)
        if engine.connections and not engine.http2:
            raise InputError(f"{engine.connections!r} applies to an open loop (load.rate or load.stages) or to HTTP/2 "
                             f"(engine.http2) only, and load.concurrency = {load.concurrency} is a closed loop over "
                             "HTTP/1.1, one connection per client, which would ignore it: remove it, or set "
                             "engine.http2 = true or load.rate", file=file, key="engine.connections")
    report = _parse_report(tables["report"], file)
    sections = {key: parse(tables[key], file) for key, parse in SECTION_PARSERS.items() if tables[key]}
    wallaroo = _typed(sections, "wallaroo", PreflightConfig)
    if wallaroo is not None and wallaroo.api_url == EMBEDDED_PLACEHOLDER and not target.embedded:
        raise InputError("'embedded' needs target.url = 'embedded'", file=file, key="wallaroo.api_url")
    return Scenario(name=name, file=file, base_dir=base_dir, target=target, data=data, load=load, engine=engine,
                    report=report, auth=_typed(sections, "auth", AuthConfig), wallaroo=wallaroo,
                    slo=_typed(sections, "slo", SloObjectives), capacity=_typed(sections, "capacity", CapacityConfig),
                    emulator=dict(tables["emulator"]), ubiops=dict(tables["ubiops"]),
                    server_metrics=dict(tables["server_metrics"]), source=doc)


def _refuse_open_loop_keys(tables: Mapping[str, Mapping[str, Any]], concurrency: int, file: str) -> None:
    for section, key, neutral in OPEN_LOOP_ONLY:
        value = tables[section].get(key, neutral)
        if value != neutral:
            raise InputError(f"{value!r} applies to an open loop (load.rate or load.stages) only, and load.concurrency "
                             f"= {concurrency} is a closed loop, which would ignore it: remove it, or set load.rate",
                             file=file, key=f"{section}.{key}")


def _typed(sections: Mapping[str, object], key: str, cls: type[_T]) -> _T | None:
    value = sections.get(key)
    assert value is None or isinstance(value, cls), (key, value)
    return value


def _parse_target(t: Mapping[str, Any], file: str) -> TargetConfig:
    tab = Table(t, file, "target.")
    kind = tab.string("kind", "wallaroo", TARGET_KINDS) or "wallaroo"
    url = tab.string("url", "embedded") or "embedded"
    rules = target_for(kind).rules
    if url != "embedded":
        _check_url(url, tab, "url")
    if rules.owns_section:
        # the target validates the rest of its section (bench.targets: Target.config); only the URL is checked here,
        # and the secrets from the environment the run core adds to the requests (env_credentials)
        if rules.env_credentials:
            token_env, headers_env = _env_credentials(tab)
            return TargetConfig(kind=kind, url=url, token_env=token_env, headers_env=headers_env, raw=t)
        return TargetConfig(kind=kind, url=url, raw=t)
    if url == "embedded" and not rules.embeddable:
        embeddable = ", ".join(k for k in TARGET_KINDS if target_for(k).rules.embeddable)
        raise tab.err("url", f"kind = '{kind}' needs a real URL ('embedded' is for {embeddable})")
    fmt = tab.string("format", rules.formats[0] if rules.formats else "pandas-records", rules.formats) or ""
    method = (tab.string("method", "POST") or "POST").upper()
    if not method.isascii() or not method.isalpha() or len(method) > 20:
        raise tab.err("method", f"expected an HTTP method such as POST, got {method!r}")
    headers = tab.table("headers")
    for hk, hv in headers.items():
        if problem := header_name_problem(hk):
            raise tab.err(f"headers.{hk}", problem)
        if not isinstance(hv, str):
            raise tab.err(f"headers.{hk}", f"expected a string, got {_type(hv)}")
        # a credential named like one is refused everywhere; one that only looks like one (by name or value) in a
        # scenario file only: a command line's --header value is scrubbed from everything instead (scrubber_for)
        problem = (credential_header_problem(hk) if file == COMMAND_LINE else literal_header_problem(hk, hv))
        if problem:
            raise tab.err(f"headers.{hk}", problem)
        shown = "value not shown" if looks_like_credential(hk, hv) else f"got {hv!r}"
        if any(c in hv for c in "\r\n\x00"):
            raise tab.err(f"headers.{hk}", "must not contain line breaks or NUL")
        problem = header_value_problem(hv)  # a control or non-ASCII character: the engines cannot send it
        if problem:
            raise tab.err(f"headers.{hk}", f"{problem}; {shown}")
        if hk.lower() == "host" and (problem := host_value_problem(hv)):
            raise tab.err(f"headers.{hk}", problem)
    token_env, headers_env = _env_credentials(tab)
    dataset_params = tab.boolean("dataset_params", False)
    for key in ("dataset", "dataset_exclude", "dataset_separator"):
        tab.get(key)  # the target checks them (bench.targets.wallaroo: dataset query parameters)
    tab.done()
    return TargetConfig(kind=kind, url=url, format=fmt, method=method, headers=dict(headers),
                        dataset_params=dataset_params, token_env=token_env, headers_env=headers_env, raw=t)


def _env_credentials(tab: Table) -> tuple[str | None, dict[str, str]]:
    """``token_env`` and ``headers_env``: the NAMES of the variables holding a token and secret header values."""
    headers_env = tab.table("headers_env")
    for hk, hv in headers_env.items():
        if problem := header_name_problem(hk):
            raise tab.err(f"headers_env.{hk}", problem)
        if not isinstance(hv, str) or env_name_problem(hv):
            raise tab.err(f"headers_env.{hk}", "expected the name of an environment variable")
    token_env = tab.string("token_env")
    if token_env is not None and env_name_problem(token_env):
        raise tab.err("token_env", env_name_problem(token_env) or "")
    return token_env, dict(headers_env)


def _check_url(url: str, tab: Table, key: str) -> None:
    problem = check_url(url) or url_problem(url)  # url_problem: the secrets policy (userinfo is refused)
    if problem:
        raise tab.err(key, problem)


def _parse_data(t: Mapping[str, Any], file: str, base_dir: Path, target: TargetConfig) -> DataConfig:
    tab = Table(t, file, "data.")
    path = tab.string("path")
    body = tab.string("body")
    generate = tab.integer("generate", 0, maximum=10_000_000)
    column = tab.string("column", "tensor") or ""
    if not column:
        raise tab.err("column", "must be a non-empty column name")
    rows = tab.integer("rows_per_request", 1, minimum=1, maximum=1_000_000)
    seed = tab.integer("seed", 42, maximum=2**32 - 1)
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
        problem = None if p is None else input_problem(p)
        if problem is not None:
            raise tab.err(key, f"{p}: {problem}")
    return DataConfig(path=resolved, column=column, rows_per_request=rows, generate_rows=generate, seed=seed,
                      body=body_path)


def _parse_load(t: Mapping[str, Any], file: str) -> LoadConfig:
    tab = Table(t, file, "load.")
    given = t.get("concurrency")
    if isinstance(given, int | float) and not isinstance(given, bool) and given < 0:  # 0 is refused too
        raise tab.err("concurrency", f"must be >= 1, got {given}")
    concurrency = tab.integer("concurrency", 0, maximum=MAX_CONCURRENCY)
    rate = tab.number("rate", 0.0, maximum=MAX_RATE)
    arrival = tab.string("arrival", "constant", ("constant", "poisson")) or "constant"
    stages_raw = tab.get("stages", [])
    stages: list[tuple[float, float]] = []
    if not isinstance(stages_raw, list):
        raise tab.err("stages", "expected an array of {duration, rate} tables")
    for i, st in enumerate(stages_raw):
        if not isinstance(st, Mapping):
            raise tab.err(f"stages[{i}]", "expected a table like {duration = '10s', rate = 100}")
        stage = Table(st, file, f"load.stages[{i}].")
        if "duration" not in st:  # else a default of 0 s said only "the stages must last > 0 s in total"
            raise stage.err("duration", "missing: each stage needs a duration (e.g. '30s') and a rate")
        stages.append((stage.duration("duration", 0.0), stage.number("rate", 0.0, maximum=MAX_RATE)))
        stage.done()
    max_in_flight = tab.integer("max_in_flight", 0, maximum=10 * MAX_CONCURRENCY)
    duration = tab.duration("duration", 10.0)
    warmup = tab.duration("warmup", 0.0)
    requests = tab.integer("requests", 0)
    seed = tab.integer("seed", 1, maximum=2**32 - 1)
    processes = tab.integer("processes", 1, minimum=1, maximum=MAX_PROCESSES)
    drain = tab.duration("drain", 5.0)
    tab.done()
    modes = sum(1 for v in (concurrency > 0, rate > 0, bool(stages)) if v)
    if modes == 0:
        if "rate" in t:  # rate = 0 (--rate 0) is the mode asked for, not a missing concurrency
            raise tab.err("rate", "must be > 0 requests/s (an open loop at rate 0 sends nothing)")
        if "concurrency" in t:
            raise tab.err("concurrency", "must be >= 1 (a closed loop of 0 clients sends nothing)")
        if "stages" in t:
            raise tab.err("stages", "must not be empty (give {duration, rate} tables)")
        raise tab.err("concurrency", "set one of load.concurrency (closed loop), load.rate or load.stages "
                      "(open loop)")
    if modes > 1:
        both = [k for k, v in (("concurrency", concurrency > 0), ("rate", rate > 0), ("stages", bool(stages))) if v]
        raise tab.err(both[-1], f"load.{both[0]} and load.{both[1]} are exclusive (closed loop, open loop at "
                      "one rate, or stages): choose one")
    if stages:
        duration = sum(d for d, _ in stages)
        if duration <= 0:
            raise tab.err("stages", "the stages must last > 0 s in total")
        if not any(r > 0 for _, r in stages):
            raise tab.err("stages", "every stage's rate is 0, so nothing would be sent: a stage of rate 0 is a "
                          "pause; give at least one a rate > 0 requests/s")
    if duration <= 0 and requests == 0:
        raise tab.err("duration", "must be > 0 (or set load.requests)")
    load = LoadConfig(concurrency=concurrency, rate=rate, arrival=arrival, stages=tuple(stages),
                      max_in_flight=max_in_flight, duration_s=duration, warmup_s=warmup, requests=requests,
                      seed=seed, processes=processes, drain_s=drain)
    problem = split_problem(load, processes)
    if problem:
        raise tab.err("processes", problem)
    return load


def split_limit(load: LoadConfig) -> tuple[int, str]:
    """The most processes ``load`` splits into with every share > 0, and the key that sets it: each needs at
    least one client (load.concurrency), one request (load.requests) and one slot (load.max_in_flight). A rate
    has no such floor: the processes interleave one schedule (bench.runner.offsets_for)."""
    limits = [(load.concurrency, "load.concurrency"), (load.requests, "load.requests"),
              (load.max_in_flight if load.mode == "open" else 0, "load.max_in_flight")]
    return min(((n, key) for n, key in limits if n > 0), default=(MAX_PROCESSES, "the process limit"))


def split_problem(load: LoadConfig, processes: int) -> str | None:
    """Why ``load`` cannot run in ``processes`` processes (None: it can): a share of 0 would be no clients, or
    no request limit at all."""
    limit, key = split_limit(load)
    if processes <= min(limit, MAX_PROCESSES):
        return None
    if limit >= MAX_PROCESSES:
        return f"at most {MAX_PROCESSES:,} processes, got {processes:,}"
    unit = {"load.concurrency": "client", "load.requests": "request"}.get(key, "in-flight slot")
    return (f"{processes:,} processes cannot share {key} = {limit:,} (each needs at least one {unit}): "
            f"at most {limit:,}")


def _parse_engine(t: Mapping[str, Any], file: str, base_dir: Path) -> EngineSettings:
    tab = Table(t, file, "engine.")
    kind = tab.string("kind", "auto", ("auto", "fast", "httpx")) or "auto"
    http2 = tab.boolean("http2", False)
    connections = tab.integer("connections", 0, maximum=MAX_CONCURRENCY)
    timeout = tab.duration("timeout", 30.0, maximum=86_400.0)
    connect_timeout = tab.duration("connect_timeout", 5.0, maximum=86_400.0)
    insecure = tab.boolean("insecure", False)
    ca_bundle = tab.string("ca_bundle")
    if ca_bundle is not None:  # relative to the scenario file, as data paths are; checked now, not at first use
        ca_bundle = str(base_dir / Path(ca_bundle).expanduser())
        problem = ca_bundle_problem(ca_bundle)
        if problem is not None:
            raise tab.err("ca_bundle", problem)
    loop = tab.string("loop", "auto", ("auto", "asyncio", "uvloop")) or "auto"
    pacing = tab.string("pacing", "auto", ("auto", "sleep", "spin")) or "auto"
    tab.done()
    if kind == "fast" and http2:
        raise tab.err("http2", "the fast engine speaks HTTP/1.1 only; use kind = 'httpx' or 'auto' for HTTP/2")
    if timeout <= 0 or connect_timeout <= 0:
        raise tab.err("timeout", "timeouts must be > 0")
    return EngineSettings(kind=kind, http2=http2, connections=connections, timeout_s=timeout,
                          connect_timeout_s=connect_timeout, insecure=insecure, ca_bundle=ca_bundle, loop=loop,
                          pacing=pacing)


def _parse_report(t: Mapping[str, Any], file: str) -> ReportConfig:
    tab = Table(t, file, "report.")
    directory = tab.string("dir")
    raw = tab.boolean("raw", False)
    tab.done()
    return ReportConfig(dir=Path(directory) if directory else Path("reports"), raw=raw)

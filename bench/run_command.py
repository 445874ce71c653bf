"""`bench run`'s command-line half: flags → a Scenario and RunOptions, handed to bench.session (which runs and
finishes it)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import InputError
from bench.scenario import (
    COMMAND_LINE,
    Scenario,
    apply_overrides,
    closed_loop_clears,
    closed_loop_concurrency,
    is_http2,
    override_values,
    parse_scenario,
    read_scenario_file,
    split_limit,
    split_problem,
    with_values,
)

if TYPE_CHECKING:
    from bench.session import RunOptions

__all__ = ["options_from_args", "run_from_args", "scenario_from_args"]

_CONTENT_TYPES = {".json": "application/json", ".arrow": "application/vnd.apache.arrow.file",
                  ".parquet": "application/octet-stream", ".csv": "text/csv", ".txt": "text/plain"}


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """A scenario file with CLI flags and --set applied, or an ad-hoc scenario from --url/--body."""
    if args.scenario and args.url:
        raise InputError("give a scenario file or --url, not both", key="--url")
    if args.scenario:
        file = args.scenario
        _refuse_adhoc_only_flags(args)
        doc = _with_header_flags(read_scenario_file(file), args)
        base_dir = Path(file).resolve().parent
    elif args.url:
        file = COMMAND_LINE
        doc = _adhoc_doc(args)
        base_dir = Path.cwd()
    else:
        raise InputError("give a scenario file, or --url (with --body) for an ad-hoc run", key="scenario")
    doc = with_values(doc, _flag_values(args, doc, file), file)
    doc = apply_overrides(doc, args.overrides, file)
    _refuse_open_loop_flags(args, doc)
    return parse_scenario(doc, file=file, base_dir=base_dir)


def _adhoc_doc(args: argparse.Namespace) -> dict[str, Any]:
    headers, headers_env = _header_flags(args, scenario=False)
    target: dict[str, Any] = {"url": args.url}
    data: dict[str, Any] = {}
    if args.url == "embedded":
        target["kind"] = "wallaroo"
        if args.body:
            data["path"] = args.body
            data["rows_per_request"] = 10
            if args.body.endswith(".arrow"):
                target["format"] = "arrow"
    else:
        if not args.body:
            raise InputError("an ad-hoc run needs --body FILE (the request body)", key="--body")
        target["kind"] = "http"
        data["body"] = args.body
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = _guess_content_type(args.body)
    if args.method:
        target["method"] = args.method
    if headers:
        target["headers"] = headers
    if headers_env:
        target["headers_env"] = headers_env
    load: dict[str, Any] = {"duration": "10s"}
    if args.concurrency is None and args.rate is None:
        load["concurrency"] = 8
    return {"name": "adhoc", "target": target, "data": data, "load": load}


def _refuse_adhoc_only_flags(args: argparse.Namespace) -> None:
    """``--method`` and ``--body`` shape an ad-hoc run's requests; a scenario's [target] and [data] decide its
    own, so the flag would be ignored: refused naming it (the policy of every ignored flag)."""
    for flag, given, decides in (
            ("--method", args.method, "its [target] decides the method (--set target.method=PUT, for a kind that "
                                      "has one)"),
            ("--body", args.body, "its [data] decides the request bodies (--set data.path=FILE or data.body=FILE)")):
        if given is not None:
            raise InputError(f"applies to an ad-hoc run (--url) only: with a scenario file {decides}, and the flag "
                             "would be ignored", key=flag)


def _header_flags(args: argparse.Namespace, *, scenario: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``-H 'K: V'`` and ``--header-env 'K: VAR'`` checked as ``[target] headers`` / ``headers_env`` are, naming the
    flag: a header bench sets itself, a literal credential (Authorization, X-Api-Key, … — and, with a scenario file,
    one that looks like a credential, which its scenario copy in the report would keep: ``--header-env`` takes it),
    a value the engines cannot send, a malformed Host."""
    from bench.headers import header_value_problem, host_value_problem
    from bench.secrets import credential_header_problem, env_name_problem, header_name_problem, looks_like_credential

    headers: dict[str, str] = {}
    for h in args.header:
        key, sep, value = h.strip().partition(":") if not h.strip().startswith(":") else (h.strip(), ":", "")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InputError("expected 'Name: value'", key="--header")
        if problem := header_name_problem(key):  # ':authority: x' would split at its first colon: kept whole
            raise InputError(f"{key}: {problem}", key="--header")
        if credential_header_problem(key) or (scenario and looks_like_credential(key, value)):
            raise InputError(f"a literal {key} header would store a credential in the report; put the value in an "
                             f"environment variable and pass --header-env '{key}: VAR'", key="--header")
        if problem := header_value_problem(value) or (host_value_problem(value) if key.lower() == "host" else None):
            raise InputError(f"{key}: {problem}", key="--header")
        headers[key] = value
    headers_env: dict[str, str] = {}
    for h in getattr(args, "header_env", None) or []:
        key, sep, value = h.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InputError("expected 'Header-Name: ENV_VAR'", key="--header-env")
        if problem := header_name_problem(key) or env_name_problem(value):
            raise InputError(f"{key}: {problem}", key="--header-env")
        headers_env[key] = value
    return headers, headers_env


def _with_header_flags(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A scenario with ``-H`` / ``--header-env`` merged into its ``[target] headers`` / ``headers_env``: a flag
    replaces the file's header of the same name (any case), in either table. The effective scenario (the report's
    copy) records them; a ``--header-env`` value never, only its variable's name."""
    headers, headers_env = _header_flags(args, scenario=True)
    if not headers and not headers_env:
        return doc
    target = doc.get("target", {})
    if not isinstance(target, Mapping):
        return doc  # the scenario reader refuses it, naming the key
    kind = target.get("kind", "wallaroo")
    from bench.targets import KINDS, target_for

    if kind in KINDS and target_for(kind).rules.owns_section and not target_for(kind).rules.env_credentials:
        raise InputError(f"kind = '{kind}' sends no headers of the scenario's (its [target] has no headers), and the "
                         "flag would be ignored", key="--header" if headers else "--header-env")
    given = {k.lower() for k in (*headers, *headers_env)}
    values: dict[str, Any] = {}
    for table, flags in (("headers", headers), ("headers_env", headers_env)):
        file_table = target.get(table, {})
        if not isinstance(file_table, Mapping):
            continue  # refused by the reader, naming the file's key
        kept = {k: v for k, v in file_table.items() if str(k).lower() not in given}
        values[f"target.{table}"] = {**kept, **flags} or None
    return with_values(doc, values, args.scenario)


def _guess_content_type(body: str) -> str:
    if body.endswith(".df.json"):
        return "application/json; format=pandas-records"
    return _CONTENT_TYPES.get(Path(body).suffix, "application/octet-stream")


def _flag_values(args: argparse.Namespace, doc: Mapping[str, Any], file: str) -> dict[str, Any]:
    """CLI flags as typed scenario values (they win over the file's keys; ``None`` removes a key)."""
    out: dict[str, Any] = {}
    if args.concurrency is not None:  # closed loop: the file's open-loop keys no longer apply
        sets = override_values(args.overrides, file)  # applied after the flags: --set engine.http2 wins
        http2 = sets["engine.http2"] is True if "engine.http2" in sets else (True if args.http2 else None)
        out.update({**closed_loop_clears(doc, http2=http2), "load.rate": None, "load.stages": None,
                    "load.concurrency": args.concurrency})
    if args.rate is not None:
        out.update({"load.concurrency": None, "load.stages": None, "load.rate": args.rate})
    if args.poisson:
        out["load.arrival"] = "poisson"
    for flag, key in (("duration", "load.duration"), ("warmup", "load.warmup")):
        value = getattr(args, flag)
        if value is not None:
            out[key] = _number_or_text(value)
    flags = {"requests": "load.requests", "engine": "engine.kind", "connections": "engine.connections",
             "loop": "engine.loop", "pacing": "engine.pacing"}
    for flag, key in flags.items():
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    if getattr(args, "processes", None) is not None:  # the flag replaces the file's key (checked against the load
        out["load.processes"] = None  # in run_command._processes)
    for flag, key in (("http2", "engine.http2"), ("insecure", "engine.insecure"), ("raw", "report.raw")):
        if getattr(args, flag):
            out[key] = True
    if args.ca_bundle:  # typed on the command line: relative to where it was typed, as curl's --cacert
        out["engine.ca_bundle"] = str(Path(args.ca_bundle).expanduser().resolve())
    return out


def _refuse_open_loop_flags(args: argparse.Namespace, doc: Mapping[str, Any]) -> None:
    """``--poisson`` or ``--pacing sleep|spin`` on a run that is a closed loop (``-c``, the file's
    load.concurrency, or the ad-hoc default) would be ignored: refused naming the flag (the scenario reader names
    a file's key)."""
    concurrency = closed_loop_concurrency(doc)
    if concurrency is None:
        return  # an open loop, or a load the scenario reader refuses with its own message
    load = doc["load"]
    if load.get("rate") or load.get("stages"):
        return  # two modes: the reader says they are exclusive
    for flag, given in (("--poisson", args.poisson), ("--pacing", args.pacing not in (None, "auto"))):
        if given:
            raise InputError(f"applies to an open loop (--rate, load.rate or load.stages) only, and this run is a "
                             f"closed loop of {concurrency} clients (-c / load.concurrency), which would ignore it",
                             key=flag)
    http2 = args.http2 or is_http2(doc)
    if args.connections and not http2:  # HTTP/2 shares its connections in a closed loop too (engine.connections)
        raise InputError(f"applies to an open loop (--rate, load.rate or load.stages) or to HTTP/2 (--http2) only, "
                         f"and this run is a closed loop of {concurrency} clients over HTTP/1.1, one connection each "
                         "(-c sets them), which would ignore it", key="--connections")


def _number_or_text(value: str) -> float | str:
    """A duration flag: a bare number is seconds, anything else ('10s', '1m') is parsed by the scenario reader."""
    try:
        return float(value)
    except ValueError:
        return value


def _processes(args: argparse.Namespace, sc: Scenario) -> int:
    """--processes N, checked as load.processes is: at most MAX_PROCESSES, and no more than the load splits into
    (refused: the user asked for N and would get fewer); 'auto' (one per CPU) is capped there, with a note."""
    raw = args.processes
    if raw is None:
        return sc.load.processes  # the reader checked it against the load
    if raw == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        limit, key = split_limit(sc.load)
        if cpus > limit:
            if not args.quiet:
                print(f"bench: note: --processes auto: {limit} process{'es' if limit > 1 else ''} for {cpus} CPUs "
                      f"({key} = {limit} gives each at least one)", file=sys.stderr)
            return limit
        return cpus
    try:
        n = int(raw)
    except ValueError:
        raise InputError(f"expected a number or 'auto', got {raw!r}", key="--processes") from None
    if n < 1:
        raise InputError("must be >= 1", key="--processes")
    problem = split_problem(sc.load, n)
    if problem:
        raise InputError(problem, key="--processes")
    return n


def options_from_args(args: argparse.Namespace, sc: Scenario) -> RunOptions:
    """The command line's part of a run, as the session layer's typed record."""
    from bench.session import RunOptions

    return RunOptions(out=Path(args.out) if args.out else None, json=bool(args.json), quiet=bool(args.quiet),
                      strict=bool(args.strict), preflight=not args.no_preflight, processes=_processes(args, sc))


def run_from_args(args: argparse.Namespace) -> int:
    from bench.session import run_scenario

    sc = scenario_from_args(args)
    if getattr(args, "locust_master", False):
        if sc.load.processes > 1:  # a worker runs its share in one engine process: the key would be ignored
            raise InputError(f"{sc.load.processes} applies to a local run only: a --locust-master run's load comes "
                             "from its `bench locust-worker` processes, which would ignore it: remove it, and start "
                             "more workers (--expect-workers) instead", file=sc.file, key="load.processes")
        from bench.locust.master import run_master  # imports locust (gevent) only here

        return run_master(args, sc)
    return run_scenario(sc, options_from_args(args, sc))

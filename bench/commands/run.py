"""`bench run SCENARIO.toml` or `bench run --url URL --body FILE` (ad hoc, like hey or wrk)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    from bench.commands.argtypes import not_empty

    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="apply load to an endpoint and write a report",
        description="Run a scenario file, or an ad-hoc load against --url with --body.")
    p.add_argument("scenario", nargs="?", help="scenario TOML file")
    p.add_argument("--url", type=not_empty, help="ad hoc: POST --body to this URL (or 'embedded')")
    p.add_argument("--body", help="ad hoc only: request body file (a scenario's [data] decides its bodies)")
    p.add_argument("--header", "-H", action="append", default=[], metavar="'K: V'",
                   help="extra header (with a scenario file: added to its [target] headers)")
    p.add_argument("--header-env", action="append", default=[], metavar="'K: VAR'",
                   help="a header whose (secret) value is read from environment variable VAR (with a scenario "
                        "file: added to its [target] headers_env)")
    p.add_argument("--method", default=None,
                   help="ad hoc only: HTTP method (default POST; a scenario's [target] decides its method)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", "-c", type=int, help="closed loop with N workers")
    mode.add_argument("--rate", "-r", type=float, help="open loop at R requests/s")
    p.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals instead of constant")
    p.add_argument("--duration", "-d", help="measured duration, e.g. 10s")
    p.add_argument("--warmup", help="warm-up before measuring, e.g. 2s")
    p.add_argument("--requests", "-n", type=int, help="stop after this many requests")
    p.add_argument("--engine", choices=("auto", "fast", "httpx"), help="data-plane engine")
    p.add_argument("--http2", action="store_true", default=None,
                   help="use HTTP/2 (h2c for http://): the lean h2 engine, or httpx with --engine httpx")
    p.add_argument("--connections", type=int, help="HTTP/2: connections the streams share; HTTP/1.1 open loop: "
                   "the most connections (sends beyond wait for a free one); refused on an HTTP/1.1 closed loop "
                   "(one connection per -c client)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="do not verify the target's TLS certificate (other hosts, e.g. a token endpoint, still are)")
    p.add_argument("--ca-bundle", metavar="PEM", dest="ca_bundle",
                   help="trust this CA bundle (PEM) for every HTTPS connection of the run, as curl's --cacert")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), help="event loop")
    p.add_argument("--pacing", choices=("auto", "sleep", "spin"),
                   help="open loop: sleep in epoll between sends, spin (poll without sleeping: sends on time, "
                        "a whole core), or auto (spin while the loop is over ~60%% busy)")
    p.add_argument("--processes", help="load-generator processes on this host: N (at most 1,024, and one per "
                   "client or request), or 'auto' (one per CPU, capped likewise)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a scenario key, e.g. --set load.concurrency=16")
    p.add_argument("--out", "-o", type=not_empty, help="report path (default reports/<UTC time>-<name>.arrow)")
    p.add_argument("--raw", action="store_true", help="also store the per-request log in the report")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--strict", action="store_true", help="exit 3 when the run is generator-bound")
    p.add_argument("--no-preflight", action="store_true", help="skip the Wallaroo deployment status check")
    from bench.commands.locust_worker import add_master_options

    add_master_options(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from bench.commands.locust_worker import master_options
    from bench.run_command import run_from_args

    master_options(args)  # a master-only flag without --locust-master is refused, not ignored
    return run_from_args(args)

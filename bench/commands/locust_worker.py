"""`bench locust-worker --master-host HOST`: a Locust worker running bench's engine (see docs/distributed.md),
and the `bench run --locust-master` options."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_master_options", "register"]

DEFAULT_PORT = 5557  # Locust's default master port


# the master-only options and their defaults: parsed with default None, so that one given without --locust-master
# is seen (and refused, ``master_options``) rather than ignored
MASTER_DEFAULTS: dict[str, object] = {"expect_workers": 1, "master_bind_host": "127.0.0.1",
                                      "master_bind_port": DEFAULT_PORT, "locust_web_port": 0, "worker_wait": 60.0}


def add_master_options(p: argparse.ArgumentParser) -> None:
    """Options of `bench run` for a distributed run on Locust's runners."""
    from bench.commands.argtypes import duration, listen_port, port

    g = p.add_argument_group("distributed (Locust master)")
    g.add_argument("--locust-master", action="store_true",
                   help="run as a Locust master: the load comes from `bench locust-worker` processes")
    g.add_argument("--expect-workers", type=int, metavar="N", help="workers to wait for (default 1)")
    g.add_argument("--master-bind-host",
                   help="address workers connect to (default 127.0.0.1; 0.0.0.0 for other hosts)")
    g.add_argument("--master-bind-port", type=port, help=f"default {DEFAULT_PORT}")
    g.add_argument("--locust-web-port", type=listen_port, metavar="PORT",
                   help="also serve Locust's web UI on 127.0.0.1:PORT with live aggregates (default off)")
    g.add_argument("--worker-wait", type=duration, metavar="S",
                   help="seconds (or a duration such as 2m) to wait for the workers to connect and get ready "
                   "(default 60)")


def master_options(args: argparse.Namespace) -> None:
    """Check the master-only options against --locust-master (InputError, exit 2) and fill their defaults: given
    without it they would be ignored, and a master's load comes from its workers, never from --processes."""
    from bench.errors import InputError

    master = bool(getattr(args, "locust_master", False))
    for name, default in MASTER_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
        elif not master:
            raise InputError("applies to a --locust-master run only, and this run is not one, which would ignore it",
                             key="--" + name.replace("_", "-"))
    if master and getattr(args, "processes", None) is not None:
        raise InputError("a --locust-master run's load comes from its `bench locust-worker` processes, not from "
                         "local ones: start more workers instead", key="--processes")


def register(sub: Any) -> None:
    from bench.commands.argtypes import port

    p: argparse.ArgumentParser = sub.add_parser(
        "locust-worker", help="serve a `bench run --locust-master` as a Locust worker",
        description="Connect to a bench Locust master and apply its share of the load with bench's engine.")
    p.add_argument("--master-host", default="127.0.0.1", help="the master's address (default 127.0.0.1)")
    p.add_argument("--master-port", type=port, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import socket

    from bench.errors import RunInvalid

    try:  # before gevent patches the resolver: ZeroMQ retries a name it cannot resolve forever
        socket.getaddrinfo(args.master_host, args.master_port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid host name"
        raise RunInvalid(f"--master-host: cannot resolve {args.master_host!r}: {why}") from None
    from bench.locust.worker import run_worker  # imports locust (gevent) only here

    return run_worker(args.master_host, args.master_port)

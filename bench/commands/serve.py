"""`bench serve`: run the emulator (Wallaroo inference, UbiOps, KServe V2, token endpoint, /metrics) on this
machine."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["EMBEDDED_GRACE_S", "register"]

# the embedded emulator's graceful shutdown: its parent stops it once the run (drain included) is over, so what is
# still in flight then is abandoned already; waiting longer only delays the run's exit
EMBEDDED_GRACE_S = 0.25

# flag dest -> EmulatorConfig field
_FIELDS = {
    "host": "host", "port": "port", "latency_ms": "latency_ms", "per_row_us": "per_row_us",
    "replicas": "replicas", "error_rate": "error_rate", "seed": "seed", "jitter": "jitter", "http2": "http2",
    "require_token": "require_token", "token_ttl": "token_ttl_s", "startup_s": "startup_s",
    "rate_limit": "rate_limit_per_min", "pipeline": "pipeline", "deployment": "deployment",
    # platform fidelity (issue 11)
    "rate_limit_window": "rate_limit_window_s", "max_pending": "ubiops_max_pending",
    "batch_cancel_status": "ubiops_batch_cancel_status", "mlops_user_token": "mlops_user_token",
    "deployment_status": "deployment_status", "unknown_deployment_status": "unknown_deployment_status",
    "engine_info": "engine_info", "legacy_infer": "legacy_infer",
}


def register(subparsers: Any) -> None:
    from bench.emulator.config import EmulatorConfig

    d = EmulatorConfig()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the emulator (Wallaroo pipeline inference, UbiOps, KServe V2, Keycloak tokens, "
        "/metrics)",
        description="Serve an emulated Wallaroo pipeline (and the UbiOps API, KServe V2 / Open Inference Protocol "
        "routes, a Keycloak token endpoint, the Wallaroo MLOps status API and Prometheus /metrics) with a real model "
        "and a capacity model: `replicas` slots, each request holds one for latency-ms + per-row-us × rows.")
    p.add_argument("--host", default=d.host, help=f"bind address (default {d.host}; loopback only unless "
                   "--allow-remote)")
    p.add_argument("--port", type=int, default=d.port, help=f"port, 0 = a free one (default {d.port})")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms, help=f"base service time (default "
                   f"{d.latency_ms:g})")
    p.add_argument("--per-row-us", type=float, default=d.per_row_us, help=f"service time per row (default "
                   f"{d.per_row_us:g})")
    p.add_argument("--replicas", type=int, default=d.replicas, help=f"service slots (default {d.replicas})")
    p.add_argument("--error-rate", type=float, default=d.error_rate, help="fraction of inferences answered "
                   "with 500/503 (seeded)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"RNG seed for jitter and errors (default {d.seed})")
    p.add_argument("--jitter", type=float, default=d.jitter, help=f"lognormal sigma of service-time jitter "
                   f"(default {d.jitter:g}; 0 = none)")
    p.add_argument("--http2", action="store_true", help="serve h2c (prior knowledge) as well as HTTP/1.1 "
                   "(hypercorn; slower)")
    p.add_argument("--require-token", action="store_true", help="inference needs a Bearer token from the "
                   "token endpoint")
    p.add_argument("--token-ttl", type=float, default=d.token_ttl_s, help=f"token lifetime in seconds "
                   f"(default {d.token_ttl_s:g})")
    p.add_argument("--startup-s", type=float, default=d.startup_s, help="report Starting (and answer 503) "
                   "for this long")
    p.add_argument("--rate-limit", type=int, default=d.rate_limit_per_min, help="UbiOps requests per minute "
                   "(0 = none)")
    p.add_argument("--pipeline", default=d.pipeline, help=f"pipeline name (default {d.pipeline})")
    p.add_argument("--deployment", default=d.deployment, help=f"deployment name-id in the external URL "
                   f"(default {d.deployment})")
    p.add_argument("--fault", default="", metavar="SPEC",
                   help="inject faults, seeded by --seed: comma-separated name:probability[:key=value...], e.g. "
                   "'stall:0.01,reset:0.02,5xx:0.01:burst=20,close_after:100'. Faults: "
                   + "; ".join(_fault_help()))
    _platform_flags(p, d)
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    p.add_argument("--config-stdin", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _fault_help() -> list[str]:
    from bench.emulator.faults import describe

    return describe()


def _platform_flags(p: argparse.ArgumentParser, d: Any) -> None:
    """Flags that make the emulator behave as a particular platform version does (issue 11)."""
    p.add_argument("--rate-limit-window", type=float, default=d.rate_limit_window_s, help="UbiOps rate-limit "
                   f"window in seconds (default {d.rate_limit_window_s:g})")
    p.add_argument("--max-pending", type=int, default=d.ubiops_max_pending, help="UbiOps: cap on unfinished batch "
                   "requests per deployment version (0 = none)")
    p.add_argument("--batch-cancel-status", type=int, default=d.ubiops_batch_cancel_status, help="UbiOps: answer "
                   "POST …/requests/cancel with 404 or 405, as an older API without it (0 = route present)")
    p.add_argument("--mlops-user-token", action=argparse.BooleanOptionalAction, default=d.mlops_user_token,
                   help="with --require-token: MLOps routes take only a user (password-grant) token, as the platform "
                   "(default on; --no-mlops-user-token: any token, as older emulators)")
    p.add_argument("--deployment-status", default=d.deployment_status, help="the deployment status after "
                   "--startup-s (Starting, Running or Error; default Running)")
    p.add_argument("--unknown-deployment-status", type=int, default=d.unknown_deployment_status,
                   help=f"get_deployment answer for a wrong name: 400 or 500 as today's platform, or 404 "
                   f"(default {d.unknown_deployment_status})")
    p.add_argument("--engine-info", action=argparse.BooleanOptionalAction, default=d.engine_info,
                   help="get_deployment nests engine fields under info, as today's platform (default on)")
    p.add_argument("--legacy-infer", action="store_true", help="older installs: …/pipelines/infer/<pipeline>-<id> "
                   "and one answer object per request")


def _config_from_stdin() -> Any:
    """Embedded mode: the config is the first stdin line; closing stdin (the parent going away) stops us."""
    import os
    import signal
    import sys
    import threading

    import orjson

    from bench.emulator.embedded import emulator_config_from_mapping

    line = sys.stdin.buffer.readline()
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        from bench.errors import InputError

        raise InputError("expected the emulator config as one JSON line", file="<stdin>") from None
    config = emulator_config_from_mapping(data, "<stdin>")

    def watch_parent() -> None:
        # the raw descriptor, not sys.stdin: a daemon thread blocked in the buffered reader holds its lock, and an
        # exit on an error (its one line on stderr) ended in "Fatal Python error" and SIGABRT instead
        while os.read(sys.stdin.fileno(), 65536):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return config


def run(args: argparse.Namespace) -> int:
    from bench.emulator.config import EmulatorConfig
    from bench.emulator.embedded import config_problems, is_loopback
    from bench.emulator.server import serve
    from bench.errors import InputError

    if args.config_stdin:
        config = _config_from_stdin()
    else:
        from bench.emulator.faults import FaultSpecError, canonical_faults

        try:
            faults = canonical_faults(args.fault)
        except FaultSpecError as exc:
            raise InputError(str(exc), key="--fault") from None
        config = EmulatorConfig(**{field: getattr(args, dest) for dest, field in _FIELDS.items()}, faults=faults)
        flags = {field: "--" + dest.replace("_", "-") for dest, field in _FIELDS.items()} | {"faults": "--fault"}
        problems = config_problems(config)
        if problems:
            name, problem = problems[0]
            raise InputError(problem, key=flags.get(name, name))
    if not args.allow_remote and not is_loopback(config.host):
        raise InputError(f"refusing to bind non-loopback address {config.host!r} (add --allow-remote)",
                         key="--host")
    try:
        serve(config, grace_s=EMBEDDED_GRACE_S if args.config_stdin else None)
    except OSError as exc:
        raise InputError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
                         key="--port") from None
    return 0

"""Run the emulator in a child process (its own core, its own event loop) for the length of a `with` block.

The child is `python -m bench serve --config-stdin`: it reads the whole config as one JSON line on stdin, prints
its URLs on stdout, and exits when stdin closes — so it cannot outlive a parent that dies without cleaning up.
Also here: turning a scenario's ``[emulator]`` table into a validated EmulatorConfig.
"""

from __future__ import annotations

import dataclasses
import math
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

import orjson

from bench.emulator.config import EmulatorConfig, UbiOpsDeployment
from bench.emulator.server import LISTENING_PREFIX
from bench.emulator.ubiops_input import FIELD_TYPES
from bench.errors import InputError, RunInvalid

__all__ = ["EmbeddedEmulator", "config_problems", "config_to_json", "emulator_config_from_mapping", "is_loopback"]


_WEEK_S = 7 * 24 * 3600.0  # as the scenario's longest duration: more is a typo
# (float field, must be > 0 rather than >= 0, upper bound): times up to a week; a lognormal sigma of 5 already
# spreads service times over ten orders of magnitude
_NUMBERS = (("latency_ms", False, _WEEK_S * 1e3), ("per_row_us", False, _WEEK_S * 1e6), ("jitter", False, 5.0),
            ("startup_s", False, _WEEK_S), ("token_ttl_s", True, _WEEK_S))
_MAX_INT = 2**53  # the JSON line to the embedded emulator holds 64-bit integers only


def config_problems(config: EmulatorConfig) -> list[tuple[str, str]]:
    """(field name, problem) for every out-of-range value; empty when the config is usable."""
    problems: list[tuple[str, str]] = []
    for name, positive, top in _NUMBERS:
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            problems.append((name, f"must be a finite number {'>' if positive else '>='} 0, got {value}"))
        elif value > top:
            problems.append((name, f"must be at most {top:g}, got {value:g}"))
    if not 0.0 <= config.error_rate <= 1.0:
        problems.append(("error_rate", f"must be between 0 and 1, got {config.error_rate}"))
    if config.replicas < 1:
        problems.append(("replicas", f"must be >= 1, got {config.replicas}"))
    if not 0 <= config.port <= 65535:
        problems.append(("port", f"must be 0..65535, got {config.port}"))
    if not 0 <= config.seed <= 2**32 - 1:  # numpy aborts the emulator on a negative seed
        problems.append(("seed", f"must be 0..{2**32 - 1}, got {config.seed}"))
    if config.rate_limit_per_min < 0:
        problems.append(("rate_limit_per_min", f"must be >= 0, got {config.rate_limit_per_min}"))
    if config.workspace_id < 0:
        problems.append(("workspace_id", f"must be >= 0, got {config.workspace_id}"))
    for name in ("client_id", "client_secret", "public_client_id", "ubiops_token"):
        if not getattr(config, name).strip():
            problems.append((name, "must not be empty"))
    problems.extend(_platform_problems(config))
    for name in ("pipeline", "deployment"):
        value = getattr(config, name)
        if not value or "/" in value:
            problems.append((name, f"must be a non-empty name without '/', got {value!r}"))
    if config.faults:
        from bench.emulator.faults import fault_problem

        problem = fault_problem(config.faults, config.http2)
        if problem:
            problems.append(("faults", problem))
    return problems


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or 'localhost'): what the emulator binds without --allow-remote."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _platform_problems(config: EmulatorConfig) -> list[tuple[str, str]]:
    """Checks of the platform-fidelity options (rate limit window, pending cap, missing routes, statuses)."""
    problems: list[tuple[str, str]] = []
    if not math.isfinite(config.rate_limit_window_s) or not 0 < config.rate_limit_window_s <= _WEEK_S:
        problems.append(("rate_limit_window_s", f"must be a number > 0 and at most {_WEEK_S:g}, got "
                         f"{config.rate_limit_window_s}"))
    if config.ubiops_max_pending < 0:
        problems.append(("ubiops_max_pending", f"must be >= 0, got {config.ubiops_max_pending}"))
    if config.ubiops_batch_cancel_status not in (0, 404, 405):
        problems.append(("ubiops_batch_cancel_status", f"must be 0, 404 or 405, got "
                         f"{config.ubiops_batch_cancel_status}"))
    if config.ubiops_unknown_id_status not in (400, 404):
        problems.append(("ubiops_unknown_id_status", f"must be 400 or 404, got {config.ubiops_unknown_id_status}"))
    if config.ubiops_max_batch_timeout_s < 1:
        problems.append(("ubiops_max_batch_timeout_s", f"must be >= 1, got {config.ubiops_max_batch_timeout_s}"))
    if config.unknown_deployment_status not in (400, 404, 500):
        problems.append(("unknown_deployment_status", f"must be 400, 404 or 500, got "
                         f"{config.unknown_deployment_status}"))
    if config.deployment_status not in ("", "Starting", "Running", "Error"):
        problems.append(("deployment_status", f"must be '', 'Starting', 'Running' or 'Error', got "
                         f"{config.deployment_status!r}"))
    return problems


def _bad(file: str, key: str, problem: str) -> InputError:
    return InputError(problem, file=file, key=key)


def _coerce(kind: str, value: object, file: str, key: str) -> object:
    """Check one TOML value against the EmulatorConfig field's (string) annotation."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _bad(file, key, f"must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _MAX_INT:
                raise _bad(file, key, f"out of range: {value}")
            return value
        raise _bad(file, key, f"must be an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _bad(file, key, f"must be a number, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _bad(file, key, f"must be a string, got {value!r}")
    if kind.startswith("tuple[tuple[str, str]"):
        return _users(value, file, key)
    if kind.startswith("tuple[UbiOpsDeployment"):
        return _deployments(value, file, key)
    raise _bad(file, key, f"cannot be set from a scenario (type {kind})")


def _users(value: object, file: str, key: str) -> tuple[tuple[str, str], ...]:
    pairs: list[object] = list(value.items()) if isinstance(value, Mapping) else value \
        if isinstance(value, list) else [None]
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise _bad(file, key, "must be a table of user = password, or a list of [user, password] pairs")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _deployments(value: object, file: str, key: str) -> tuple[UbiOpsDeployment, ...]:
    if not isinstance(value, list):
        raise _bad(file, key, "must be a list of tables (project, name, version, input_type, fields)")
    known = {f.name for f in dataclasses.fields(UbiOpsDeployment)}
    out: list[UbiOpsDeployment] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise _bad(file, where, "must be a table")
        kwargs: dict[str, Any] = {}
        for k, v in item.items():
            if k not in known:
                raise _bad(file, f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
            if k in ("fields", "field_types"):
                if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                    raise _bad(file, f"{where}.{k}", "must be a list of strings")
                kwargs[k] = tuple(v)
            elif not isinstance(v, str):
                raise _bad(file, f"{where}.{k}", f"must be a string, got {v!r}")
            else:
                kwargs[k] = v
        dep = UbiOpsDeployment(**kwargs)
        if dep.input_type not in ("structured", "plain"):
            raise _bad(file, f"{where}.input_type", "must be 'structured' or 'plain'")
        unknown = [t for t in dep.field_types if t not in FIELD_TYPES]
        if unknown:
            raise _bad(file, f"{where}.field_types", f"unknown type {unknown[0]!r} (known: "
                       f"{', '.join(FIELD_TYPES)})")
        if dep.field_types and dep.input_type == "plain":
            raise _bad(file, f"{where}.field_types", "a plain deployment has no input fields to type")
        if dep.field_types and len(dep.field_types) != len(dep.fields):
            raise _bad(file, f"{where}.field_types", f"one type per field: {len(dep.fields)} field(s), got "
                       f"{len(dep.field_types)} type(s)")
        out.append(dep)
    return tuple(out)


def emulator_config_from_mapping(d: Mapping[str, object], file: str) -> EmulatorConfig:
    """Validate a scenario's ``[emulator]`` table (keys = EmulatorConfig fields); errors name ``emulator.<key>``."""
    fields = {f.name: f for f in dataclasses.fields(EmulatorConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise _bad(file, f"emulator.{key}", f"unknown key (known: {', '.join(sorted(fields))})")
        if key == "faults":  # a spec string or a table: stored as the canonical string
            from bench.emulator.faults import FaultSpecError, canonical_faults

            try:
                kwargs[key] = canonical_faults(value)
            except FaultSpecError as exc:
                raise _bad(file, "emulator.faults", str(exc)) from None
            continue
        kwargs[key] = _coerce(str(fields[key].type), value, file, f"emulator.{key}")
    config = EmulatorConfig(**kwargs)
    if not is_loopback(config.host):  # the embedded emulator is this run's own target; `bench serve` can go wider
        raise _bad(file, "emulator.host", f"the embedded emulator listens on loopback only (127.0.0.1, ::1 or "
                   f"localhost), got {config.host!r}; for another address run `bench serve --host ... "
                   "--allow-remote` and give its URL as target.url")
    problems = config_problems(config)
    if problems:
        name, problem = problems[0]
        raise _bad(file, f"emulator.{name}", problem)
    return config


def config_to_json(config: EmulatorConfig) -> bytes:
    """One JSON line that emulator_config_from_mapping turns back into the same config."""
    return orjson.dumps(dataclasses.asdict(config)) + b"\n"


class EmbeddedEmulator:
    """The emulator in a subprocess on a free loopback port: ``with EmbeddedEmulator(cfg) as emu: emu.base_url``.

    Works as a sync and an async context manager; the child is always stopped on exit (SIGTERM, then SIGKILL).
    """

    def __init__(self, config: EmulatorConfig | None = None, *, startup_timeout_s: float = 30.0,
                 stop_timeout_s: float = 5.0) -> None:
        self.config = dataclasses.replace(config or EmulatorConfig(), port=0)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.lines: list[str] = []  # what the child announced
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the embedded emulator is not running")
        return self._base_url

    @property
    def wallaroo_url(self) -> str:
        """The external Wallaroo inference URL (an older install's one-segment form with ``legacy_infer``)."""
        if self.config.legacy_infer:
            return f"{self.base_url}/v1/api/pipelines/infer/{self.config.deployment}"
        return f"{self.base_url}/v1/api/pipelines/infer/{self.config.deployment}/{self.config.pipeline}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; closed in stop()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bench", "serve", "--config-stdin"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0,
                start_new_session=True)  # a terminal Ctrl-C reaches the parent only; the parent stops the child
            assert self._proc.stdin is not None
            self._proc.stdin.write(config_to_json(self.config))
            self._proc.stdin.flush()
            self._base_url = self._await_listening()
        except BaseException:
            self.stop()
            raise

    def _await_listening(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode("utf-8", "replace")
                    self.lines.append(text)
                    if text.startswith(LISTENING_PREFIX):
                        self.lines.extend(buf.decode("utf-8", "replace").splitlines())
                        return text[len(LISTENING_PREFIX):].strip()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RunInvalid(f"the embedded emulator did not start within {self.startup_timeout_s:g} s"
                                     f"{self._stderr_tail()}")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    proc.wait(timeout=self.stop_timeout_s)
                    raise RunInvalid(f"the embedded emulator exited with code {proc.returncode} before listening"
                                     f"{self._stderr_tail()}")
                buf += chunk

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return ": " + " | ".join(lines[-3:]) if lines else ""

    def stop(self) -> None:
        """Stop the child (idempotent): close its stdin and SIGTERM it, SIGKILL after ``stop_timeout_s``."""
        proc, self._proc, self._base_url = self._proc, None, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> EmbeddedEmulator:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedEmulator:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.stop)

"""The target registry: one module per platform behind one small interface.

A platform module (``wallaroo``, ``ubiops``, ``http``; next ``kserve``) defines a ``Target`` subclass instance
named ``TARGET``; adding a platform is one new module plus one line in ``REGISTRY``. Nothing outside this package
switches on ``target.kind``: the scenario reader, the preparation, the runner, the session and the report ask the
target instead. Platform modules are imported only when a scenario names them (``target_for``).

A target says: how its ``[target]`` section is read (``section_rules`` for the scenario reader, ``config`` for
the keys it owns, parsed once per run), how bodies are built (``bodies``), how requests look and answers are
judged (``request``), where it lives on the embedded emulator (``emulator_url``) and how resolved endpoints
change its config (``point_at``), whether it brings its own data plane (``own_data_plane``, ``run``), and what
it adds to the report (``lag_bound_ms``; ``run``'s returned extras).
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bench.results import Classifier, LoadSpec, PreparedBody, StopSignal

if TYPE_CHECKING:
    from bench.prepared import Endpoints
    from bench.scenario import Scenario, TargetConfig

__all__ = ["KINDS", "REGISTRY", "Request", "SectionRules", "Target", "read_table", "target_for"]

REGISTRY: Mapping[str, str] = {  # kind -> module defining TARGET
    "wallaroo": "bench.targets.wallaroo",
    "ubiops": "bench.targets.ubiops_target",
    "http": "bench.targets.http",
    "kserve": "bench.targets.kserve",
}
KINDS = tuple(REGISTRY)


@dataclass(frozen=True)
class SectionRules:
    """What the scenario reader checks of ``[target]`` for this kind (the rest is the target's ``config``)."""

    owns_section: bool = False  # the target validates its whole [target] table itself (config); url is checked
    embeddable: bool = True  # url = "embedded" (the built-in emulator) is allowed
    formats: tuple[str, ...] = ()  # allowed target.format values (empty: any)
    needs_body: bool = False  # data.body (a raw body file) instead of a dataset
    env_credentials: bool = False  # an owns_section kind whose requests still carry [target] token_env/headers_env


@dataclass(frozen=True)
class Request:
    """The wire form of a target's requests: the URL to send to, its headers, and the answer classifier."""

    url: str
    headers: Mapping[str, str]
    classify: Classifier
    answer_bytes: int | None = None  # how much of an answer ``classify`` reads (None: all; see RequestSet)


class Target:
    """One platform. Stateless: per-run state is the ``config`` it returns."""

    kind: ClassVar[str]
    rules: ClassVar[SectionRules] = SectionRules()
    lag_bound_ms: ClassVar[float] = 1.0  # schedule lag (p99) beyond this marks the run generator-bound

    def config(self, sc: Scenario) -> Any:
        """The target's typed config from its scenario section, read once per run (None: nothing beyond
        scenario.TargetConfig). Raises InputError naming file and key."""
        return None

    def bodies(self, sc: Scenario, config: Any) -> Sequence[PreparedBody]:
        """Every request body, encoded once (default: the dataset as the target's format, see payload)."""
        raise NotImplementedError

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        """Headers and classifier for the engines (targets with their own data plane need not define it)."""
        raise NotImplementedError

    def emulator_url(self, base_url: str, wallaroo_url: str) -> str:
        """The URL to load when the embedded emulator (at ``base_url``) stands in for the platform."""
        return wallaroo_url

    def point_at(self, config: Any, ep: Endpoints) -> Any:
        """``config`` pointed at resolved endpoints (e.g. the emulator's URL and token)."""
        return config

    def has_preflight(self, config: Any) -> bool:
        """True: ``preflight`` checks the target before any load (a multi-process parent runs it once)."""
        return False

    async def preflight(self, config: Any, url: str, message: Callable[[str], None],
                        headers: Callable[[], Mapping[str, str]] = dict,
                        verify: ssl.SSLContext | bool = True) -> None:
        """Readiness and model checks before any load: InputError (exit 2) or RunInvalid (exit 3).

        ``headers()`` gives what every request carries beyond the target's own (credentials included, current at
        the call: a token may be refreshed while the preflight waits); ``verify``: the run's TLS trust for the
        target's server (bench.tlstrust)."""

    def share_doc(self, sc: Scenario, config: Any, worker: tuple[int, int]) -> Mapping[str, Any]:
        """The scenario document worker ``(i, n)`` of a ``--processes`` run gets (default: all of it; load and
        connections are split by the runner). A target with a per-run quota (UbiOps' request budget) splits it
        here so the workers together keep to it. Raises InputError when it cannot be split."""
        return sc.source

    def own_data_plane(self, config: Any) -> bool:
        """True: ``run`` applies the load; False (default): a bench engine does, with ``request``."""
        return False

    def engine_hooks(self, config: Any, engine: Any, sink: Any) -> Callable[[], Mapping[str, Any]] | None:
        """Before an engine runs this target's requests: set its hooks (``watch_headers``, ``gate_sends``, e.g.
        UbiOps' rate-limit backoff). Returns what to add to the report's metadata once it has run (or None)."""
        return None

    def report_extras(self, config: Any) -> Mapping[str, Any]:
        """What every report of a run with this ``config`` (from ``config``, read when the run was prepared) adds
        to its ``extra`` metadata, on every path (one process, the workers, Locust), e.g. the http target's
        ``rows: "not counted"``."""
        return {}

    def read_timeout_s(self, config: Any) -> float | None:
        """The longest an answer may legitimately take on this target, when longer than [engine] timeout."""
        return None

    def drain_grace_s(self, config: Any) -> float:
        """Extra time the runner allows after the planned end before it stops the run itself."""
        return 0.0

    def end_note(self, extras: Mapping[str, Any]) -> str | None:
        """One line for the end of the run from the report's metadata (e.g. UbiOps: budget use, cancels)."""
        return None

    async def run(self, config: Any, bodies: Sequence[PreparedBody], sink: Any, spec: LoadSpec,
                  stop: StopSignal, verify: ssl.SSLContext | bool = True,
                  watch_sent: Callable[[Callable[[], int]], None] | None = None) -> Mapping[str, Any]:
        """Targets with their own data plane apply the load here (``verify``: the run's TLS trust for the target's
        server); returns what they add to the report's metadata. ``watch_sent`` is given how to read the requests
        sent so far (a checkpoint counts those on the wire at a kill as in flight)."""
        raise NotImplementedError


def target_for(kind: str) -> Target:
    """The registered target of ``kind`` (its module is imported now)."""
    try:
        module = REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown target kind {kind!r} (known: {', '.join(KINDS)})") from None
    target: Target = importlib.import_module(module).TARGET
    return target


def read_table(sc: Scenario, *, json_body: bool | None = None, binary_hint: str = "") -> Any:
    """The scenario's rows as an Arrow table (its data file, or the synthetic ccfraud set). ``json_body``: whether
    the bodies are JSON (NaN and raw bytes refused; None: unless ``target.format`` is arrow); ``binary_hint``: how
    this target could send a binary column after all (for the refusal's line)."""
    from bench.data import generate_ccfraud, read_dataset
    from bench.datacheck import check_tensors
    from bench.errors import InputError

    data = sc.data
    if data.path is not None:
        table = read_dataset(data.path, data.column)
        check_tensors(table, data.column, str(data.path),
                      json_body=sc.target.format != "arrow" if json_body is None else json_body,
                      binary_hint=binary_hint)
        where = f"the {table.num_rows:,} rows of {data.path}"
    else:
        table = generate_ccfraud(data.generate_rows, data.seed)
        where = f"the {table.num_rows:,} generated rows (data.generate)"
    if data.rows_per_request > table.num_rows:  # every request would carry all rows, and the report claim more
        raise InputError(f"{data.rows_per_request:,} is more than {where}: a request cannot carry more rows than "
                         "the data has", file=sc.file, key="data.rows_per_request")
    return table

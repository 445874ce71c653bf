"""The UbiOps target in the registry: its section, bodies, emulator endpoint; direct requests on a bench engine
(rate-limit backoff as its send gate), batch create / collect / cancel on its own data plane
(bench.targets.ubiops_runner)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, overload

from bench.errors import InputError
from bench.results import LoadSpec, PreparedBody, StopSignal, body_getter
from bench.targets import Request, SectionRules, Target, read_table
from bench.targets.ubiops import UbiOpsConfig, build_ubiops_bodies, classify_direct, ubiops_config_from_mapping
from bench.targets.ubiops_runner import attach_direct, run_ubiops

if TYPE_CHECKING:
    from bench.prepared import Endpoints
    from bench.scenario import Scenario, TargetConfig

__all__ = ["TARGET", "UbiOpsTarget"]


class UbiOpsTarget(Target):
    """A UbiOps deployment (version): direct requests or batch create / collect, on its own data plane."""

    kind = "ubiops"
    rules = SectionRules(owns_section=True)
    lag_bound_ms = 10.0  # batch mode is paced in chunks, direct answers take milliseconds: 1 ms of lag is no fault

    def config(self, sc: Scenario) -> UbiOpsConfig:
        """The [target] and [ubiops] tables; batch calls take [engine] timeout / connect_timeout."""
        cfg = ubiops_config_from_mapping(sc.target.raw, sc.file, ubiops=sc.ubiops)
        return replace(cfg, call_timeout_s=sc.engine.timeout_s, connect_timeout_s=sc.engine.connect_timeout_s)

    def bodies(self, sc: Scenario, config: Any) -> Sequence[PreparedBody]:
        """A ``LazyBodies``: each body is encoded when the run first sends it (a big data set starts at once)."""
        table = read_table(sc)
        try:
            return build_ubiops_bodies(config, table, sc.data.rows_per_request)
        except InputError as exc:  # a key of the scenario (target.fields, data.rows_per_request): name the file
            raise InputError(exc.problem, file=sc.file, key=exc.key) from None

    def emulator_url(self, base_url: str, wallaroo_url: str) -> str:
        return base_url

    def point_at(self, config: Any, ep: Endpoints) -> Any:
        if ep.ubiops_token is None:
            return config
        return config.with_endpoint(ep.inference_url, ep.ubiops_token)

    def share_doc(self, sc: Scenario, config: Any, worker: tuple[int, int]) -> Mapping[str, Any]:
        """Worker ``(i, n)`` gets its part of ``[ubiops] calls_per_minute`` (the parts sum to the whole), so
        ``--processes n`` together keep to the platform's limit (one source address, one limit)."""
        share = budget_share(config, worker, sc.file)
        if share is None:
            return sc.source
        return {**sc.source, "ubiops": {**sc.source.get("ubiops", {}), "calls_per_minute": share}}

    def own_data_plane(self, config: Any) -> bool:
        """Batch mode (create / collect / cancel) runs on the UbiOps runner; direct requests on a bench engine."""
        return bool(config.mode == "batch")

    def engine_hooks(self, config: Any, engine: Any, sink: Any) -> Callable[[], Mapping[str, Any]] | None:
        """Direct requests: the rate gate reads every answer's x-ratelimit-* headers; with backoff it is also
        the engine's send gate (request budget + server window)."""
        return attach_direct(config, engine, sink)

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        return Request(url=config.direct_url(), headers=config.headers(), classify=classify_direct)

    def read_timeout_s(self, config: Any) -> float | None:
        return float(config.timeout_s or 300) + 30.0  # the platform's own timeout (default 300 s) + margin

    def drain_grace_s(self, config: Any) -> float:
        return float(config.drain_timeout_s) + 5.0

    def end_note(self, extras: Mapping[str, Any]) -> str | None:
        """How much of the request budget the run used (polling's share), and what its end cancelled."""
        stats = extras.get("ubiops")
        if not isinstance(stats, Mapping):
            return None
        raw_budget = stats.get("budget")
        budget: Mapping[str, Any] = raw_budget if isinstance(raw_budget, Mapping) else {}
        parts = []
        per_min = budget.get("budget_calls_per_minute")
        if per_min:
            used = budget.get("budget_used_fraction")
            polled = budget.get("budget_collect_fraction")
            parts.append(f"request budget {per_min}/min: {budget.get('budget_calls', 0)} calls"
                         + (f" ({used:.0%} of it)" if isinstance(used, float) else "")
                         + (f", polling {polled:.0%}" if isinstance(polled, float) else ""))
        if stats.get("rate_limited"):
            parts.append(f"{stats['rate_limited']} answered 429")
        if stats.get("missing"):
            parts.append(f"{stats['missing']} missing on the platform")
        if stats.get("cancel_requested"):
            parts.append(f"cancelled {stats.get('cancel_confirmed', 0)} of {stats['cancel_requested']} left over"
                         + (f", {stats['cancel_unconfirmed']} could not be (they may still run)"
                            if stats.get("cancel_unconfirmed") else ""))
        return "ubiops: " + "; ".join(parts) if parts else None

    async def run(self, config: Any, bodies: Sequence[PreparedBody], sink: Any, spec: LoadSpec,
                  stop: StopSignal, verify: ssl.SSLContext | bool = True,
                  watch_sent: Callable[[Callable[[], int]], None] | None = None) -> Mapping[str, Any]:
        rows = getattr(bodies, "rows", None)  # a LazyBodies knows its row counts without encoding
        stats = await run_ubiops(config, _Inputs(bodies), rows if isinstance(rows, list) else [b.rows for b in bodies],
                                 sink, spec, stop, verify, watch_sent)
        return {"ubiops": stats.to_dict()}


def budget_share(config: UbiOpsConfig, worker: tuple[int, int], file: str) -> int | None:
    """Worker ``(i, n)``'s calls a minute (the first ``total % n`` take one more); None when the whole budget
    stays (one process, no budget, or direct requests that count 429s, which spend none)."""
    i, n = worker
    total = config.calls_per_minute
    if n <= 1 or total <= 0 or (config.mode == "direct" and config.on_rate_limit == "count"):
        return None
    if total < n:
        raise InputError(f"{total} calls a minute cannot be split across {n} processes (each needs at least 1; "
                         f"0 would mean no budget)", file=file, key="ubiops.calls_per_minute")
    return total // n + (1 if i < total % n else 0)


class _Inputs(Sequence[bytes]):
    """The bodies' bytes, encoded on first use (``LazyBodies.body``), for the UbiOps runner."""

    def __init__(self, bodies: Sequence[PreparedBody]) -> None:
        self._bodies = bodies
        self._get = body_getter(bodies)

    def __len__(self) -> int:
        return len(self._bodies)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self._get(k) for k in range(*i.indices(len(self)))]
        return self._get(i if i >= 0 else i + len(self))


TARGET = UbiOpsTarget()

"""The UbiOps target in the registry: its section, bodies, emulator endpoint and own data plane (direct requests
or batch create / collect, bench.targets.ubiops_runner)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench.results import LoadSpec, PreparedBody, StopSignal
from bench.targets import SectionRules, Target, read_table
from bench.targets.ubiops import UbiOpsConfig, build_ubiops_bodies, ubiops_config_from_mapping
from bench.targets.ubiops_runner import run_ubiops

if TYPE_CHECKING:
    from bench.prepared import Endpoints
    from bench.scenario import Scenario

__all__ = ["TARGET", "UbiOpsTarget"]


class UbiOpsTarget(Target):
    """A UbiOps deployment (version): direct requests or batch create / collect, on its own data plane."""

    kind = "ubiops"
    rules = SectionRules(owns_section=True)
    lag_bound_ms = 10.0  # the data plane is httpx-based and paced in chunks: a millisecond of lag is not a fault
    own_data_plane = True

    def config(self, sc: Scenario) -> UbiOpsConfig:
        return ubiops_config_from_mapping(sc.target.raw, sc.file)

    def bodies(self, sc: Scenario, config: Any) -> list[PreparedBody]:
        return list(build_ubiops_bodies(config, read_table(sc), sc.data.rows_per_request))

    def emulator_url(self, base_url: str, wallaroo_url: str) -> str:
        return base_url

    def point_at(self, config: Any, ep: Endpoints) -> Any:
        if ep.ubiops_token is None:
            return config
        return config.with_endpoint(ep.inference_url, ep.ubiops_token)

    def drain_grace_s(self, config: Any) -> float:
        return float(config.drain_timeout_s) + 5.0

    async def run(self, config: Any, bodies: list[PreparedBody], sink: Any, spec: LoadSpec,
                  stop: StopSignal) -> Mapping[str, Any]:
        stats = await run_ubiops(config, [b.body for b in bodies], [b.rows for b in bodies], sink, spec, stop)
        return {"ubiops": stats.to_dict()}


TARGET = UbiOpsTarget()

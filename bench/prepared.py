"""The validated, pre-encoded inputs of a run (``Prepared``), and where a resolved run sends things (``Endpoints``).

``prepare`` does everything that can fail on bad input (data, bodies, every section's config) before any load
starts, so input errors exit 2 without touching the target. ``point_at`` applies resolved ``Endpoints`` (the
embedded emulator's URLs, or the preflight's answer): bench.session builds them; this module never sees the
emulator (its config type is named for the type checker only).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bench.config.wallaroo import EMBEDDED_PLACEHOLDER
from bench.results import PreparedBody
from bench.scenario import Scenario
from bench.secrets import Scrubber, scrubber_for
from bench.targets import target_for

if TYPE_CHECKING:
    from bench.auth import AuthConfig
    from bench.emulator.config import EmulatorConfig
    from bench.preflight import PreflightConfig
    from bench.report.slo import SloObjectives
    from bench.scrape import ScrapeConfig

__all__ = ["EMBEDDED_PLACEHOLDER", "Endpoints", "Prepared", "point_at", "prepare"]




@dataclass(frozen=True)
class Endpoints:
    """Where a resolved run sends things: the inference URL and, for the embedded emulator, its other services.

    Plain data (``dataclasses.asdict`` / ``Endpoints(**d)``): multi-process workers get it on stdin. Built by
    bench.session, which alone knows the emulator.
    """

    inference_url: str
    api_url: str | None = None  # the emulator's MLOps API (replaces [wallaroo] api_url = "embedded")
    token_url: str | None = None  # the emulator's Keycloak token endpoint (when [auth] gives none)
    ubiops_token: str | None = None  # the emulator's UbiOps API token (kind = "ubiops")

    @property
    def embedded(self) -> bool:
        return self.api_url is not None


@dataclass
class Prepared:
    """Validated, pre-encoded inputs of a run (no sockets opened yet)."""

    scenario: Scenario
    bodies: Sequence[PreparedBody]  # a data set's are a LazyBodies: encoded as the run reaches them
    emulator_config: EmulatorConfig | None = None  # when target.url == "embedded" (set by bench.session)
    auth_config: AuthConfig | None = None
    preflight_config: PreflightConfig | None = None  # [wallaroo] with an api_url: the preflight
    target_config: Any = None  # the target's own config (bench.targets: Target.config), parsed once per run
    slo: SloObjectives | None = None
    embedded: bool = False  # the target is the embedded emulator (bench.session resolved its URLs)
    endpoints: Endpoints | None = None  # what bench.session.point_at applied
    scrubber: Scrubber = field(default_factory=Scrubber)  # every secret value of the run (bench.secrets)
    scrape_config: ScrapeConfig | None = None  # [server_metrics]: the server's /metrics, scraped during the run
    # what the run's own HTTPS clients (readiness checks, scrape, UbiOps batch; token endpoint, MLOps API) verify
    # with, towards the target's server and towards other hosts (bench.tlstrust), built once per run
    verify_target: ssl.SSLContext | bool = True
    verify_other: ssl.SSLContext | bool = True



def prepare(sc: Scenario) -> Prepared:
    """Read data and encode every request body once (the scenario reader has already typed every section)."""
    target = target_for(sc.target.kind)
    config = target.config(sc)
    prepared = Prepared(scenario=sc, bodies=target.bodies(sc, config), target_config=config)
    prepared.auth_config = sc.auth
    prepared.preflight_config = sc.wallaroo
    prepared.slo = sc.slo
    if sc.server_metrics:  # a typed hook: its parser (bench.scrape) needs to know whether the target is embedded
        from bench.scrape import config_from_mapping

        prepared.scrape_config = config_from_mapping(sc.server_metrics, sc.file, embedded=sc.target.embedded)
    prepared.scrubber = scrubber_for(prepared)
    trust = sc.engine.trust()
    prepared.verify_target, prepared.verify_other = trust.context(target=True), trust.context(target=False)
    return prepared


def point_at(prepared: Prepared, ep: Endpoints) -> Prepared:
    """``prepared`` with every URL that named the embedded emulator (or the preflight's answer) replaced."""
    sc = prepared.scenario
    out = replace(prepared, scenario=replace(sc, target=replace(sc.target, url=ep.inference_url)), endpoints=ep,
                  embedded=prepared.embedded or ep.embedded)
    if out.preflight_config is not None and out.preflight_config.api_url == EMBEDDED_PLACEHOLDER and ep.api_url:
        out.preflight_config = replace(out.preflight_config, api_url=ep.api_url)
    auth = out.auth_config
    if auth is not None and auth.uses_keycloak and auth.token_url is None and ep.token_url:
        out.auth_config = auth.with_token_url(ep.token_url)
    out.target_config = target_for(sc.target.kind).point_at(out.target_config, ep)
    return out
